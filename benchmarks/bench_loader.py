"""Patch loading: StoreDataset against an in-RAM Dataset and a naive h5py Dataset.

Measured as ``../shared/checks/loader_vs_ram.py`` measures, with torch's DataLoader and its
default collate (batch 64, shuffled, fixed seed, best of 2 passes, at 0 and at 2 workers), on
the demo stores (``make features``), repeated and reported as medians:
- StoreDataset over the store (items are views; a batch is one time-major block);
- in-RAM: every patch already cut, contiguous, in the layout StoreDataset gives (the check's);
- naive: one ``h5py.File`` opened per item on a chunked ``(C, F, T)`` dataset per file;
- StoreDataset over a float16 store of the same feature (0 workers);
- StoreDataset through ``StoreDataModule``'s own collate (what the trainer uses);
- the anonymous memory (RssAnon) of spawned workers, for a store and one 4x larger;
- StoreDataset construction time for a view of 100,000 files in 20 segments.

    .venv/bin/python benchmarks/bench_loader.py [--features lms hcqt] [--repeats 3]
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
from common.store import read_rows
from precompute.demo import make_demo
from precompute.pipeline import run
from tests.pool_fixture import many_files_view
from train.dataset import StoreDataset, collate_patches

BATCH = 64
TARGET = {"lms": "tag", "hcqt": "pitchmidi", "cqt": "pitchmidi"}


class InRamDataset(torch.utils.data.Dataset):
    """Every patch already cut, contiguous, in StoreDataset's layout (loader_vs_ram.py's)."""

    def __init__(self, src: StoreDataset, n: int):
        items = [src[i] for i in range(n)]
        self.X = np.stack([np.ascontiguousarray(np.asarray(t["X"])) for t in items])
        self.Y = np.stack([np.asarray(t["y"]) for t in items])

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return {"X": torch.from_numpy(self.X[i]), "y": torch.from_numpy(self.Y[i])}


class NaiveH5Dataset(torch.utils.data.Dataset):
    """One h5py.File open per item, one chunked (C, F, T) dataset per file."""

    def __init__(self, path: Path, src: StoreDataset, n: int):
        self.path, self.L = path, src.patch_frames
        self.patches = list(zip(src.patch_file[:n].tolist(), src.patch_start[:n].tolist()))
        if not path.exists():
            t = src.tables
            with h5py.File(path, "w") as h:
                for i in range(t.n_files):
                    h.create_dataset(f"f{i}", data=read_rows(t, i).transpose(1, 2, 0), chunks=True)

    def __len__(self):
        return len(self.patches)

    def __getitem__(self, i):
        f, s = self.patches[i]
        with h5py.File(self.path, "r") as h:
            return {"X": torch.from_numpy(h[f"f{f}"][:, :, s : s + self.L])}


def rate(ds, workers: int, collate=None, passes: int = 2) -> float:
    """Best patches/s of ``passes`` passes, as the check measures."""
    best = 0.0
    for _ in range(passes):
        dl = torch.utils.data.DataLoader(
            ds,
            batch_size=BATCH,
            shuffle=True,
            num_workers=workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(0),
        )
        t0, m = time.perf_counter(), 0
        for b in dl:
            m += b["X"].shape[0]
        best = max(best, m / (time.perf_counter() - t0))
    return best


def rss_anon_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_rss(store: Path, batches: int = 40) -> list[float]:
    """RssAnon of 2 spawned workers (their memory is their own) after ``batches`` batches."""
    ds = StoreDataset(store)
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=BATCH,
        sampler=torch.utils.data.RandomSampler(ds, num_samples=BATCH * batches),
        num_workers=2,
        multiprocessing_context="spawn",
    )
    it, peak = iter(dl), {}
    for k, _ in enumerate(it):
        if k > 5 and k < batches - 4:
            for w in it._workers:
                peak[w.pid] = max(peak.get(w.pid, 0.0), rss_anon_mb(w.pid))
    return [round(v) for v in peak.values()]


def demo_store(per_class: int, feature: str, clip_s: float = 7.5) -> Path:
    """The demo data at ``per_class`` tunes per dance, its store of ``feature``."""
    if (per_class, clip_s) == (13, 7.5):  # `make features`
        return run("data/demo/demo.pyjama", feature, "stores", jobs=2).store_path
    root = Path("data") / f"bench-loader-{per_class}-{clip_s:g}s"
    if not (root / "demo.pyjama").exists():
        make_demo(root, per_class=per_class, clip_s=clip_s)
    return run(root / "demo.pyjama", feature, "stores", jobs=2).store_path


def measure_feature(feature: str, repeats: int) -> dict:
    store = demo_store(13, feature)
    ds = StoreDataset(store, target=TARGET[feature])
    n = min(len(ds), 4000)
    sub = torch.utils.data.Subset(ds, range(n))
    in_ram = InRamDataset(ds, n)
    naive = NaiveH5Dataset(store.with_name(store.stem + "-naive.h5"), ds, n)
    f16 = run(
        "data/demo/demo.pyjama",
        make_feature(feature, {"dtype": "float16"}),
        "data/bench-stores-f16",
        jobs=2,
    ).store_path
    sub16 = torch.utils.data.Subset(StoreDataset(f16, target=TARGET[feature]), range(n))
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):  # alternating, so that drifts of the machine hit all alike
        for w in (0, 2):
            runs.setdefault(f"store, {w} workers", []).append(rate(sub, w))
            runs.setdefault(f"in-RAM, {w} workers", []).append(rate(in_ram, w))
            runs.setdefault(f"naive h5py, {w} workers", []).append(rate(naive, w, passes=1))
        runs.setdefault("store float16, 0 workers", []).append(rate(sub16, 0))
        runs.setdefault("store via StoreDataModule's collate, 0 workers", []).append(
            rate(sub, 0, collate_patches)
        )
    med = {k: round(float(np.median(v))) for k, v in runs.items()}
    r: dict = {"item": list(ds[0]["X"].shape), "patches": n, "patches_per_s": med}
    r["runs"] = {k: [round(x) for x in v] for k, v in runs.items()}
    r["ratios"] = (
        {
            f"store / in-RAM, {w} workers": round(
                med[f"store, {w} workers"] / med[f"in-RAM, {w} workers"], 2
            )
            for w in (0, 2)
        }
        | {
            f"store / naive, {w} workers": round(
                med[f"store, {w} workers"] / med[f"naive h5py, {w} workers"], 1
            )
            for w in (0, 2)
        }
        | {
            "float16 / float32 store, 0 workers": round(
                med["store float16, 0 workers"] / med["store, 0 workers"], 2
            )
        }
    )
    big = demo_store(40, feature, clip_s=9.75)  # 4x the demo's audio
    r["worker_rss_anon_mb"] = {
        f"{p.name} ({p.stat().st_size / 2**20:.0f} MB)": worker_rss(p) for p in (store, big)
    }
    return r


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--features", nargs="+", default=["lms", "hcqt"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    results: dict = {}
    for feature in args.features:
        results[feature] = measure_feature(feature, args.repeats)
        print(feature, json.dumps(results[feature], indent=1), flush=True)
    # 100,000 files of 100 frames in 20 segments, written with the store format's own writer
    many = many_files_view("data/bench-loader-stores", 100_000, 20, frames=100, n_mels=4)
    t = time.perf_counter()
    ds = StoreDataset(many, split="train", patch_frames=64, patch_hop=32)
    results["construction_s_100k_files"] = round(time.perf_counter() - t, 2)
    results["construction_patches"] = len(ds)
    print(json.dumps({k: v for k, v in results.items() if k.startswith("construction")}))


if __name__ == "__main__":
    main()
