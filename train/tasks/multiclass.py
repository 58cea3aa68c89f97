"""One label per file among several classes (dance type, genre)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.targets import TargetSpec

from ..metrics import classification_metrics
from .base import Task
from .registry import register


@register
class Multiclass(Task):
    name = "multiclass"
    kinds = ("class",)
    headline = ("accuracy", "macro_recall", "file_accuracy", "file_macro_recall")

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy; ``y`` class indices as stored (int32), widened here, on the device."""
        return F.cross_entropy(out.float(), y.long())

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        return torch.softmax(out.float(), 1)

    def patch_metrics(self, res: dict[str, Any], spec: TargetSpec) -> dict[str, float]:
        m = self.test_metrics(res, spec)
        return {"accuracy": m["accuracy"], "macro_recall": m["macro_recall"]}

    def test_metrics(self, res: dict[str, Any], spec: TargetSpec) -> dict[str, Any]:
        return classification_metrics(
            self.probabilities(res["out"]).numpy(), res["y"].numpy(), spec.vocabulary
        )

    def file_metrics(self, outs: list[np.ndarray], ds, files: np.ndarray, **settings) -> dict:
        y = ds.file_targets[ds.target][files]
        m = classification_metrics(np.stack(outs), y, ds.spec.vocabulary)
        return {"file_" + k: v for k, v in m.items()}

    def prediction(self, out, spec, feature, where, settings) -> dict[str, Any]:
        return super().prediction(out, spec, feature, where, settings) | {
            "labels": [spec.vocabulary[int(np.argmax(out))]]
        }

    def plots(self, folder: Path, metrics: dict[str, Any], example=None) -> list[Path]:
        vocab = metrics["vocabulary"]
        out = [_confusion(folder / "confusion.png", np.array(metrics["confusion"]), vocab,
                          "test patches")]  # fmt: skip
        if "file_confusion" in metrics:
            out.append(_confusion(folder / "confusion_files.png",
                                  np.array(metrics["file_confusion"]), vocab, "test files"))  # fmt: skip
        return out


def _confusion(path: Path, cm: np.ndarray, vocab: list[str], title: str) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4 + 0.4 * len(vocab), 3.5 + 0.4 * len(vocab)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(vocab)), vocab, rotation=45, ha="right")
    ax.set_yticks(range(len(vocab)), vocab)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
