"""Reading a store from object storage: a real S3-compatible server on this machine
(``moto_server``, behind the tests' proxy, which counts the bytes it sends and can hold them to
a bandwidth), against plain parallel ranged GETs from the same server, and against the local
store. The store given (a view, with its stores folder) is pushed to the server first.

1. **Empty cache**: one pass over every patch of the store in a shuffled order (batch 64,
   through torch's DataLoader at each worker count), from an empty cache, against
   - plain parallel ranged GETs of each file's frames (``cat_ranges`` of s3fs, all at once,
     nothing verified or kept): the bytes an epoch needs, as fast as the server gives them;
   - plain parallel ranged GETs of each patch's byte range, 64 at a time (a reader without a
     cache), over ``--patch-batches`` batches.
2. **Warm cache**: the same pass with every row cached (page cache warm), against the same pass
   over the local store, alternated, ``--runs`` times.
3. **Cache of half the store**: ``--epochs`` epochs (training and validation batches, the
   experiment's defaults) with ``cache_gb`` half the store: the bytes each epoch downloads.

    .venv/bin/python benchmarks/bench_remote.py STORE.h5 [--workers 0 2] [--runs 3]
        [--mbps MB_PER_S] [--epochs 3]

``--mbps``: the proxy's bandwidth (all connections together), for what happens below disk
speed. Prints patches/s of each and the ratios the docs give.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.store import relative_to, stores_root_of  # noqa: E402
from precompute.remote import push  # noqa: E402
from tests.s3server import S3Server  # noqa: E402
from train.data import EpochSampler, StoreDataModule, StoreDataset  # noqa: E402
from train.data.batches import collate  # noqa: E402


def epoch(ds: StoreDataset, workers: int, seed: int = 0) -> float:
    """Seconds of one shuffled pass over every patch of ``ds``."""
    sampler = EpochSampler(len(ds), seed=seed)
    t = time.perf_counter()
    got = 0
    for b in DataLoader(ds, batch_size=64, sampler=sampler, num_workers=workers,
                        collate_fn=collate, persistent_workers=False):  # fmt: skip
        got += b["X"].shape[0]
    took = time.perf_counter() - t
    if got != len(ds):
        raise SystemExit(f"the pass gave {got} patches, expected {len(ds)}")
    return took


def rows_get(ds: StoreDataset) -> float:
    """Seconds of plain parallel ranged GETs of every file's frames (nothing kept)."""
    f = ds.features
    t = time.perf_counter()
    f.remote.ranges([r.segment for r in f.rows], [r.at for r in f.rows],
                    [r.at + r.nbytes for r in f.rows])  # fmt: skip
    return time.perf_counter() - t


