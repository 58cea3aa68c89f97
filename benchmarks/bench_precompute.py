"""How fast precompute is: ``precompute run`` against a bare serial loop of librosa, in one run.

For each feature, on the same files:
- a serial loop in one process that decodes each file and calls librosa as the tutorial does
  (for hcqt, one ``librosa.cqt`` per harmonic: 6 per file; ``shared_octaves: false``, which is
  librosa bit for bit), writing nothing;
- ``precompute run --dataset D --feature F --jobs N`` through the command line as a user runs
  it (interpreter start, planning, workers, the view), from an empty stores folder;
and prints both in audio seconds per second, their ratio serial / pipeline, and the peak RSS of
the largest process of the pipeline.

    .venv/bin/python benchmarks/bench_precompute.py [--dataset data/demo/demo.pyjama]
        [--hours H] [--jobs 2] [--features hcqt lms]

``--dataset`` (default: the demo data of ``make demo-data``) measures a dataset on disk, where
fixed costs show on small ones; ``--hours H`` makes H hours of the demo generator's audio
(deterministic, once) into data/bench-<H>h/ and measures that instead.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.audio import load_audio
from common.features import make_feature
from common.pyjama import read_pyjama
from precompute.demo import make_demo


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
    harmonic (``shared_octaves: false``: 6 ``librosa.cqt`` calls per file)."""
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


def pipeline(pyjama: Path, feature: str, jobs: int) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of its largest process) of ``precompute run`` from an empty
    stores folder, through the command line."""
    stores = Path(tempfile.mkdtemp(prefix="bench-stores-", dir="data"))
    cmd = [str(Path(sys.executable).parent / "precompute"), "run", "--dataset", str(pyjama),
           "--feature", feature, "--jobs", str(jobs), "--stores", str(stores)]  # fmt: skip
    try:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        took = time.perf_counter() - t0
    finally:
        shutil.rmtree(stores, ignore_errors=True)
    # ru_maxrss of the children: the largest of every process waited for (workers included)
    return took, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", type=Path, default=Path("data/demo/demo.pyjama"))
    ap.add_argument("--hours", type=float, help="measure H hours of generated audio instead")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--features", nargs="+", default=["hcqt", "lms"])
    args = ap.parse_args()
    pyjama = dataset(args.hours) if args.hours else args.dataset
    if not pyjama.is_file():
        raise SystemExit(f"{pyjama}: not found (`make demo-data` makes the demo data)")
    Path("data").mkdir(exist_ok=True)
    results = {}
    for name in args.features:
        audio_s, serial_s = serial_baseline(pyjama, name)
        pipeline_s, rss_mb = pipeline(pyjama, name, args.jobs)
        results[name] = {
            "files": len(read_pyjama(pyjama).entries),
            "audio_hours": round(audio_s / 3600, 3),
            "serial_loop_s": round(serial_s, 1),
            f"precompute_run_jobs{args.jobs}_s": round(pipeline_s, 1),
            "serial_audio_s_per_s": round(audio_s / serial_s, 1),
            "pipeline_audio_s_per_s": round(audio_s / pipeline_s, 1),
            "ratio_serial_over_pipeline": round(serial_s / pipeline_s, 2),
            "pipeline_peak_rss_mb": round(rss_mb),
        }
        print(f"{name} on {pyjama}: serial loop {serial_s:.1f} s, precompute run --jobs "
              f"{args.jobs} {pipeline_s:.1f} s = {serial_s / pipeline_s:.2f}x", flush=True)  # fmt: skip
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
