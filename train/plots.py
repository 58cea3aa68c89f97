"""Pictures of a run: its learning curves, and each task's own view of the test metrics."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .tasks import Example, Task


def plot_run(
    folder: str | Path,
    task: Task,
    metrics: dict[str, Any] | None,
    example: Example | None,
    best_epoch: int | None = None,
) -> list[Path]:
    """``curves.png`` (losses and the validation metric per epoch, the best epoch marked), then
    the task's plots of the test ``metrics`` and of one test file (``confusion.png`` and
    ``confusion_files.png``, ``labels.png``, ``pianoroll.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    written = []
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    if rows:
        written.append(plot_curves(folder / "curves.png", rows, best_epoch))
    if metrics is not None:
        written += task.plots(folder, metrics, example)
    return written


def plot_curves(out: Path, rows: list[dict], best_epoch: int | None = None) -> Path:
    import matplotlib.pyplot as plt

    ep = [int(r["epoch"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(ep, [float(r["train_loss"]) for r in rows], label="train")
    a.plot(ep, [float(r["valid_loss"]) for r in rows], label="valid")
    a.set_xlabel("epoch"), a.set_ylabel("loss")
    b.plot(ep, [float(r["valid_metric"]) for r in rows])
    b.set_xlabel("epoch"), b.set_ylabel(rows[0]["metric_name"])
    if best_epoch is not None:  # the weights tested and kept in best.pt
        for ax in (a, b):
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1,
                       label=f"best (epoch {best_epoch})")  # fmt: skip
    a.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
