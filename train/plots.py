"""Pictures of a run: its learning curves, and each task's own view of the test metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .tasks import TASKS


def plot_run(folder: str | Path) -> list[Path]:
    """``curves.png`` (losses and the validation metric per epoch), then the task's plots
    (``confusion.png``, ``labels.png``, ``pianoroll.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    written = []
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    if rows:
        written.append(plot_curves(folder / "curves.png", rows))
    mpath = folder / "metrics_test.json"
    if mpath.exists():
        from .checkpoints import load_checkpoint

        cfg = load_checkpoint(folder / "best.pt")["config"]
        task = TASKS[cfg["target"]["task"]](cfg["train"])
        written += task.plots(folder, json.loads(mpath.read_text()))
    return written


def plot_curves(out: Path, rows: list[dict]) -> Path:
    import matplotlib.pyplot as plt

    ep = [int(r["epoch"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(ep, [float(r["train_loss"]) for r in rows], label="train")
    a.plot(ep, [float(r["valid_loss"]) for r in rows], label="valid")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    b.plot(ep, [float(r["valid_metric"]) for r in rows])
    b.set_xlabel("epoch"), b.set_ylabel(rows[0]["metric_name"])
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
