"""Reads from memory: StoreDataset against the fastest in-RAM Dataset of the same patches.

The store's bytes are in the page cache (a first pass reads them); the in-RAM Dataset holds
every patch already cut, contiguous, in the layout StoreDataset hands out, so that an item costs
it one memory copy. Both go through torch's DataLoader with its default collate (batch 64,
shuffled, a fixed seed): users hand StoreDataset to their own DataLoader. At each worker count,
``--pairs`` passes of each alternate (store, in-RAM, store, ...), so that a drift of the machine
hits both alike; the median of the pairs' ratios is the figure.

    .venv/bin/python benchmarks/bench_reads_warm.py STORE.h5 [STORE2.h5 ...] [--target NAME]
        [--n 4000] [--pairs 5] [--workers 0 2]

Prints, per store and worker count, the patches/s of each side and the ratio store / in-RAM;
with several stores (a float32 and a float16 store of one feature, say), also each store's
patches/s over the first's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from train.data import StoreDataset


class InRam(Dataset):
    """The first ``n`` items of ``src``, copied once into contiguous arrays."""

    def __init__(self, src: Dataset, n: int):
        items = [src[i] for i in range(n)]
        self.X = np.stack([np.ascontiguousarray(np.asarray(t["X"])) for t in items])
        self.y = np.stack([np.asarray(t["y"]) for t in items]) if "y" in items[0] else None

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> dict:
        out = {"X": torch.from_numpy(self.X[i])}
        if self.y is not None:
            out["y"] = torch.from_numpy(self.y[i])
        return out


def patches_per_s(ds: Dataset, workers: int) -> float:
    """One shuffled pass through torch's DataLoader (batch 64, default collate)."""
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += batch["X"].shape[0]
    return n / (time.perf_counter() - t0)


def measure(store: str, target: str | None, n: int, pairs: int, workers: list[int]) -> dict:
    ds = StoreDataset(store, unit="patch", target=target, split=None)
    n = min(n, len(ds))
    sub, ram = Subset(ds, range(n)), InRam(ds, n)
    patches_per_s(sub, 0)  # the store's bytes into the page cache
    out = {"shape": tuple(ds[0]["X"].shape), "dtype": str(ds[0]["X"].dtype), "n": n}
    for w in workers:
        runs = [(patches_per_s(sub, w), patches_per_s(ram, w)) for _ in range(pairs)]
        ratios = sorted(s / r for s, r in runs)
        out[w] = {
            "store": statistics.median(s for s, _ in runs),
            "in_ram": statistics.median(r for _, r in runs),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--target", help="a target of the store, read with each patch")
    ap.add_argument("--n", type=int, default=4000, help="patches (the first n of the store)")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()
    results = {}
    for store in args.stores:
        r = results[store] = measure(store, args.target, args.n, args.pairs, args.workers)
        for w in args.workers:
            m = r[w]
            print(f"{store}: X {r['shape']} {r['dtype']}, target {args.target}, {w} workers: "
                  f"store {m['store']:,.0f} patches/s, in-RAM {m['in_ram']:,.0f} = "
                  f"{m['ratio']:.2f}x (pairs {m['ratios'][0]:.2f}-{m['ratios'][-1]:.2f})",
                  flush=True)  # fmt: skip
    first = results[args.stores[0]]
    for store in args.stores[1:]:
        for w in args.workers:
            print(f"{store} / {args.stores[0]}, {w} workers: store patches/s "
                  f"{results[store][w]['store'] / first[w]['store']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
