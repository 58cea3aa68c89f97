"""mirpatch at a real size: a float16 HCQT store bigger than this machine's memory, built,
rebuilt after edits, verified, read for whole epochs and trained on, each against the plain
alternative, in one run.

    .venv/bin/python benchmarks/bench_big.py [--hours H] [--root data/big] [--jobs 2] [--keep]
        [--skip-train] [--reads-only]

``--hours`` is the audio of the final store (default: enough for 1.3x this machine's RAM in
float16 HCQT features); ``--hours 1`` is a quick run. Steps, through the CLI as a user runs
them unless said otherwise, ``sync`` and the page cache dropped (as root) before each read:

1. audio: ``benchmarks/big_data.py`` renders the hours (multi-voice, ~32,000 notes an hour);
2. T: ``precompute run --feature hcqt --set dtype=float16`` of the first 1/1.1 of the files;
   its audio seconds per second; the disk used before and after (and its peak while building);
3. a no-op run, one label edited, then 10 % more files (the rest), each in seconds and in T;
4. ``precompute verify`` of the final store against ``os.pread`` of the same bytes;
5. one epoch of every patch (non-overlapping, 64 frames) through a DataLoader (0 and 2
   workers, shuffled by blocks of 64 MB), against ``os.pread`` of the same byte ranges in the
   same order (as many threads as workers, one for 0); the peak RSS of the main process and of
   each worker over the epoch, against their start;
6. one epoch of the pitch model (``configs/models/pitch_salience_small.yaml``) trained from the
   store (``train run``, 2 workers, blocks of 64 MB): its patches/s and data-wait share.

Figures go to ``ROOT/bench_big.json`` and the screen. The data is deleted at the end unless
``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from big_data import make_big, write_pyjama  # noqa: E402

from common.features import make_feature  # noqa: E402
from common.store import read_tables, segment_files  # noqa: E402
from train.data import (
    EpochSampler,  # noqa: E402
    StoreDataset,  # noqa: E402
    collate,  # noqa: E402
)

FEATURE = ["--feature", "hcqt", "--set", "dtype=float16"]
AUDIO_BYTES_PER_S = 22050 * 2


def ram_bytes() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError:
        print("warning: cannot drop the page cache (not root): reads may come from memory")


def rss_mb(pid: int | str = "self", shmem: bool = False) -> float:
    """Private and file-mapped resident memory in MB (``shmem``: the shared memory instead,
    such as the batch blocks a worker lends to the main process)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v
    if shmem:
        return int(fields["RssShmem"].split()[0]) / 1024
    return (int(fields["RssAnon"].split()[0]) + int(fields["RssFile"].split()[0])) / 1024


def precompute(pyjama: Path, stores: Path, jobs: int) -> tuple[float, str]:
    os.sync()
    cmd = [sys.executable, "-m", "precompute", "run", "--dataset", str(pyjama), *FEATURE,
           "--stores", str(stores), "--jobs", str(jobs), "-q"]  # fmt: skip
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return took, r.stdout


class DiskPeak:
    """The most disk used while a step runs, sampled in a thread."""

    def __init__(self, path: Path):
        self.path, self.peak, self._stop = path, 0, threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, shutil.disk_usage(self.path).used)

    def __enter__(self) -> DiskPeak:
        self.peak = shutil.disk_usage(self.path).used
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_and_edit(root: Path, entries: list[dict], jobs: int, out: dict) -> Path:
    """T, a no-op, a label edit and 10 % more files; the disk they use."""
    n0 = round(len(entries) / 1.1)
    base, full = root / "base.pyjama", root / "big.pyjama"
    write_pyjama(base, entries[:n0])
    stores = root / "stores"
    with DiskPeak(root) as disk:
        T, _ = precompute(base, stores, jobs)
    view = Path(precompute(base, stores, jobs)[1].strip().splitlines()[-1])
    base_s = float(read_tables(view).duration_s.sum())
    out["build"] = {"files": n0, "audio_h": base_s / 3600, "T_s": T, "audio_s_per_s": base_s / T,
                    "disk_peak_growth_gb": (disk.peak - out["disk_before"]) / 1e9}  # fmt: skip
    noop, _ = precompute(base, stores, jobs)
    edited = [dict(e) for e in entries[:n0]]
    label = edited[n0 // 2]["style"][0]["value"]
    edited[n0 // 2] = {
        **edited[n0 // 2],
        "style": [{"value": "song" if label != "song" else "march"}],
    }
    write_pyjama(base, edited)
    label_s, _ = precompute(base, stores, jobs)
    write_pyjama(full, [*edited, *entries[n0:]])
    more_s, text = precompute(full, stores, jobs)
    out["rebuilds"] = {
        "no_op_s": noop, "label_edit_s": label_s, "more_files": len(entries) - n0,
        "more_files_s": more_s, "fractions_of_T": [noop / T, label_s / T, more_s / T],
    }  # fmt: skip
    return Path(text.strip().splitlines()[-1])


def verify_vs_pread(view: Path, out: dict) -> None:
    t = read_tables(view)
    drop_caches()
    s = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "precompute", "verify", str(view)],
                       capture_output=True, text=True)  # fmt: skip
    verify_s = time.perf_counter() - s
    ranges = [t.byte_range(i) for i in range(t.n_files)]
    drop_caches()
    s = time.perf_counter()
    nbytes = _pread_all([(str(p), a, n) for p, a, n in ranges], 1)
    pread_s = time.perf_counter() - s
    out["verify"] = {"ok": r.returncode == 0, "verify_s": verify_s, "pread_s": pread_s,
                     "gb": nbytes / 1e9, "verify_over_pread": pread_s / verify_s}  # fmt: skip


