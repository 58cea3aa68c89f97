"""Several labels per file (tags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.targets import TargetSpec

from ..metrics import multilabel_metrics
from .base import Task
from .registry import register


@register
class Multilabel(Task):
    name = "multilabel"
    kinds = ("multilabel",)
    headline = ("roc_auc_macro", "pr_auc_macro", "file_roc_auc_macro", "file_pr_auc_macro")

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """BCE with logits; multi-hot ``y`` as stored (uint8) or soft (mixup), made float here."""
        return F.binary_cross_entropy_with_logits(out.float(), y.float())

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out.float())

    def patch_metrics(self, res: dict[str, Any], spec: TargetSpec) -> dict[str, float]:
        m = self.test_metrics(res, spec)
        return {"roc_auc_macro": m["roc_auc_macro"], "pr_auc_macro": m["pr_auc_macro"]}

    def test_metrics(self, res: dict[str, Any], spec: TargetSpec) -> dict[str, Any]:
        return multilabel_metrics(
            self.probabilities(res["out"]).numpy(), res["y"].numpy(), spec.vocabulary
        )

    def file_metrics(self, outs: list[np.ndarray], ds, files: np.ndarray, **settings) -> dict:
        y = ds.file_targets[ds.target][files]
        m = multilabel_metrics(np.stack(outs), y, ds.spec.vocabulary)
        return {"file_" + k: v for k, v in m.items()}

    def labels_of(self, out: np.ndarray) -> list[int]:
        return [int(i) for i in np.argsort(-out) if out[i] >= 0.5]

    def prediction(self, out, spec, feature, where, settings) -> dict[str, Any]:
        labels = [spec.vocabulary[i] for i in np.argsort(-out) if out[i] >= 0.5]
        return super().prediction(out, spec, feature, where, settings) | {"labels": labels}

    def plots(self, folder: Path, metrics: dict[str, Any], example=None) -> list[Path]:
        import matplotlib.pyplot as plt

        per_label = metrics.get("per_label_roc_auc") or {}
        if not per_label:
            return []
        labels = list(per_label)
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(labels)), 3.5))
        ax.bar(labels, [per_label[k] for k in labels])
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.set_ylabel("ROC-AUC (test patches)"), ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        fig.savefig(folder / "labels.png", dpi=100)
        plt.close(fig)
        return [folder / "labels.png"]
