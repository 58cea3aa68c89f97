"""Evaluation, always in eval mode: patches of a split, and whole files as ``predict`` sees them.

:func:`evaluate_split` scores a model on a split (patch and whole-file metrics, with settings
such as a threshold chosen on the validation files) and keeps one test file's output for the
plots; the trainer calls it at the end of a run with what it has in memory, ``train eval``
(:func:`evaluate_run`) with a run's best weights. Whole-file outputs go through
:func:`file_output`, which ``train predict`` uses too, so both give the same answer for a file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from common.features import Feature

from .checkpoints import load_run
from .data import StoreDataModule, StoreDataset
from .devices import AMP_OFF, amp_settings, pick_device
from .experiment import reload_resolved
from .step import model_input, patch_results, score_batch
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
    n = block.shape[0]
    L, starts = task.file_windows(n, feature)
    if n < L:  # shorter than one patch: zero-padded
        block = np.concatenate([block, np.zeros((L - n, *block.shape[1:]), dtype=block.dtype)])
    X = torch.from_numpy(np.stack([feature.patch_input(block[s : s + L]) for s in starts]))
    X = model_input(X, device)
    outs = []
    for i in range(0, len(X), 64):
        with torch.autocast(device.type, dtype=amp.dtype, enabled=amp.enabled):
            outs.append(model(X[i : i + 64]).float())
    return task.file_output(torch.cat(outs), starts, n)


def file_outputs(model, ds: StoreDataset, task: Task, device, amp=AMP_OFF) -> list[np.ndarray]:
    """:func:`file_output` for every file of a dataset split, in the order of ``ds.files``."""
    return [
        file_output(model, block, ds.feature, task, device, amp)
        for block in ds.file_frames("features", ds.files)
    ]


@dataclass
class Evaluation:
    """A split scored: its metrics, its first file for the plots, and a row per file."""

    metrics: dict[str, Any]
    example: Example | None
    rows: list[dict[str, Any]]

    def write(self, folder: str | Path) -> list[Path]:
        """``metrics_<split>.json`` and ``predictions_<split>.csv`` (a row per file)."""
        split = self.metrics["split"]
        folder = Path(folder)
        paths = [folder / f"metrics_{split}.json", folder / f"predictions_{split}.csv"]
        paths[0].write_text(json.dumps(self.metrics, indent=1))
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        with open(paths[1], "w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(self.rows)
        return paths


def evaluate_split(
    model, dm: StoreDataModule, task: Task, split: str, device, amp=AMP_OFF
) -> Evaluation:
    """``model`` scored on ``split`` of a set-up data module, each file computed once: the
    metrics (patches and whole files), the split's first file for the plots, a row per file."""
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
    names = [str(ds.tables.names[f]) for f in ds.files]
    rows = [{"file": n, **r} for n, r in zip(names, task.file_rows(outs, ds, ds.files, **settings))]
    return Evaluation(metrics, _example(ds, task, outs), rows)


def _example(ds: StoreDataset, task: Task, outs: list[np.ndarray]) -> Example | None:
    if not len(ds.files):
        return None
    first = ds.files[:1]
    truth = task.file_truth(ds, first)
    n = int(ds.tables.n_frames[first[0]])
    return Example(str(ds.tables.names[first[0]]), outs[0], truth[0] if truth else None,
                   ds.feature.frame_times(n), ds.spec)  # fmt: skip


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
    ev = evaluate_split(model, dm, task, split, device, amp_settings(device, cfg.train.amp))
    ev.write(folder)
    return ev.metrics


def evaluate_on(
    folder: str | Path, pyjama: str | Path, device: torch.device | None = None
) -> dict[str, Any]:
    """A run's best weights on every file of another dataset (its store built with the run's
    feature): whole-file metrics, with settings (thresholds) chosen on the run's own validation
    files, written to ``metrics_on-<name>.json`` and ``predictions_on-<name>.csv``. For work
    identification this is the cross-dataset test: works the model has never heard."""
    folder, pyjama = Path(folder), Path(pyjama).absolute()
    device = device or pick_device("auto")
    model, ck = load_run(folder, "best", device)
    cfg = reload_resolved(ck["config"])
    d = dataclasses.replace(cfg.dataset, pyjama=str(pyjama), split_key=None, folds=None,
                            fold=None, train_works=None)  # fmt: skip
    ds = StoreDataset.from_experiment(dataclasses.replace(cfg, dataset=d), split=None)
    own = StoreDataset.from_experiment(cfg, split="valid")
    task = task_for(cfg.target.task, own.spec, cfg.train)
    if (
        task.per_class_outputs
        and task.n_out(own.spec) is not None
        and ds.spec.vocabulary != own.spec.vocabulary
    ):
        raise UserError(f"{pyjama}: target {cfg.target.name!r} has the classes "
                        f"{ds.spec.vocabulary}, the run was trained on {own.spec.vocabulary}")  # fmt: skip
    amp = amp_settings(device, cfg.train.amp)
    settings = {}
    truth = task.file_truth(own, own.files)
    if truth is not None:
        settings = task.calibrate(file_outputs(model, own, task, device, amp), truth)
    outs = file_outputs(model, ds, task, device, amp)
    name = f"on-{pyjama.stem}"
    metrics = {"split": name, "dataset": str(pyjama)}
    metrics |= task.file_metrics(outs, ds, ds.files, **settings) | settings
    metrics |= {"files": len(ds.files), "patches": len(ds)}
    names = [str(ds.tables.names[f]) for f in ds.files]
    rows = [{"file": n, **r} for n, r in zip(names, task.file_rows(outs, ds, ds.files, **settings))]
    Evaluation(metrics, None, rows).write(folder)
    return metrics


def metrics_table(metrics: dict[str, Any], task: Task) -> str:
    """The headline metrics of a split, and per class the recall of its files and patches
    (where the task has classes): what ``train eval`` prints (the JSON has everything)."""
    lines = [f"{metrics['split']}: {metrics.get('files', '?')} files, "
             f"{metrics.get('patches', '?')} patches"]  # fmt: skip
    for k in task.headline:
        if k in metrics:
            lines.append(f"  {k:<20} {metrics[k]:.4f}")
    vocab = metrics.get("vocabulary") or []
    cms = {n: np.asarray(metrics[k]) for n, k in (("files", "file_confusion"),
                                                  ("patches", "confusion")) if k in metrics}  # fmt: skip
    if cms and vocab:
        width = max(len(v) for v in vocab)
        lines.append(f"  {'recall per class':<{width}}  " + "  ".join(f"{n:>8}" for n in cms))
        for i, v in enumerate(vocab):
            cells = []
            for cm in cms.values():
                total = cm[i].sum()
                cells.append(f"{cm[i, i] / total:>8.3f}" if total else f"{'-':>8}")
            lines.append(f"  {v:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