def _pread_all(ranges: list[tuple[str, int, int]], threads: int) -> int:
    fds = {p: os.open(p, os.O_RDONLY) for p in {r[0] for r in ranges}}
    try:
        with ThreadPoolExecutor(max(1, threads)) as ex:
            return sum(ex.map(lambda r: len(os.pread(fds[r[0]], r[2], r[1])), ranges))
    finally:
        for fd in fds.values():
            os.close(fd)


def _rss_collate(items):
    batch = collate(items)
    batch["rss"] = torch.tensor([os.getpid(), rss_mb(), rss_mb(shmem=True)], dtype=torch.float64)
    return batch


def epoch_vs_pread(view: Path, workers: int, out: dict) -> None:
    ds = StoreDataset(view, target="pitchmidi", split=None, patch_frames=64, patch_hop=64)
    sampler = EpochSampler(len(ds), seed=0, blocks=ds.patch_blocks(64), blocks_per_draw=8)
    order = sampler.indices()
    loader = torch.utils.data.DataLoader(ds, batch_size=64, sampler=order.tolist(),
                                         collate_fn=_rss_collate, num_workers=workers)  # fmt: skip
    drop_caches()
    main0, main_peak, first, peak, shm, n = rss_mb(), 0.0, {}, {}, {}, 0
    s = time.perf_counter()
    for b in loader:
        n += len(b["X"])
        pid, rss = int(b["rss"][0]), float(b["rss"][1])
        first.setdefault(pid, rss)
        peak[pid] = max(peak.get(pid, 0.0), rss)
        shm[pid] = max(shm.get(pid, 0.0), float(b["rss"][2]))
        main_peak = max(main_peak, rss_mb())
    took = time.perf_counter() - s
    ranges = [(str(p), a, nb) for p, a, nb in ds.byte_ranges(order)]
    drop_caches()
    s = time.perf_counter()
    nbytes = _pread_all(ranges, workers)
    pread_s = time.perf_counter() - s
    out[f"epoch_{workers}_workers"] = {
        "patches": n, "gb": nbytes / 1e9, "loader_patches_per_s": n / took,
        "pread_patches_per_s": n / pread_s, "loader_over_pread": pread_s / took,
        "main_rss_start_mb": main0, "main_rss_peak_mb": main_peak,
        "workers_rss_growth_mb": {str(p): peak[p] - first[p] for p in first},
        "workers_shmem_peak_mb": {str(p): shm[p] for p in shm},
    }  # fmt: skip


