"""Evaluation, always in eval mode: patches of a split, and whole files as ``predict`` sees them.

:func:`evaluate_split` scores a model on a split (patch and whole-file metrics, with settings
such as a threshold chosen on the validation files) and keeps one test file's output for the
plots; the trainer calls it at the end of a run with what it has in memory, ``train eval``
(:func:`evaluate_run`) with a run's best weights. Whole-file outputs go through
:func:`file_output`, which ``train predict`` uses too, so both give the same answer for a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.features import Feature

from .checkpoints import load_run
from .data import StoreDataModule
from .dataset import StoreDataset
from .devices import amp_settings, model_input, pick_device
from .experiment import reload_resolved
from .step import AMP_OFF, patch_results, score_batch
from .tasks import Example, Task, task_for


@torch.no_grad()
def evaluate_patches(model, loader, task: Task, device, amp=AMP_OFF) -> dict[str, Any]:
    """Loss and outputs over a loader that goes through its split in order, in eval mode
    (BatchNorm statistics frozen, no dropout, no augmentation)."""
    model.eval()
    scored = [score_batch(model, batch, task, device, amp) for batch in loader]
    return patch_results(scored, loader.dataset.patch_file, task)


@torch.no_grad()
def file_output(
    model, block: np.ndarray, feature: Feature, task: Task, device, amp=AMP_OFF
) -> np.ndarray:
    """The task's output for one whole file's time-major feature ``(T, C, F)``."""
    model.eval()
    L, n = feature.patch_frames, block.shape[0]
    if n < L:  # shorter than one patch: zero-padded
        block = np.concatenate([block, np.zeros((L - n, *block.shape[1:]), dtype=block.dtype)])
    starts = task.file_starts(block.shape[0], feature)
    X = torch.from_numpy(np.stack([feature.patch_view(block[s : s + L]) for s in starts]))
    X = model_input(X, device)
    outs = []
    for i in range(0, len(X), 64):
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            outs.append(model(X[i : i + 64]).float())
    return task.file_output(torch.cat(outs), starts, n)


def file_outputs(model, ds: StoreDataset, task: Task, device, amp=AMP_OFF) -> list[np.ndarray]:
    """:func:`file_output` for every file of a dataset split, in the order of ``ds.files``."""
    return [
        file_output(model, block, ds.feature, task, device, amp)
        for block in ds.file_rows("features", ds.files)
    ]


def evaluate_split(
    model, dm: StoreDataModule, task: Task, split: str, device, amp=AMP_OFF
) -> tuple[dict[str, Any], Example | None]:
    """Metrics of ``model`` on ``split`` of a set-up data module, each file computed once; and
    the split's first file as an :class:`Example` for the plots (None when it has no file)."""
    ds = {"train": dm.train_ds, "valid": dm.valid_ds, "test": dm.test_ds}[split]
    res = evaluate_patches(model, dm.eval_dataloader(ds), task, device, amp)
    metrics: dict[str, Any] = {"split": split, "loss": res["loss"], "patches": len(ds)}
    metrics |= task.test_metrics(res, ds.spec)
    settings = {}
    truth = task.file_truth(dm.valid_ds, dm.valid_ds.files)
    if truth is not None:  # chosen on validation files, applied to the split
        settings = task.calibrate(file_outputs(model, dm.valid_ds, task, device, amp), truth)
    outs = file_outputs(model, ds, task, device, amp)
    metrics |= task.file_metrics(outs, ds, ds.files, **settings) | settings
    metrics |= {"files": len(ds.files), "vocabulary": ds.spec.vocabulary}
    return metrics, _example(ds, task, outs)


def _example(ds: StoreDataset, task: Task, outs: list[np.ndarray]) -> Example | None:
    if not len(ds.files):
        return None
    first = ds.files[:1]
    truth = task.file_truth(ds, first)
    n = int(ds.tables.n_frames[first[0]])
    return Example(str(ds.tables.names[first[0]]), outs[0], truth[0] if truth else None,
                   ds.feature.frame_times(n), ds.spec)  # fmt: skip


def write_metrics(folder: Path, metrics: dict[str, Any]) -> Path:
    path = Path(folder) / f"metrics_{metrics['split']}.json"
    path.write_text(json.dumps(metrics, indent=1))
    return path


def evaluate_run(
    folder: str | Path, split: str = "test", device: torch.device | None = None
) -> dict[str, Any]:
    """Metrics of a run's best weights on a split (patch and whole-file), written to
    ``metrics_<split>.json``."""
    folder = Path(folder)
    device = device or pick_device("auto")
    model, ck = load_run(folder, "best", device)
    cfg = reload_resolved(ck["config"])
    dm = StoreDataModule.from_experiment(cfg, store=ck["store"])
    dm.setup()
    task = task_for(cfg.target.task, dm.train_ds.spec, cfg.train)
    metrics, _ = evaluate_split(model, dm, task, split, device, amp_settings(device, cfg.train.amp))
    write_metrics(folder, metrics)
    return metrics
