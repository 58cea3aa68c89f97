"""Reads from disk: StoreDataset on patches that are not in memory, against ``os.pread`` of the
same byte ranges, both from an empty page cache (run as root: the cache is dropped before every
pass).

``--n`` random patches (a fixed seed), at each worker count, ``--repeat`` times, the best pass of
each side counting:
- StoreDataset through torch's DataLoader (batch 64, default collate), a new Dataset each pass;
- a plain loop of ``os.pread`` over the patches' byte ranges (``StoreDataset.byte_ranges``), in
  the same order, on as many threads as workers (one for 0): what the disk gives.
Prints patches/s of each, the bytes the disk read against the bytes the patches hold (read
amplification, from ``pgpgin`` in /proc/vmstat) and the ratio store / pread.

    sudo .venv/bin/python benchmarks/bench_reads_cold.py STORE.h5 [--n 300] [--workers 0 2]
        [--repeat 2]
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from page_cache import disk_bytes_read, drop_caches
from torch.utils.data import DataLoader, Subset

from train.data import StoreDataset


def cold(read) -> tuple[float, int]:
    """(seconds, bytes from disk) of ``read()`` from an empty page cache."""
    drop_caches()
    d0, t0 = disk_bytes_read(), time.perf_counter()
    read()
    return time.perf_counter() - t0, disk_bytes_read() - d0


def store_pass(ds: StoreDataset, idx: list[int], workers: int) -> None:
    got = sum(b["X"].shape[0] for b in DataLoader(Subset(ds, idx), batch_size=64,
                                                  num_workers=workers))  # fmt: skip
    if got != len(idx):
        raise SystemExit(f"the DataLoader gave {got} patches, expected {len(idx)}")


def pread_pass(ranges: list[tuple[str, int, int]], threads: int) -> None:
    fds = {p: os.open(p, os.O_RDONLY) for p in {r[0] for r in ranges}}
    try:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda r: len(os.pread(fds[r[0]], r[2], r[1])), ranges))
    finally:
        for fd in fds.values():
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("store")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    probe = StoreDataset(args.store, unit="patch", split=None)
    n = min(args.n, len(probe))
    idx = np.random.default_rng(0).choice(len(probe), n, replace=False).tolist()
    ranges = [(str(p), int(o), int(b)) for p, o, b in probe.byte_ranges(idx)]
    need = sum(r[2] for r in ranges)
    del probe
    gc.collect()
    for w in args.workers:
        best: dict[str, tuple[float, int]] = {}
        for _ in range(args.repeat):
            # a new Dataset each pass (nothing mapped from a pass before), made before the
            # page cache is dropped, as a training run opens its store before its epochs
            ds = StoreDataset(args.store, unit="patch", split=None)
            passes = {"store": functools.partial(store_pass, ds, idx, w),
                      "pread": functools.partial(pread_pass, ranges, max(1, w))}  # fmt: skip
            for name, read in passes.items():
                best[name] = min(best.get(name, (float("inf"), 0)), cold(read))
            del ds, passes
            gc.collect()
        for name, label in (("store", "StoreDataset"), ("pread", "os.pread    ")):
            took, read = best[name]
            print(f"{label} {w} workers: {n / took:8,.0f} patches/s, {read / 1e6:7.1f} MB read "
                  f"from disk for {need / 1e6:.1f} MB of patches ({read / need:.2f}x)")  # fmt: skip
        print(f"cold, {w} workers: store / pread = {best['pread'][0] / best['store'][0]:.2f}x, "
              f"read amplification {best['store'][1] / need:.2f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
