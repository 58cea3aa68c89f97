"""Precompute throughput against a bare serial loop of the same librosa calls, in one run.

For each feature: audio seconds per second of
- a bare serial loop that decodes each file and calls librosa as the tutorial does (for hcqt,
  one CQT per harmonic), writing nothing (1 process);
- ``precompute run --jobs N`` (plan, layout, tasks writing in place), from scratch;
and the planning's share of the total, and the peak RSS of every process.

    .venv/bin/python benchmarks/bench_precompute.py [--hours 2] [--jobs 2] [--features lms hcqt]

The audio is the demo generator at a larger size (fixed, deterministic), made once into
data/bench-<hours>h/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common.audio import load_audio
from common.features import make_feature
from common.pyjama import read_pyjama
from precompute.demo import make_demo
from precompute.pipeline import execute as run_plan
from precompute.pipeline import make_plan, peak_rss_mb


def dataset(hours: float) -> Path:
    clip_s = 15.0
    per_class = max(1, round(hours * 3600 / (clip_s * 3 * 4)))
    root = Path("data") / f"bench-{hours:g}h"
    pyjama = root / "demo.pyjama"
    if not pyjama.exists():
        t = time.perf_counter()
        make_demo(root, per_class=per_class, clip_s=clip_s)
        print(f"made {pyjama} in {time.perf_counter() - t:.0f} s")
    return pyjama


def serial_baseline(pyjama: Path, feature_name: str) -> tuple[float, float]:
    """(audio seconds, wall seconds) of the bare loop: for hcqt, one ``librosa.cqt`` per
    harmonic (``shared_octaves: false``), as ``../shared/checks/precompute_vs_serial.sh``."""
    feature = make_feature(feature_name)
    if "shared_octaves" in feature.params:
        feature = make_feature(feature_name, {"shared_octaves": False})
    coll = read_pyjama(pyjama)
    audio_s = 0.0
    t = time.perf_counter()
    for e in coll.entries:
        a = load_audio(e.audio_path, sr=feature.sr)
        feature.compute(a.y)
        audio_s += a.duration_s
    return audio_s, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--features", nargs="+", default=["lms", "hcqt"])
    args = ap.parse_args()
    pyjama = dataset(args.hours)
    results = {}
    for name in args.features:
        audio_s, base_s = serial_baseline(pyjama, name)
        stores = Path(tempfile.mkdtemp(prefix="bench-stores-", dir="data"))
        try:
            t0 = time.perf_counter()
            plan = make_plan(pyjama, name, stores)
            plan_s = time.perf_counter() - t0
            s = run_plan(plan, jobs=args.jobs, progress=False)
            total_s = time.perf_counter() - t0
            size_mb = s.store_path.stat().st_size / 2**20
        finally:
            shutil.rmtree(stores, ignore_errors=True)
        r = {
            "audio_hours": round(audio_s / 3600, 3),
            "serial_loop_audio_s_per_s": round(audio_s / base_s, 1),
            f"pipeline_jobs{args.jobs}_audio_s_per_s": round(s.audio_s / total_s, 1),
            "ratio_vs_serial_loop": round(base_s / total_s, 2),
            "pipeline_s": round(total_s, 1),
            "plan_s": round(plan_s, 2),
            "plan_share": round(plan_s / total_s, 3),
            "store_mb": round(size_mb, 1),
            "store_mb_per_audio_hour": round(size_mb / (s.audio_s / 3600), 1),
            "peak_rss_mb_per_process": {str(k): round(v) for k, v in sorted(s.peak_rss_mb.items())},
        }
        results[name] = r
        print(name, json.dumps(r, indent=1), flush=True)
    print(f"benchmark process peak RSS (serial loop ran here): {peak_rss_mb():.0f} MB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
