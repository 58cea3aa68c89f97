"""StoreDataset against the plain alternatives that are not an in-RAM copy, and its memory.

On the demo stores (``make features``), with torch's DataLoader and its default collate (batch
64, shuffled, a fixed seed, best of 2 passes, at 0 and at 2 workers), repeated and reported as
medians:
- StoreDataset over the store;
- naive: one ``h5py.File`` opened per item on a chunked ``(C, F, T)`` dataset per file;
- StoreDataset through ``StoreDataModule``'s own collate (what the trainer uses);
- the anonymous memory (RssAnon) of 2 spawned workers, for a store and one of 4x its audio;
- StoreDataset construction time for a view of 100,000 files in 20 segments.
Against an in-RAM Dataset and ``os.pread``: ``bench_reads_warm.py`` and ``bench_reads_cold.py``.
What it makes besides the demo's stores (the naive files, the larger demo and its stores) is in
``data/bench-loader/``; delete it when done.

    .venv/bin/python benchmarks/bench_loader.py [--features lms hcqt] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from common.store import read_frames, read_tables
from precompute.demo import make_demo
from precompute.pipeline import run
from train.data import StoreDataset, collate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pool_fixture import many_files_view  # noqa: E402

BATCH = 64
WORK = Path("data/bench-loader")  # what this benchmark makes besides the demo's own stores
TARGET = {"lms": "tag", "hcqt": "pitchmidi", "cqt": "pitchmidi"}


class NaiveH5Dataset(torch.utils.data.Dataset):
    """One h5py.File open per item, one chunked (C, F, T) dataset per file."""

    def __init__(self, path: Path, src: StoreDataset, n: int):
        self.path, self.L = path, src.patch_frames
        self.patches = list(zip(src.patch_file[:n].tolist(), src.patch_start[:n].tolist()))
        if not path.exists():
            t = src.tables
            with h5py.File(path, "w") as h:
                for i in range(t.n_files):
                    h.create_dataset(
                        f"f{i}", data=read_frames(t, i).transpose(1, 2, 0), chunks=True
                    )

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
    root = WORK / f"demo-{per_class}-{clip_s:g}s"
    if not (root / "demo.pyjama").exists():
        make_demo(root, per_class=per_class, clip_s=clip_s)
    return run(root / "demo.pyjama", feature, WORK / "stores", jobs=2).store_path


def measure_feature(feature: str, repeats: int) -> dict:
    store = demo_store(13, feature)
    ds = StoreDataset(store, target=TARGET[feature])
    n = min(len(ds), 4000)
    sub = torch.utils.data.Subset(ds, range(n))
    naive = NaiveH5Dataset(WORK / f"{store.stem}-naive.h5", ds, n)
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):  # alternating, so that drifts of the machine hit all alike
        for w in (0, 2):
            runs.setdefault(f"store, {w} workers", []).append(rate(sub, w))
            runs.setdefault(f"naive h5py, {w} workers", []).append(rate(naive, w, passes=1))
        runs.setdefault("store via StoreDataModule's collate, 0 workers", []).append(
            rate(sub, 0, collate)
        )
    med = {k: round(float(np.median(v))) for k, v in runs.items()}
    r: dict = {"item": list(ds[0]["X"].shape), "patches": n, "patches_per_s": med}
    r["runs"] = {k: [round(x) for x in v] for k, v in runs.items()}
    r["ratios"] = {
        f"store / naive, {w} workers": round(
            med[f"store, {w} workers"] / med[f"naive h5py, {w} workers"], 1
        )
        for w in (0, 2)
    }
    big = demo_store(40, feature, clip_s=9.75)  # 4x the demo's audio
    r["worker_rss_anon_mb"] = {
        f"{p.name} ({read_tables(p).duration_s.sum() / 3600:.2f} h of audio)": worker_rss(p)
        for p in (store, big)
    }
    return r


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--features", nargs="+", default=["lms", "hcqt"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for feature in args.features:
        results[feature] = measure_feature(feature, args.repeats)
        print(feature, json.dumps(results[feature], indent=1), flush=True)
    # 100,000 files of 100 frames in 20 segments, written with the store format's own writer
    many = many_files_view(WORK / "many", 100_000, 20, frames=100, n_mels=4)
    t = time.perf_counter()
    ds = StoreDataset(many, split="train", patch_frames=64, patch_hop=32)
    results["construction_s_100k_files"] = round(time.perf_counter() - t, 2)
    results["construction_patches"] = len(ds)
    print(json.dumps({k: v for k, v in results.items() if k.startswith("construction")}))


if __name__ == "__main__":
    main()
