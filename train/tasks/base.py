"""What a task is: the loss, the metrics, the whole-file output, the prediction and the plots
of one kind of target. One subclass per task, registered by name (see :mod:`train.tasks`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from common.features import Feature
from common.patches import patch_index
from common.targets import TargetSpec


@dataclass
class Example:
    """One test file as evaluation saw it, for the plots of a run."""

    name: str
    output: np.ndarray  # the task's whole-file output (:meth:`Task.file_output`)
    truth: np.ndarray | None  # what :meth:`Task.file_truth` gives for it, if anything
    times: np.ndarray  # the time of each feature frame (seconds)
    spec: TargetSpec


class Task:
    """Defaults suit tasks whose target is one label set per file (multiclass, multilabel)."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]  # the target kinds it trains on
    headline: ClassVar[tuple[str, ...]] = ()  # test metrics printed at the end of a run
    # outputs are scores of the target's classes: another dataset must have the same ones
    per_class_outputs: ClassVar[bool] = True

    def __init__(self, cfg: Any):
        self.cfg = cfg  # the experiment's ``train`` settings (train.experiment.TrainSettings)

    # -- training ---------------------------------------------------------------------
    def n_out(self, spec: TargetSpec) -> int | None:
        """The model's output size for ``n_out`` in a model YAML (None: the model decides)."""
        return spec.n_out

    def check_model(self, layers: set[str], file=None) -> None:
        """Refuse (a ConfigError) a model (the names of its layers) that this task's settings
        cannot train."""

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def split_loss(self, out: torch.Tensor, y: torch.Tensor, batch_losses: list[float]) -> float:
        """The loss over a whole split; by default the batches' losses, weighted by size."""
        return sum(batch_losses) / max(1, len(out))

    def patch_metrics(self, res: dict[str, Any], spec: TargetSpec) -> dict[str, float]:
        """Validation metrics of an epoch, from the patch outputs ``res``."""
        raise NotImplementedError

    def test_metrics(self, res: dict[str, Any], spec: TargetSpec) -> dict[str, Any]:
        """Patch-level metrics of a test evaluation (default: the validation ones)."""
        return self.patch_metrics(res, spec)

    # -- whole files --------------------------------------------------------------------
    def file_windows(self, n_frames: int, feature: Feature) -> tuple[int, np.ndarray]:
        """The length and starts of the windows a whole file of ``n_frames`` is scored in
        (default: its patches, a file shorter than one patch padded to it)."""
        return feature.patch_frames, self.file_starts(max(n_frames, feature.patch_frames), feature)

    def file_starts(self, n_frames: int, feature: Feature) -> np.ndarray:
        """Patch starts of a whole file (``n_frames`` >= one patch)."""
        return patch_index(np.array([n_frames]), feature.patch_frames, feature.patch_hop)[1]

    def file_output(self, out: torch.Tensor, starts: np.ndarray, n_frames: int) -> np.ndarray:
        """One file's output from its patches' outputs (default: mean class probabilities)."""
        return self.probabilities(out).mean(0).cpu().numpy()

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def calibrate(self, valid_outs: list[np.ndarray], valid_truth: list[np.ndarray]) -> dict:
        """Settings chosen on the validation files before testing (a threshold, ...)."""
        return {}

    def file_metrics(self, outs: list[np.ndarray], ds, files: np.ndarray, **settings) -> dict:
        raise NotImplementedError

    def file_rows(self, outs: list[np.ndarray], ds, files: np.ndarray, **settings) -> list[dict]:
        """One row per file for ``predictions_<split>.csv``: its truth, what the model says,
        the score of that, and the task's metrics of the file alone (default: labels, for the
        tasks of one label set per file)."""
        vocab = ds.spec.vocabulary
        rows = []
        for f, out in zip(files, outs):
            y = ds.file_targets[ds.target][f]
            truth = [vocab[i] for i in np.flatnonzero(y)] if np.ndim(y) else [vocab[int(y)]]
            said = [vocab[i] for i in self.labels_of(out)]
            rows.append({"truth": ";".join(truth), "prediction": ";".join(said),
                         "score": round(float(np.max(out)), 4),
                         "correct": int(set(truth) == set(said))})  # fmt: skip
        return rows

    def labels_of(self, out: np.ndarray) -> list[int]:
        """The labels a file's output names (default: the most probable)."""
        return [int(np.argmax(out))]

    def file_truth(self, ds, files: np.ndarray) -> list[np.ndarray] | None:
        """What :meth:`calibrate` compares outputs with, per file (None: nothing to calibrate)."""
        return None

    # -- after training -----------------------------------------------------------------
    def prediction(
        self, out: np.ndarray, spec: TargetSpec, feature: Feature, where: Path, settings: dict
    ) -> dict[str, Any]:
        """What ``train predict`` reports for one file; ``where`` is a unique path stem for
        any file it writes."""
        order = np.argsort(-out)
        return {"scores": {spec.vocabulary[i]: round(float(out[i]), 4) for i in order}}

    def plots(self, folder: Path, metrics: dict[str, Any], example: Example | None) -> list[Path]:
        """Task-specific pictures of the test metrics (and of one test file) in the run folder."""
        return []
