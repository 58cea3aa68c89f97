"""Which pitches sound in each frame (multi-f0, piano transcription)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.targets import TargetSpec

from ..metrics import best_threshold, multipitch_metrics
from .base import Task
from .registry import register


@register
class Multipitch(Task):
    name = "multipitch"
    kinds = ("frame_pitch",)
    headline = ("precision", "recall", "accuracy")

    def n_out(self, spec) -> int | None:
        return None  # the model gives one salience per bin and frame

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """BCE per bin and frame; ``y`` (B, bins, L) as stored (uint8), made float here."""
        return F.binary_cross_entropy_with_logits(out.float(), y.float())

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out.float())

    def patch_metrics(self, res: dict[str, Any], spec: TargetSpec) -> dict[str, float]:
        p = self.probabilities(res["out"]).numpy() >= 0.5
        y = res["y"].numpy() > 0
        tp = float((p & y).sum())
        return {"frame_f1@0.5": 2 * tp / max(1.0, float(p.sum() + y.sum()))}

    def test_metrics(self, res: dict[str, Any], spec: TargetSpec) -> dict[str, Any]:
        return {}  # scored on whole files, with the threshold chosen on validation

    def file_starts(self, n_frames: int, feature) -> np.ndarray:
        """Non-overlapping patches, the last one aligned to the end of the file."""
        L = feature.patch_frames
        return np.unique(np.r_[np.arange(0, n_frames - L + 1, L), n_frames - L])

    def file_output(self, out: torch.Tensor, starts: np.ndarray, n_frames: int) -> np.ndarray:
        """Salience ``(bins, T)`` of the file, each frame from the patch that holds it."""
        sal = self.probabilities(out).cpu().numpy()  # (n_patches, bins, L)
        L = sal.shape[2]
        roll = np.zeros((sal.shape[1], max(n_frames, int(starts[-1]) + L)), dtype=np.float32)
        for s, p in zip(starts, sal):
            roll[:, s : s + L] = p
        return roll[:, :n_frames]

    def file_truth(self, ds, files: np.ndarray) -> list[np.ndarray]:
        return [frames.T for frames in ds.file_frames("target", files)]

    def calibrate(self, valid_outs, valid_truth) -> dict:
        return {"threshold": best_threshold(valid_outs, valid_truth)}

    def file_metrics(self, outs, ds, files, threshold: float = 0.5, **settings) -> dict:
        truth = self.file_truth(ds, files)
        frame_s = ds.feature.hop_length / ds.feature.sr
        return multipitch_metrics(outs, truth, np.asarray(ds.spec.pitch_midi), frame_s, threshold)

    def file_rows(self, outs, ds, files, threshold: float = 0.5, **settings) -> list[dict]:
        truth = self.file_truth(ds, files)
        frame_s = ds.feature.hop_length / ds.feature.sr
        grid = np.asarray(ds.spec.pitch_midi)
        rows = []
        for out, t in zip(outs, truth):
            m = multipitch_metrics([out], [t], grid, frame_s, threshold)
            rows.append({k: round(m[k], 4) for k in ("precision", "recall", "accuracy")}
                        | {"threshold": round(threshold, 4)})  # fmt: skip
        return rows

    def prediction(self, out, spec, feature, where, settings) -> dict[str, Any]:
        threshold = settings.get("threshold", 0.5)
        return write_notes(out, threshold, feature, np.asarray(spec.pitch_midi), where)

    def plots(self, folder: Path, metrics: dict[str, Any], example=None) -> list[Path]:
        if example is None:
            return []
        grid = np.asarray(example.spec.pitch_midi)
        out = folder / "pianoroll.png"
        draw_pianoroll(out, example.output, example.truth, grid, example.times, example.name,
                       metrics["threshold"])  # fmt: skip
        return [out]


def notes_of(on: np.ndarray, times: np.ndarray, frame_s: float, grid: np.ndarray) -> list[tuple]:
    """``(onset_s, offset_s, midi)`` of each run of active frames per bin of ``on (bins, T)``."""
    notes = []
    for b in np.nonzero(on.any(1))[0]:
        d = np.diff(np.r_[0, on[b].astype(np.int8), 0])
        for s, e in zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]):
            notes.append(
                (
                    round(float(times[s]), 4),
                    round(float(times[e - 1] + frame_s), 4),
                    round(float(grid[b]), 2),
                )
            )
    return sorted(notes)


def write_notes(sal: np.ndarray, threshold: float, feature, grid: np.ndarray, where: Path) -> dict:
    """``<where>.notes.csv`` (onset_s, offset_s, midi) and ``<where>.pianoroll.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = feature.frame_times(sal.shape[1])
    frame_s = feature.hop_length / feature.sr
    notes = notes_of(sal >= threshold, times, frame_s, grid)
    csv_path = where.with_name(where.name + ".notes.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["onset_s", "offset_s", "midi"])
        w.writerows(notes)
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.imshow(
        sal,
        origin="lower",
        aspect="auto",
        extent=(times[0], times[-1] + frame_s, grid[0], grid[-1]),
        cmap="magma",
    )
    ax.set_xlabel("time (s)"), ax.set_ylabel("MIDI"), ax.set_title(where.name)
    png = where.with_name(where.name + ".pianoroll.png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return {
        "notes": len(notes),
        "notes_csv": str(csv_path),
        "pianoroll": str(png),
        "threshold": threshold,
    }


def draw_pianoroll(out: Path, sal, truth, grid, times, name: str, threshold: float) -> Path:
    """Predicted salience over one test file, and its true vs predicted notes."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    a.imshow(
        sal,
        origin="lower",
        aspect="auto",
        extent=(times[0], times[-1], grid[0], grid[-1]),
        cmap="magma",
    )
    a.set_title(f"predicted salience: {name}"), a.set_ylabel("MIDI")
    fr, bins = np.nonzero(truth.T)
    b.scatter(times[fr], grid[bins], s=9, marker="s", c="0.75", lw=0, label="true")
    fr, bins = np.nonzero((sal >= threshold).T)
    b.scatter(
        times[fr],
        grid[bins],
        s=2,
        marker="s",
        c="tab:red",
        lw=0,
        label=f"predicted (>= {threshold:.2f})",
    )
    b.set_ylim(grid[0], grid[-1])
    b.set_ylabel("MIDI"), b.set_xlabel("time (s)"), b.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