def train_one_epoch(root: Path, pyjama: Path, out: dict) -> None:
    exp = {
        "name": "big_pitch",
        "dataset": {"pyjama": str(pyjama.absolute()), "stores": str((root / "stores").absolute()),
                    "split_fractions": [0.8, 0.1, 0.1]},
        "feature": {**make_feature("hcqt").to_dict(), "dtype": "float16"},
        "target": {"name": "pitchmidi", "task": "multipitch"},
        "patch": {"frames": 64, "hop": 64},
        "model": str(Path("configs/models/pitch_salience_small.yaml").absolute()),
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.003, "num_workers": 2,
                  "shuffle_block_mb": 64, "device": "cpu", "checkpoint_every": 500},
    }  # fmt: skip
    path = root / "big_pitch.yaml"
    path.write_text(yaml.safe_dump(exp))
    drop_caches()
    s = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "train", "run", "--config", str(path), "--out",
                        str(root / "runs"), "-q"], capture_output=True, text=True)  # fmt: skip
    took = time.perf_counter() - s
    if r.returncode != 0:
        raise SystemExit(f"training failed:\n{r.stderr[-3000:]}")
    (run,) = (root / "runs").iterdir()
    import csv

    with open(run / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    out["train"] = {"patches": int(row["samples"]), "patches_per_s": float(row["samples_per_s"]),
                    "data_wait_share": float(row["data_wait_share"]), "epoch_s": float(row["epoch_s"]),
                    "run_s": took}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hours", type=float, help="audio of the final store (default: 1.3x RAM)")
    ap.add_argument("--root", default="data/big")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the audio and stores")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--reads-only", action="store_true",
                    help="steps 4-6 only, on the store that a run with --keep left in ROOT")  # fmt: skip
    args = ap.parse_args()
    feat_per_h = 3600 * 22050 / 512 * 6 * 360 * 2  # float16 HCQT bytes per audio hour
    hours = args.hours or round(1.3 * ram_bytes() / feat_per_h + 0.5, 1)
    root = Path(args.root)
    if args.reads_only:
        pool = sum(p.stat().st_size for p in segment_files(root / "stores"))
        reads(root, {"pool_gb": pool / 1e9, "pool_over_ram": pool / ram_bytes()}, args)
        return
    root.mkdir(parents=True, exist_ok=True)
    need = hours * (feat_per_h + 3600 * AUDIO_BYTES_PER_S) * 1.05
    free = shutil.disk_usage(root).free
    print(f"{hours} h: features {hours * feat_per_h / 1e9:.1f} GB ({hours * feat_per_h / ram_bytes():.2f}x "
          f"RAM), audio {hours * 3600 * AUDIO_BYTES_PER_S / 1e9:.1f} GB; needs {need / 1e9:.1f} GB, "
          f"{free / 1e9:.1f} GB free", flush=True)  # fmt: skip
    if need > free:
        raise SystemExit("not enough disk: give fewer --hours or free some space")
    out: dict = {"hours": hours, "ram_gb": ram_bytes() / 1e9, "cpus": os.cpu_count()}
    s = time.perf_counter()
    entries = make_big(root, hours, jobs=args.jobs)
    out["audio"] = {"files": len(entries), "notes": sum(len(e["pitchmidi"]) for e in entries),
                    "make_s": time.perf_counter() - s, "gb": folder_bytes(root / "audio") / 1e9}  # fmt: skip
    out["disk_before"] = shutil.disk_usage(root).used
    view = build_and_edit(root, entries, args.jobs, out)
    t = read_tables(view)
    pool = sum(p.stat().st_size for p in segment_files(root / "stores"))
    views = sum(
        p.stat().st_size for p in (root / "stores").glob("*/*.h5") if p.parent.name != "pool"
    )
    out["store"] = {
        "audio_h": float(t.duration_s.sum()) / 3600, "files": t.n_files,
        "pool_gb": pool / 1e9, "pool_over_ram": pool / ram_bytes(), "view_mb": view.stat().st_size / 1e6,
        "view_mb_per_audio_h": view.stat().st_size / 1e6 / (float(t.duration_s.sum()) / 3600),
        "views_mb": views / 1e6, "stores_folder_gb": folder_bytes(root / "stores") / 1e9,
        "disk_used_growth_gb": (shutil.disk_usage(root).used - out["disk_before"]) / 1e9,
    }  # fmt: skip
    print(json.dumps(out, indent=1), flush=True)
    reads(root, out, args)


def reads(root: Path, out: dict, args) -> None:
    """Steps 4-6 on the final store of ``root``; the figures saved, the data deleted unless
    ``--keep``."""
    (view,) = (root / "stores" / "big").glob("hcqt-*.h5")
    verify_vs_pread(view, out)
    print(json.dumps(out["verify"], indent=1), flush=True)
    for workers in (0, 2):
        epoch_vs_pread(view, workers, out)
        print(json.dumps(out[f"epoch_{workers}_workers"], indent=1), flush=True)
    if not args.skip_train:
        train_one_epoch(root, root / "big.pyjama", out)
    (root / "bench_big.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
