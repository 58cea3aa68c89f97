"""Patch loading: StoreDataset against the notebooks' in-RAM Dataset and a naive h5py Dataset.

In one run, for lms and hcqt patches, batch 64, shuffled, each Dataset read by 2 DataLoader
workers and by none (batches made in this process, with 2 torch threads):
- patches/s of StoreDataset (memory-mapped, time-major store);
- patches/s of an in-RAM Dataset holding every file's feature as a numpy array;
- patches/s of a naive Dataset that opens h5py per item on a chunked (C, F, T) layout;
- the anonymous memory (RssAnon) of a StoreDataset worker, and of a process reading with no
  workers, for a store and one 4x larger;
- what one batch costs a worker: fresh shared memory, the transposed copy, a plain copy;
- StoreDataset construction time for a store of 100,000 files.

    .venv/bin/python benchmarks/bench_loader.py [--features hcqt] [--glibc-default]

Stores come from the demo generator (data/bench-loader-*), made once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import torch

from common.features import make_feature
from common.store import (
    STATUS_OK,
    FileLayout,
    TargetSpec,
    finish,
    lay_out,
    memmap_dataset,
    patch_index,
    read_tables,
    write_rows,
)
from precompute.demo import make_demo
from precompute.pipeline import run
from train.dataset import StoreDataset, collate_patches, keep_freed_memory
from train.samplers import EpochSampler

BATCH = 64
WORKERS = 2


class InRamDataset(torch.utils.data.Dataset):
    """The notebooks' way: every file's feature (C, F, T) in RAM, patches sliced from it."""

    def __init__(self, store: Path):
        t = read_tables(store)
        feats = memmap_dataset(store, "features")
        self.files = [
            np.ascontiguousarray(np.asarray(feats[o : o + n]).transpose(1, 2, 0))
            for o, n in zip(t.offset, t.n_frames)
        ]
        self.patches = list(zip(*(a.tolist() for a in patch_index(t.n_frames, 64, 32))))
        self.L = 64

    def __len__(self):
        return len(self.patches)

    def __getitem__(self, i):
        f, s = self.patches[i]
        return {"X": torch.from_numpy(self.files[f][:, :, s : s + self.L].copy())}


class NaiveH5Dataset(torch.utils.data.Dataset):
    """One h5py.File open per item, one chunked (C, F, T) dataset per file."""

    def __init__(self, path: Path, store: Path):
        t = read_tables(store)
        self.path = path
        self.patches = list(zip(*(a.tolist() for a in patch_index(t.n_frames, 64, 32))))
        self.L = 64
        if not path.exists():
            feats = memmap_dataset(store, "features")
            with h5py.File(path, "w") as h:
                for i, (o, n) in enumerate(zip(t.offset, t.n_frames)):
                    h.create_dataset(
                        f"f{i}", data=np.asarray(feats[o : o + n]).transpose(1, 2, 0), chunks=True
                    )

    def __len__(self):
        return len(self.patches)

    def __getitem__(self, i):
        f, s = self.patches[i]
        with h5py.File(self.path, "r") as h:
            return {"X": torch.from_numpy(h[f"f{f}"][:, :, s : s + self.L])}


def rss_anon_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(
    ds, batches: int, workers: int = WORKERS, context: str | None = None
) -> tuple[float, list[float]]:
    """patches/s over ``batches`` batches (after 5 warm-up batches) and the workers' RssAnon.

    StoreDataset batches go through the collate its DataModule uses; the others through
    ``default_collate``. With ``workers=0`` the batches are made in this process, with its
    torch threads. With ``context="spawn"`` the workers start fresh, so their anonymous
    memory is their own, not pages inherited from this process.
    """
    sampler = EpochSampler(len(ds), seed=0, num_samples=BATCH * (batches + 5))
    extra = {"prefetch_factor": 4, "multiprocessing_context": context} if workers else {}
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=BATCH,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_patches if isinstance(ds, StoreDataset) else None,
        **extra,
    )
    it = iter(loader)
    for _ in range(5):
        next(it)
    t = time.perf_counter()
    n = 0
    rss: dict[int, float] = {}
    for k, b in enumerate(it):
        n += b["X"].shape[0]
        if k % 10 == 0 and k < batches - 2:  # workers are alive until the last batches
            for w in getattr(it, "_workers", []):
                rss[w.pid] = max(rss.get(w.pid, 0.0), rss_anon_mb(w.pid))
    rate = n / (time.perf_counter() - t)
    del it
    return rate, list(rss.values())


def batch_costs_ms(store: Path, repeats: int = 15) -> dict[str, float]:
    """Median ms of the parts of one batch, made in this process.

    ``new_shared_memory``: a fresh shared-memory tensor of the batch's size, written once
    (what a DataLoader worker pays per batch before any reading); ``transposed_copy``:
    StoreDataset's per-patch copy into an already written buffer, on one thread (as in a
    worker); ``contiguous_copy``: the same bytes copied without the transposition (the floor);
    ``index_select_1_thread`` / ``_2_threads``: the gather over windows of the map that
    StoreDataset uses when its process has several threads.
    """
    t = read_tables(store)
    ds = StoreDataset(store)
    feats = ds._maps()[0]
    L = t.patch_frames
    shape = (BATCH, *feats.shape[1:], L)
    rng = np.random.default_rng(0)
    out = torch.ones(shape)
    view, flat = out.numpy(), out.numpy().reshape(BATCH, -1)
    times: dict[str, list[float]] = {}

    def timed(key, fn):
        t0 = time.perf_counter()
        fn()
        times.setdefault(key, []).append(time.perf_counter() - t0)

    def transposed():
        for i, o in enumerate(offsets):
            view[i] = feats[o : o + L].transpose(1, 2, 0)

    def contiguous():
        for i, o in enumerate(offsets):
            flat[i] = feats[o : o + L].reshape(-1)

    def shared():
        storage = torch.empty(0)._typed_storage()._new_shared(int(np.prod(shape)))
        torch.empty(0).new(storage).view(shape).fill_(1.0)

    threads = torch.get_num_threads()
    for _ in range(repeats):
        pick = rng.integers(0, len(t.patch_file), BATCH)
        offsets = t.offset[t.patch_file[pick]] + t.patch_start[pick]
        gather = partial(torch.index_select, ds._windows, 0, torch.from_numpy(offsets), out=out)
        torch.set_num_threads(1)
        timed("new_shared_memory", shared)
        timed("transposed_copy", transposed)
        timed("contiguous_copy", contiguous)
        timed("index_select_1_thread", gather)
        torch.set_num_threads(2)
        timed("index_select_2_threads", gather)
    torch.set_num_threads(threads)
    return {k: round(1e3 * float(np.median(v)), 1) for k, v in times.items()}


def main_process_rss_anon_mb(store: Path, batches: int, keep: bool) -> float:
    """RssAnon of a fresh process that read ``batches`` batches of ``store`` with no workers."""
    if keep:
        keep_freed_memory()
    torch.set_num_threads(2)
    measure(StoreDataset(store), batches, 0)
    return rss_anon_mb(os.getpid())


def demo_store(per_class: int, feature: str) -> Path:
    root = Path("data") / f"bench-loader-{per_class}"
    if not (root / "demo.pyjama").exists():
        make_demo(root, per_class=per_class, clip_s=8.0)
    return run(
        root / "demo.pyjama", feature, Path("data") / "bench-loader-stores", jobs=2
    ).store_path


def store_of_100k_files(path: Path, n_files: int = 100_000) -> Path:
    """A store of many short files (4 mel bands, 100 frames each), written by the real writer."""
    if path.exists():
        return path
    feature = make_feature({"kind": "lms", "n_mels": 4})
    specs = [
        TargetSpec("genre", "class", ["a", "b", "c"]),
        TargetSpec("work-id", "work", [str(i) for i in range(n_files // 4)]),
    ]
    rng = np.random.default_rng(0)
    files = [
        FileLayout(i, f"audio/{i:06d}.wav", 100, 2.3, 22050, "0" * 32, f"{i:032d}")
        for i in range(n_files)
    ]
    file_targets = {
        "genre": (np.arange(n_files) % 3).astype(np.int32),
        "work-id": (np.arange(n_files) // 4).astype(np.int32),
    }
    attrs = {"feature": feature.value_params(), "feature_key": feature.key()}
    layout = lay_out(path, files, feature.frame_shape, np.float32, specs, file_targets, dict, attrs)
    fd = os.open(path, os.O_RDWR)
    try:
        for i in range(n_files):
            write_rows(fd, layout, i, rng.random((100, 1, 4), dtype=np.float32))
        finish(fd, layout, np.full(n_files, STATUS_OK, np.uint8), {})
    finally:
        os.close(fd)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--batches", type=int, default=300, help="batches per measurement (hcqt: a fifth)"
    )
    ap.add_argument(
        "--repeats", type=int, default=3, help="alternating repetitions; the median is reported"
    )
    ap.add_argument("--features", nargs="+", default=["lms", "hcqt"])
    ap.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's malloc as it is (by default keep_freed_memory() is applied, "
        "for every Dataset alike, as StoreDataModule does)",
    )
    args = ap.parse_args()
    torch.set_num_threads(2)  # the machine's cores; DataLoader workers use one each
    results: dict = {"keep_freed_memory": False if args.glibc_default else keep_freed_memory()}
    for feature in args.features:
        store = demo_store(10, feature)
        r = {}
        batches = args.batches if feature == "lms" else max(20, args.batches // 5)
        in_ram = InRamDataset(store)
        naive = NaiveH5Dataset(store.with_name(store.stem + "-naive-chunked.h5"), store)
        for workers in (WORKERS, 0):
            runs = {"store": [], "in_ram": [], "naive": []}
            for _ in range(args.repeats):  # alternate, so drifts of the machine hit all alike
                runs["store"].append(measure(StoreDataset(store), batches, workers)[0])
                runs["in_ram"].append(measure(in_ram, batches, workers)[0])
                runs["naive"].append(measure(naive, max(10, batches // 4), workers)[0])
            r[f"{workers} workers"] = {
                **{k: round(float(np.median(v))) for k, v in runs.items()},
                "runs": {k: [round(x) for x in v] for k, v in runs.items()},
            }
        same = r[f"{WORKERS} workers"]
        best = {k: max(r[f"{w} workers"][k] for w in (WORKERS, 0)) for k in same if k != "runs"}
        r["ratios"] = {
            f"{WORKERS} workers each: vs in-RAM": round(same["store"] / same["in_ram"], 2),
            f"{WORKERS} workers each: vs naive": round(same["store"] / same["naive"], 1),
            "best setting of each: vs in-RAM": round(best["store"] / best["in_ram"], 2),
            "best setting of each: vs naive": round(best["store"] / best["naive"], 1),
        }
        r["batch_costs_ms"] = batch_costs_ms(store)
        big = demo_store(40, feature)
        r["worker_rss_anon_mb"], r["no_workers_process_rss_anon_mb"] = {}, {}
        for st in (store, big):
            _, rss = measure(StoreDataset(st), batches, context="spawn")
            key = (
                f"store {read_tables(st).total_frames} frames ({st.stat().st_size / 2**20:.0f} MB)"
            )
            r["worker_rss_anon_mb"][key] = [round(x) for x in rss]
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                r["no_workers_process_rss_anon_mb"][key] = round(
                    pool.apply(main_process_rss_anon_mb, (st, batches, not args.glibc_default))
                )
        results[feature] = r
        print(feature, json.dumps(r, indent=1), flush=True)
    many = store_of_100k_files(Path("data") / "bench-loader-stores" / "many-100k.h5")
    t = time.perf_counter()
    ds = StoreDataset(many, target="genre", split="train")
    results["construction_s_100k_files"] = round(time.perf_counter() - t, 2)
    results["construction_patches"] = len(ds)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