def patches_get(ds: StoreDataset, batches: int) -> tuple[float, int]:
    """(seconds, patches) of plain parallel ranged GETs of patches, 64 at a time."""
    order = np.random.default_rng(0).permutation(len(ds))[: 64 * batches]
    f = ds.features
    addrs = ds.file_frame[ds.patch_file[order]] + ds.patch_start[order]
    part, at = f.locate(addrs)
    nbytes = ds.patch_frames * f.frame_bytes
    ranges = [(f.segments[p], int(o), nbytes) for p, o in zip(part.tolist(), at.tolist())]
    t = time.perf_counter()
    for s in range(0, len(ranges), 64):
        batch = ranges[s : s + 64]
        f.remote.ranges([p for p, _, _ in batch], [o for _, o, _ in batch],
                        [o + n for _, o, n in batch])  # fmt: skip
    return time.perf_counter() - t, len(ranges)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("store")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mbps", type=float, help="bandwidth of the proxy, MB/s")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--patch-batches", type=int, default=20)
    args = ap.parse_args()
    view = Path(args.store).absolute()
    tmp = Path(
        tempfile.mkdtemp(prefix="bench-remote-", dir="data" if Path("data").is_dir() else None)
    )
    with S3Server() as s3:
        s3.make_bucket("bench")
        s3.apply()
        if args.mbps:
            s3.proxy.rate = args.mbps * 1e6
        url = "s3://bench/stores"
        t = time.perf_counter()
        push(stores_root_of(view), url, [view], log=lambda m: None)
        print(f"pushed {view.name} in {time.perf_counter() - t:.1f} s")
        view_url = f"{url}/{relative_to(stores_root_of(view), view)}"
        probe = StoreDataset(view_url, cache_dir=str(tmp / "probe"))
        f = probe.features
        mb = f.store_bytes / 1e6
        print(f"store: {len(f.row_addr)} files, {mb:,.1f} MB of features, {len(probe)} patches; "
              f"bandwidth {'unlimited' if not args.mbps else f'{args.mbps:g} MB/s'}")  # fmt: skip

        # 1. empty cache
        took = [rows_get(probe) for _ in range(args.runs)]
        best_rows = min(took)
        print(f"plain ranged GETs of each file's frames: {mb / best_rows:7.1f} MB/s, "
              f"{len(probe) / best_rows:8,.0f} patches/s (best of {args.runs})")  # fmt: skip
        secs, n = patches_get(probe, args.patch_batches)
        print(f"plain ranged GETs of each patch, 64 at a time: {n / secs:8,.0f} patches/s "
              f"({n} patches)")  # fmt: skip
        for w in args.workers:
            passes = []
            for r in range(args.runs):
                ds = StoreDataset(view_url, cache_dir=str(tmp / f"empty-{w}-{r}"))
                sent = s3.proxy.sent
                passes.append((epoch(ds, w), s3.proxy.sent - sent))
            best = min(p[0] for p in passes)
            print(f"empty cache, {w} workers: {len(probe) / best:8,.0f} patches/s "
                  f"({', '.join(f'{len(probe) / p[0]:,.0f}' for p in passes)}), "
                  f"{passes[0][1] / 1e6:,.1f} MB downloaded; / plain GETs of the files "
                  f"{best_rows / best:.2f}x")  # fmt: skip

        # 2. warm cache against the local store
        warm = StoreDataset(view_url, cache_dir=str(tmp / "empty-0-0"))
        local = StoreDataset(view)
        epoch(warm, 0)
        epoch(local, 0)
        for w in args.workers:
            a, b = [], []
            for _ in range(args.runs):
                a.append(epoch(local, w))
                b.append(epoch(warm, w))
            ratio = statistics.median(a) / statistics.median(b)
            print(f"warm, {w} workers: local {len(local) / statistics.median(a):8,.0f}, "
                  f"remote (cached) {len(warm) / statistics.median(b):8,.0f} patches/s "
                  f"(medians of {args.runs}); remote / local {ratio:.2f}x "
                  f"(runs: {', '.join(f'{x / y:.2f}' for x, y in zip(a, b))})")  # fmt: skip

        # 3. a cache of half the store
        gb = f.store_bytes / 2 / 2**30
        dm = StoreDataModule(view_url, cache_dir=str(tmp / "half"), cache_gb=gb, batch_size=64)
        dm.setup()
        ds = dm.train_ds
        cache = ds.features.cache
        print(f"cache of half the store ({gb * 2**30 / 1e6:,.1f} MB): {int(ds.features.resident.sum())} "
              f"of {len(ds.features.resident)} files stay")  # fmt: skip
        for e in range(args.epochs):
            dm.set_epoch(e)
            before, sent = cache.downloaded(), s3.proxy.sent
            t = time.perf_counter()
            for _ in dm.train_dataloader():
                pass
            for _ in dm.val_dataloader():
                pass
            got = cache.downloaded() - before
            print(f"epoch {e}: downloaded {got / 1e6:,.1f} MB = {got / f.store_bytes:.2f}x the "
                  f"store (the server sent {(s3.proxy.sent - sent) / 1e6:,.1f} MB), "
                  f"{time.perf_counter() - t:.1f} s; cache holds {cache.held() / 1e6:,.1f} MB")  # fmt: skip
    shutil.rmtree(tmp)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
