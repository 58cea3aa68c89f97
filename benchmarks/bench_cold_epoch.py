"""One training epoch of patches read from disk, shuffled patch by patch or by blocks.

The page cache is dropped before each epoch (run as root), then the training split of the store
is read through the experiment's own DataLoader (StoreDataModule, batch 64, EpochSampler), with
``shuffle_block_mb`` 0 (every patch apart) or not. Prints patches/s and the bytes read from disk
for the bytes the patches hold, best of ``--repeat`` epochs.

    .venv/bin/python benchmarks/bench_cold_epoch.py stores/demo/hcqt-<id>.h5 \
        [--block-mb 0 16 64] [--workers 0 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import time

from page_cache import disk_bytes_read, drop_caches

from train.data import StoreDataModule


def epoch(store: str, block_mb: float, workers: int, seed: int) -> tuple[float, int, int]:
    dm = StoreDataModule(store, unit="patch", batch_size=64, num_workers=workers,
                         shuffle_block_mb=block_mb, seed=seed, persistent_workers=False)  # fmt: skip
    dm.setup()
    loader = dm.train_dataloader()
    ds = dm.train_ds
    need = len(ds) * ds.patch_frames * ds.tables.frame_bytes
    drop_caches()
    d0, t0, n = disk_bytes_read(), time.perf_counter(), 0
    for b in loader:
        n += b["X"].shape[0]
    return n / (time.perf_counter() - t0), disk_bytes_read() - d0, need


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("store")
    ap.add_argument("--block-mb", type=float, nargs="+", default=[0, 16, 64])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    for workers in args.workers:
        for mb in args.block_mb:
            runs = [epoch(args.store, mb, workers, seed) for seed in range(args.repeat)]
            rate, read, need = max(runs)
            label = "patch by patch" if not mb else f"blocks of {mb:g} MB"
            print(f"{workers} workers, {label:18s}: {rate:7.0f} patches/s, {read / 1e6:7.1f} MB "
                  f"read for {need / 1e6:.1f} MB of patches ({read / need:.2f}x)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
