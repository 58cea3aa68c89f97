"""Evaluation, always in eval mode: patches of a split, and whole files as ``predict`` sees them.

``evaluate_run`` scores a run's best weights on a split and writes ``metrics_<split>.json``.
Whole-file outputs go through :func:`file_output`, which ``train predict`` uses too, so both
give the same answer for a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.features import Feature

from .checkpoints import load_run
from .dataset import StoreDataset
from .devices import amp_settings, model_input, pick_device
from .tasks import Task, task_for

AMP_OFF = (False, None, False)


@torch.no_grad()
def evaluate_patches(model, loader, task: Task, device, amp=AMP_OFF) -> dict[str, Any]:
    """Loss and outputs over a loader that goes through its split in order, in eval mode
    (BatchNorm statistics frozen, no dropout, no augmentation)."""
    model.eval()
    losses, outs, ys = [], [], []
    for batch in loader:
        x = model_input(batch["X"], device)
        y = batch["y"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            out = model(x)
        losses.append(float(task.loss(out, y)) * len(x))
        outs.append(out.float().cpu())
        ys.append(batch["y"])
    out, y = torch.cat(outs), torch.cat(ys)
    return {
        "out": out,
        "y": y,
        "file": torch.from_numpy(loader.dataset.patch_file),  # patch i is of this file
        "loss": task.split_loss(out, y, losses),
    }


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


def evaluate_run(
    folder: str | Path, split: str = "test", device: torch.device | None = None
) -> dict[str, Any]:
    """Metrics of a run's best weights on a split (patch and whole-file), written to
    ``metrics_<split>.json``."""
    from .loop import datamodule

    folder = Path(folder)
    device = device or pick_device("auto")
    model, ck = load_run(folder, "best", device)
    cfg = ck["config"]
    dm = datamodule(cfg, store=ck["store"])
    dm.setup()
    task = task_for(cfg["target"]["task"], dm.train_ds.spec, cfg["train"])
    amp = amp_settings(device, cfg["train"]["amp"])
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
    (folder / f"metrics_{split}.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def first_test_file(folder: Path):
    """The first test file of a run: its predicted salience, truth, pitch grid, times, name."""
    from .loop import datamodule

    model, ck = load_run(folder)
    dm = datamodule(ck["config"], store=ck["store"])
    dm.setup()
    ds = dm.test_ds
    task = task_for(ck["config"]["target"]["task"], ds.spec, ck["config"]["train"])
    f = ds.files[:1]
    (block,) = ds.file_rows("features", f)
    sal = file_output(model, block, ds.feature, task, torch.device("cpu"))
    truth = ds.file_rows("target", f)[0].T
    times = ds.feature.frame_times(truth.shape[1])
    return sal, truth, np.asarray(ds.spec.pitch_midi), times, str(ds.tables.names[f[0]])
