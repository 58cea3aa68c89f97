"""Precompute on 1 and 2 workers, loky against dask, and store size per audio hour per feature.

For lms and hcqt on the demo data: audio seconds per second with ``--jobs 1`` and ``--jobs 2``
on loky and on a dask LocalCluster (started by the run, as ``--backend dask`` without an
address does), and the dask overhead per file (the time difference divided by the files: a
task per file).
Then, for every feature, the MiB per hour of audio of its features in the pool (the segments,
float32) and of its view.

    make demo-data && .venv/bin/python benchmarks/bench_scale.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from precompute.pipeline import execute as run_plan
from precompute.pipeline import make_plan


def timed(pyjama: Path, feature: str, jobs: int, backend: str) -> dict:
    stores = Path(tempfile.mkdtemp(prefix="bench-scale-", dir="data"))
    try:
        plan = make_plan(pyjama, feature, stores)
        t = time.perf_counter()
        s = run_plan(plan, jobs=jobs, backend=backend, progress=False, log=lambda m: None)
        wall = time.perf_counter() - t
        return {
            "audio_s_per_s": round(s.audio_s / wall, 1),
            "wall_s": round(wall, 2),
            "files": len(plan.files),
            "pool_mb": sum(f.stat().st_size for f in (stores / "pool").rglob("*.h5")) / 2**20,
            "view_mb": s.store_path.stat().st_size / 2**20,
            "audio_h": s.audio_s / 3600,
        }
    finally:
        shutil.rmtree(stores, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", default="data/demo/demo.pyjama")
    args = ap.parse_args()
    pyjama = Path(args.dataset)
    out: dict = {"throughput": {}, "mb_per_audio_hour": {}}
    for feature in ("lms", "hcqt"):
        r = {f"{b}_jobs{j}": timed(pyjama, feature, j, b) for b in ("loky", "dask") for j in (1, 2)}
        per_file = {
            j: (r[f"dask_jobs{j}"]["wall_s"] - r[f"loky_jobs{j}"]["wall_s"])
            / r[f"loky_jobs{j}"]["files"]
            for j in (1, 2)
        }
        out["throughput"][feature] = {k: v["audio_s_per_s"] for k, v in r.items()} | {
            "dask_overhead_ms_per_file_jobs1": round(1000 * per_file[1], 1),
            "dask_overhead_ms_per_file_jobs2": round(1000 * per_file[2], 1),
            "walls_s": {k: v["wall_s"] for k, v in r.items()},
        }
        print(feature, json.dumps(out["throughput"][feature]), flush=True)
    for feature in ("waveform", "lms", "cqt", "hcqt"):
        r = timed(pyjama, feature, 2, "loky")
        out["mb_per_audio_hour"][feature] = {
            k: round(r[f"{k}_mb"] / r["audio_h"], 2) for k in ("pool", "view")
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
