"""Patch loading: StoreDataset against the notebooks' in-RAM Dataset and a naive h5py Dataset.

In one run, for lms and hcqt patches, batch 64, 2 DataLoader workers, shuffled:
- patches/s of StoreDataset (memory-mapped, time-major store);
- patches/s of an in-RAM Dataset holding every file's feature as a numpy array;
- patches/s of a naive Dataset that opens h5py per item on a chunked (C, F, T) layout;
- the anonymous memory (RssAnon) of a StoreDataset worker, for a store and one 4x larger;
- StoreDataset construction time for a store of 100,000 files.

    .venv/bin/python benchmarks/bench_loader.py [--batches 60]

Stores come from the demo generator (data/bench-loader-*), made once.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from common.features import make_feature
from common.store import (
    FileRecord,
    TargetSpec,
    memmap_dataset,
    merge_shards,
    read_shard_index,
    read_tables,
    write_shard,
)
from precompute.demo import make_demo
from precompute.pipeline import run
from train.dataset import StoreDataset, collate_patches
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
        self.patches = list(zip(t.patch_file.tolist(), t.patch_start.tolist()))
        self.L = t.patch_frames

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
        self.patches = list(zip(t.patch_file.tolist(), t.patch_start.tolist()))
        self.L = t.patch_frames
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


def measure(ds, batches: int, context: str | None = None) -> tuple[float, list[float]]:
    """patches/s over ``batches`` batches (after 5 warm-up batches) and the workers' RssAnon.

    StoreDataset batches go through the collate its DataModule uses; the others through
    ``default_collate``. With ``context="spawn"`` the workers start fresh, so their anonymous
    memory is their own, not pages inherited from this process.
    """
    sampler = EpochSampler(len(ds), seed=0, num_samples=BATCH * (batches + 5))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=BATCH,
        sampler=sampler,
        num_workers=WORKERS,
        persistent_workers=False,
        prefetch_factor=4,
        collate_fn=collate_patches if isinstance(ds, StoreDataset) else None,
        multiprocessing_context=context,
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
    shard_dir = path.with_suffix(".shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    files = []
    rng = np.random.default_rng(0)
    per = 1000
    for k in range(0, n_files, per):
        recs = [
            FileRecord(
                i,
                f"audio/{i:06d}.wav",
                rng.random((100, 1, 4), dtype=np.float32),
                {},
                2.3,
                22050,
                "0" * 40,
            )
            for i in range(k, min(n_files, k + per))
        ]
        shard = write_shard(shard_dir / f"task-{k // per:06d}.h5", recs, [], feature.hash())
        files += read_shard_index(shard, feature.hash())[0]
    file_targets = {
        "genre": (np.arange(n_files) % 3).astype(np.int32),
        "work-id": (np.arange(n_files) // 4).astype(np.int32),
    }
    merge_shards(
        files,
        path,
        feature.frame_shape,
        64,
        32,
        specs,
        file_targets,
        {"feature": feature.to_dict(), "feature_hash": feature.hash()},
    )
    for p in shard_dir.glob("*.h5"):
        p.unlink()
    shard_dir.rmdir()
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
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: dict = {}
    for feature in ("lms", "hcqt"):
        store = demo_store(10, feature)
        r = {}
        batches = args.batches if feature == "lms" else max(20, args.batches // 5)
        in_ram = InRamDataset(store)
        runs = {"store": [], "ram": []}
        for _ in range(args.repeats):  # alternate, so drifts of the machine hit both alike
            runs["store"].append(measure(StoreDataset(store), batches)[0])
            runs["ram"].append(measure(in_ram, batches)[0])
        r["store_dataset_patches_per_s"] = float(np.median(runs["store"]))
        r["in_ram_patches_per_s"] = float(np.median(runs["ram"]))
        r["runs"] = {k: [round(x) for x in v] for k, v in runs.items()}
        naive = NaiveH5Dataset(store.with_name(store.stem + "-naive-chunked.h5"), store)
        r["naive_h5py_patches_per_s"], _ = measure(naive, max(10, batches // 4))
        r["store_vs_in_ram"] = round(
            r["store_dataset_patches_per_s"] / r["in_ram_patches_per_s"], 2
        )
        r["store_vs_naive"] = round(
            r["store_dataset_patches_per_s"] / r["naive_h5py_patches_per_s"], 1
        )
        big = demo_store(40, feature)
        r["worker_rss_anon_mb"] = {}
        for st in (store, big):
            _, rss = measure(StoreDataset(st), batches, context="spawn")
            key = (
                f"store {read_tables(st).total_frames} frames ({st.stat().st_size / 2**20:.0f} MB)"
            )
            r["worker_rss_anon_mb"][key] = [round(x) for x in rss]
        for k in (
            "store_dataset_patches_per_s",
            "in_ram_patches_per_s",
            "naive_h5py_patches_per_s",
        ):
            r[k] = round(r[k])
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
