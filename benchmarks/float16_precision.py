"""Relative error of feature values stored as float16, on a float32 store's own values.

    .venv/bin/python benchmarks/float16_precision.py stores/demo/hcqt-*.h5 stores/demo/lms-*.h5

Takes float32 stores, rounds their values to float16 as `dtype: float16` stores them, and prints
the relative error of values in float16's normal range, and the share of values that fall below
it (subnormal: absolute error up to 3e-8; or zero) or overflow it.
"""

from __future__ import annotations

import sys

import numpy as np

from common.store import read_features

TINY = np.finfo(np.float16).tiny  # 6.1e-5, the smallest normal float16


def main(paths: list[str]) -> None:
    for p in paths:
        x = read_features(p).astype(np.float32).ravel()  # every file's frames, from the pool
        y = x.astype(np.float16).astype(np.float32)
        a = np.abs(x)
        normal = a >= TINY
        rel = np.abs(y[normal] - x[normal]) / a[normal]
        print(
            f"{p}: {x.size:,} values, range [{x.min():.3g}, {x.max():.3g}]; "
            f"normal in float16: {normal.mean():.2%}, relative error there max {rel.max():.2e} "
            f"(bound 2^-11 = {2**-11:.2e}), mean {rel.mean():.2e}; "
            f"below 6.1e-5: {(~normal & (x != 0)).mean():.2%} (abs error <= 3e-8), "
            f"overflow: {np.isinf(y).sum()}; max abs error {np.abs(y - x).max():.2e}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
