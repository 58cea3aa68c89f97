"""Share of training step time spent waiting for data, for the default experiment on CPU.

Runs the default experiment (configs/experiments/demo_genre.yaml) for a few epochs with 0 and
2 DataLoader workers and prints, per setting, the mean of the trainer's own per-epoch
measure: time blocked in ``next(loader)`` over the epoch's wall time (target: under 5%),
and patches per second.

    make features && .venv/bin/python benchmarks/bench_train.py [--epochs 4] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from train.experiment import load_experiment
from train.loop import fit


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="configs/experiments/demo_genre.yaml")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()
    results = {}
    for workers in args.workers:
        cfg = load_experiment(
            args.config,
            [
                f"train.epochs={args.epochs}",
                f"train.num_workers={workers}",
                "train.patience=100",
                "train.device=cpu",
            ],
        )
        with tempfile.TemporaryDirectory() as out:
            run = fit(cfg, out, stop_after_epochs=args.epochs, progress=False, log=lambda m: None)
            with open(Path(run.folder) / "metrics.csv") as f:
                rows = list(csv.DictReader(f))[1:]  # the first epoch includes start-up
        results[f"workers={workers}"] = {
            "data_wait_share": round(sum(float(r["data_wait_share"]) for r in rows) / len(rows), 4),
            "patches_per_s": round(sum(float(r["samples_per_s"]) for r in rows) / len(rows)),
            "epochs_measured": len(rows),
        }
        print(workers, json.dumps(results[f"workers={workers}"]), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
