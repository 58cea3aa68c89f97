"""Train one experiment into one run folder: set-up, epochs of steps, validation, checkpoints.

    run = fit(load_experiment("configs/experiments/demo_genre.yaml"), "runs")

``fit`` reads top to bottom: data, task, model, optimiser, run folder; then for each epoch the
training steps (:func:`train_epoch`), a validation pass in eval mode, a checkpoint (``last.pt``,
and ``best.pt`` at each improvement) and early stopping; at the end a test evaluation with the
best weights and the plots. ``--resume`` continues from ``last.pt`` to the same weights.
"""

from __future__ import annotations

import csv
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.distributed.algorithms.join import Join

from common.pause import pause_point
from common.progress import progress as progress_bar
from common.remote import is_url

from . import distributed
from .augment import make_augmentations
from .checkpoints import load_checkpoint, load_weights, rng_state, save_checkpoint, set_rng_state
from .data import StoreDataModule, StoreDataset
from .data.settings import cache_limit
from .devices import TrainingError, amp_settings, pick_device
from .evaluate import evaluate_patches, evaluate_split, metrics_table
from .experiment import Experiment
from .model_factory import build_model, layer_names
from .optim import make_optimizer, make_scheduler
from .plots import plot_run
from .prefetch import Prefetcher
from .step import Step
from .tasks import Task, task_for

METRIC_COLUMNS = [
    "epoch", "step", "train_loss", "valid_loss", "valid_metric", "metric_name", "lr",
    "epoch_s", "samples", "samples_per_s", "data_wait_share",
]  # fmt: skip


@dataclass
class Run:
    folder: Path
    metrics: dict[str, Any]


@dataclass
class Training:
    """Everything a training step touches, made once by :func:`fit`."""

    cfg: Experiment
    task: Task
    step_fn: Step  # the training step, shared with Lightning
    model: torch.nn.Module  # DistributedDataParallel around ``core`` when several ranks run
    core: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: tuple
    ranks: distributed.Ranks
    store: Path | str  # a path, or a remote view's URL
    sync_every: int
    dm: StoreDataModule | None = None
    folder: Path | None = None
    start_epoch: int = 0
    start_batch: int = 0  # batches of ``start_epoch`` done before a mid-epoch resume
    partial: dict = field(default_factory=dict)  # that epoch's loss sum, samples, wait so far
    step: int = 0
    best: float | None = None
    best_weights: dict | None = None  # the core's weights at the best epoch, on the CPU
    best_epoch: int | None = None
    bad_epochs: int = 0
    meta: dict = field(default_factory=dict)


def data_notes(ds: StoreDataset) -> list[str]:
    """What a user should know of the data the target leaves out."""
    out = []
    if ds.unlabelled:
        out.append(
            f"{ds.unlabelled} file(s) of the store have no '{ds.target}' label: left out of "
            "every split"
        )
    short = ds.files[ds.tables.n_frames[ds.files] < ds.patch_frames]
    if len(short):
        split = f"{ds.split} " if ds.split else ""
        line = (f"{len(short)} of the {len(ds.files)} {split}files are shorter than one patch "
                f"({ds.patch_frames} frames): no patch of theirs is trained on")  # fmt: skip
        if ds.spec is not None and ds.spec.kind == "class":
            labels, counts = np.unique(ds.file_targets[ds.target][short], return_counts=True)
            line += " (" + ", ".join(f"{c} {ds.classes[v]}" for v, c in zip(labels, counts)) + ")"
        out.append(line + "; whole-file scores and `train predict` pad them to one patch")
    off = (ds.tables.attrs.get("off_grid") or {}).get(ds.target)
    if off and (off["below"] or off["above"]):
        grid = ds.spec.pitch_midi
        out.append(
            f"{off['below']} notes below / {off['above']} above the grid of this feature "
            f"(MIDI {grid[0]:.1f}-{grid[-1]:.1f}): no target, not scored"
        )
    return out


def fit(
    cfg: Experiment,
    out: str | Path = "runs",
    resume: str | Path | None = None,
    stop_after_epochs: int | None = None,
    progress: bool = True,
    log=print,
    folder: str | Path | None = None,
) -> Run:
    """Train the experiment ``cfg`` (see :func:`train.experiment.load_experiment`) into a run
    folder. ``resume``: a run folder whose ``last.pt`` to continue from. ``stop_after_epochs``:
    end this invocation after that many epochs (a time-boxed job), leaving ``last.pt``.
    ``folder``: the run folder to make (default ``out/<name>-<time>``); it may exist, empty
    of any run."""
    if is_url(cfg.dataset.stores) and cfg.dataset.cache_gb is None:
        # a store larger than the cache is read in an order that depends on its size: the run
        # records the size it used, so that a resumed run reads the same order
        cfg = cfg.replace(dataset={"cache_gb": cache_limit(None) / 2**30})
    t = cfg.train
    if t.sync_every is not None and t.sync_every < 1:
        raise TrainingError(f"train.sync_every must be 1 or more, got {t.sync_every}")
    torch.manual_seed(t.seed)
    ranks, device = distributed.setup(pick_device(t.device))
    if not ranks.main:  # one voice: rank 0 logs, shows progress and writes the run folder
        log, progress = (lambda m: None), False
    dm, state = set_up(cfg, ranks, device)
    folder = state.folder = open_run(state, resume, out, log, folder)
    dm.resume_at(state.start_epoch, state.start_batch)
    log(f"run folder: {folder}")
    log(
        f"{state.task.name} on '{cfg.target.name}': {len(dm.train_ds)} train / "
        f"{len(dm.valid_ds)} valid patches, {sum(p.numel() for p in state.core.parameters()):,} "
        f"parameters, device {device}" + (f", {ranks.world} ranks" if ranks.enabled else "")
    )
    for line in data_notes(dm.train_ds):
        log(line)
    try:
        epochs_run, finished = _epochs(state, dm, folder, stop_after_epochs, progress, log)
    except KeyboardInterrupt:
        every = t.checkpoint_every
        last = f"the last {'checkpoint (every ' + str(every) + ' steps)' if every else 'finished epoch'}"
        log(f"interrupted: {last} is in {folder / 'last.pt'}; continue with: "
            f"train run --resume {folder}")  # fmt: skip
        raise
    return finish(state, dm, folder, finished, epochs_run, log)


def _epochs(state: Training, dm, folder: Path, stop_after_epochs, progress: bool, log):
    """Epochs of training, validation and checkpoints until the last, an early stop, a step
    limit or ``stop_after_epochs``; ``(epochs run, whether training is over)``."""
    t, ranks = state.cfg.train, state.ranks
    train_loader, valid_loader = dm.train_dataloader(), dm.val_dataloader()
    tb = _tensorboard(folder) if ranks.main else None
    epochs_run, finished = 0, True
    for epoch in range(state.start_epoch, t.epochs):
        dm.set_epoch(epoch)
        row = train_epoch(state, train_loader, epoch, progress)
        improved = validate(state, valid_loader, row)
        log(_format_row(row) + (" *" if improved else ""))
        checkpoint(state, folder, epoch, improved, row, tb)
        epochs_run += 1
        if state.bad_epochs >= t.patience:
            log(f"early stop: {t.monitor} has not improved for {t.patience} epochs")
            break
        if t.max_steps and state.step >= t.max_steps:
            break
        if stop_after_epochs and epochs_run >= stop_after_epochs:
            finished = epoch + 1 >= t.epochs
            break
    if tb:
        tb.close()
    return epochs_run, finished


def set_up(cfg: Experiment, ranks, device) -> tuple[StoreDataModule, Training]:
    """Data (rank 0 finds the store, the others are told), task, model, optimiser, step."""
    t = cfg.train
    dm = StoreDataModule.from_experiment(cfg, rank=ranks.rank, world=ranks.world)
    store = ranks.broadcast(dm.prepare_data() if ranks.main else None)
    dm.store = store if is_url(store) else Path(store)
    dm.setup()
    spec = dm.train_ds.spec
    task = task_for(cfg.target.task, spec, t, cfg.source)
    want = cfg.target.pitch_unit
    if want and spec.unit and spec.unit != want:
        raise TrainingError(
            f"target.pitch_unit is {want!r}, but {store} read '{spec.name}' as {spec.unit}; "
            f"rebuild it with: precompute run ... --pitch-unit {spec.name}={want}"
        )
    cfg = cfg.replace(target={"task": task.name})
    task.check_model(layer_names(cfg.model), cfg.source)
    core = build_model(cfg.model, dm.train_ds.item_shape, n_out=task.n_out(spec)).to(device)
    model = core
    if ranks.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = make_optimizer(core, t)
    amp = amp_settings(device, t.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp.scaler)
    augs = make_augmentations(t.augment, dm.train_ds.feature, task, cfg.source)
    step_fn = Step(model, core.parameters(), task, augs, opt, scaler, amp, t.grad_clip, t.seed,
                   device)  # fmt: skip
    state = Training(
        cfg=cfg, task=task, step_fn=step_fn, model=model, core=core, opt=opt,
        sched=make_scheduler(opt, t), scaler=scaler, device=device, amp=amp, ranks=ranks,
        store=dm.store, sync_every=t.sync_every or (1 if device.type == "cpu" else 20), dm=dm,
    )  # fmt: skip
    state.meta = {
        "config": cfg.to_dict(),
        "feature": dm.train_ds.feature.to_dict(),
        "target": spec.to_attrs() | {"name": spec.name},
        "item_shape": list(dm.train_ds.item_shape),
        "n_out": task.n_out(spec),
        "store": str(store),
    }
    return dm, state


def open_run(state: Training, resume, out, log, folder=None) -> Path:
    """The run folder: made new, or the one to resume with its training state restored."""
    cfg = state.cfg
    if resume is not None:
        folder = Path(resume)
        ck = load_checkpoint(folder / "last.pt")
        load_weights(state.core, ck["model"], folder / "last.pt")
        state.opt.load_state_dict(ck["optimizer"])
        if state.sched is not None and ck.get("scheduler"):
            state.sched.load_state_dict(ck["scheduler"])
        state.scaler.load_state_dict(ck["scaler"])
        state.step, state.best, state.bad_epochs = ck["step"], ck["best"], ck["bad_epochs"]
        # where to go on: in mid-epoch (a checkpoint every train.checkpoint_every steps), or at
        # the next epoch (checkpoints of epoch ends, and of runs from before mid-epoch resume)
        at = ck.get("position") or {"epoch": ck["epoch"] + 1, "batch": 0}
        state.start_epoch, state.start_batch = at["epoch"], at["batch"]
        if state.ranks.main:  # rank 0 goes on from the epoch's sums so far, the others from 0
            state.partial = {k: at[k] for k in ("loss_sum", "seen", "data_s") if k in at}
        set_rng_state(ck["rng"])
        where = f", batch {at['batch']}" if at["batch"] else ""
        log(f"resuming {folder} at epoch {at['epoch']}{where} (step {state.step})")
        return folder
    if folder is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = Path(out) / f"{cfg.name}-{stamp}"
        fresh = True
    else:
        folder, fresh = Path(folder), False
    folder = state.ranks.broadcast(folder)
    if state.ranks.main:
        folder.mkdir(parents=True, exist_ok=not fresh)
        if (folder / "config.yaml").exists():
            raise TrainingError(f"{folder} already holds a run; continue it with --resume")
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        with open(folder / "metrics.csv", "w", newline="") as f:
            csv.writer(f).writerow(METRIC_COLUMNS)
    return folder


def train_epoch(state: Training, loader, epoch: int, progress: bool) -> dict[str, Any]:
    """One epoch of training steps; the epoch's loss, throughput and time waiting for data."""
    s, t = state, state.cfg.train
    s.model.train()
    resumed = s.partial if epoch == s.start_epoch else {}
    t0, data_s = time.perf_counter(), resumed.get("data_s", 0.0)
    seen, loss_sum = resumed.get("seen", 0), resumed.get("loss_sum", 0.0)
    pending: list[tuple[torch.Tensor, int, int]] = []  # (loss, batch size, step) not read yet
    # on a GPU the host is idle while the device computes: the next batch is made then; on
    # the CPU the step already uses every core, and making it aside measured slower
    prefetch = s.device.type != "cpu" and loader.num_workers == 0
    it = Prefetcher(loader) if prefetch else iter(loader)
    bar = progress_bar(len(loader), f"epoch {epoch}", "batch", enabled=progress, leave=False)
    # Join: with ranks holding unequal shares of the last batch, none waits forever
    with Join([s.model]) if s.ranks.enabled else nullcontext():
        while True:
            t_wait = time.perf_counter()
            batch = next(it, None)
            data_s += time.perf_counter() - t_wait
            if batch is None:
                break
            loss, n = s.step_fn(batch, epoch, s.step)
            s.step += 1
            s.dm.batch_done()
            # the loss is read back (a host-device sync) every sync_every steps: on a GPU the
            # host meanwhile prepares the next batches; on CPU it costs nothing, so every step
            pending.append((loss.detach(), n, s.step - 1))
            seen += n
            if len(pending) >= s.sync_every or _checkpoint_due(s):
                loss_sum += read_losses(pending, epoch, t, s.store, bar)
            if _checkpoint_due(s):
                mid_epoch_checkpoint(s, {"loss_sum": loss_sum, "seen": seen, "data_s": data_s})
            bar.update()
            if t.max_steps and s.step >= t.max_steps:
                break
    if isinstance(it, Prefetcher):
        it.close()
    loss_sum += read_losses(pending, epoch, t, s.store, bar)
    bar.close()
    loss_sum, seen = s.ranks.sum(loss_sum, seen)  # over all ranks: the epoch's loss and samples
    if s.device.type == "cuda":
        torch.cuda.synchronize()
    epoch_s = time.perf_counter() - t0
    if s.sched is not None:
        s.sched.step()
    return {
        "epoch": epoch,
        "step": s.step,
        "train_loss": loss_sum / max(1, seen),
        "epoch_s": epoch_s,
        "samples": int(seen),
        "samples_per_s": seen / epoch_s,
        "data_wait_share": data_s / epoch_s,
    }


def _checkpoint_due(s: Training) -> bool:
    every = s.cfg.train.checkpoint_every
    return bool(every) and s.step % every == 0


def mid_epoch_checkpoint(s: Training, sums: dict[str, float]) -> None:
    """``last.pt`` with where the epoch is, written by rank 0, then a pause point for tests.

    Under DDP the epoch's loss and sample counts so far are summed over the ranks first
    (rank 0 goes on from the sum, the others from 0), unless the ranks' shares of the epoch
    differ (shuffling by blocks), where a collective could wait on a rank already done: then
    only rank 0's part is kept, and the resumed epoch's reported loss leaves the other ranks'
    earlier batches out. The weights are the same either way."""
    if s.ranks.enabled and not (s.dm.settings.shuffle_block_mb and s.dm.settings.unit == "patch"):
        loss_sum, seen, data_s = s.ranks.sum(sums["loss_sum"], sums["seen"], sums["data_s"])
        sums = {"loss_sum": loss_sum, "seen": int(seen), "data_s": data_s / s.ranks.world}
    if s.ranks.main:
        position = {**s.dm.position(), **sums}
        save_checkpoint(s.folder / "last.pt", **_training_state(s, s.dm.epoch - 1, position))
        pause_point("step")  # the others wait at the next step's gradients for it


def _training_state(s: Training, epoch: int, position: dict) -> dict[str, Any]:
    """What a checkpoint holds: weights, optimiser, scheduler, scaler, RNG, counters, where
    training goes on (``position``), and the run's description (``meta``)."""
    return dict(
        model=s.core.state_dict(),
        optimizer=s.opt.state_dict(),
        scheduler=s.sched.state_dict() if s.sched else None,
        scaler=s.scaler.state_dict(),
        epoch=epoch,
        position=position,
        step=s.step,
        best=s.best,
        bad_epochs=s.bad_epochs,
        rng=rng_state(),
        **s.meta,
    )


def read_losses(pending: list, epoch: int, t, store, bar) -> float:
    """Read the pending losses back in one sync; their sum weighted by batch size.

    A NaN or infinite loss stops the run, naming its epoch and step; the last checkpoint,
    written at the end of the previous epoch, is left as it was.
    """
    if not pending:
        return 0.0
    values = torch.stack([loss for loss, _, _ in pending]).float().cpu().tolist()
    total = 0.0
    for v, (_, n, step) in zip(values, pending):
        if not np.isfinite(v):
            raise TrainingError(
                f"loss is {v} at epoch {epoch}, step {step}: lower train.lr (now {t.lr}), "
                f"set train.grad_clip, or check the features with `precompute verify {store}`"
            )
        total += v * n
    pending.clear()
    bar.set_postfix(loss=f"{values[-1]:.4f}")
    return total


def validate(state: Training, loader, row: dict) -> bool:
    """The validation loss and metrics into ``row``, in eval mode; whether it improved.
    Every rank sees the whole split (rank 0's BatchNorm statistics), so all decide alike."""
    t, s = state.cfg.train, state
    s.ranks.sync_buffers(s.core)
    res = evaluate_patches(s.core, loader, s.task, s.device, s.amp)
    row["valid_loss"] = res["loss"]
    row |= {f"valid_{k}": v for k, v in s.task.patch_metrics(res, loader.dataset.spec).items()}
    row["lr"] = s.opt.param_groups[0]["lr"]
    value = row.get(t.monitor)
    if value is None:
        raise TrainingError(
            f"train.monitor {t.monitor!r} is not a metric of this task; have: {', '.join(row)}"
        )
    mode = t.monitor_mode if t.monitor != "valid_loss" else "min"
    improved = s.best is None or (value < s.best if mode == "min" else value > s.best)
    s.best, s.bad_epochs = (value, 0) if improved else (s.best, s.bad_epochs + 1)
    if improved:
        s.best_epoch = row["epoch"]
    if improved and s.ranks.main:
        s.best_weights = {
            k: v.detach().to("cpu", copy=True) for k, v in s.core.state_dict().items()
        }
    return improved


def checkpoint(state: Training, folder: Path, epoch: int, improved: bool, row: dict, tb) -> None:
    """``last.pt`` every epoch, ``best.pt`` at each improvement, the metrics row; rank 0 only."""
    s = state
    ck = _training_state(s, epoch, {"epoch": epoch + 1, "batch": 0})
    if s.ranks.main:
        _append_metrics(folder, row, tb)
        if improved:
            save_checkpoint(folder / "best.pt", **ck)
        save_checkpoint(folder / "last.pt", **ck)
    s.ranks.barrier()


def finish(
    state: Training, dm: StoreDataModule, folder: Path, finished: bool, epochs_run: int, log
) -> Run:
    """The test evaluation of the best weights and the plots, once training is over (rank 0),
    with the data module and model this run has in memory."""
    ranks = state.ranks
    if ranks.enabled:
        identical = ranks.same_weights(state.core)
        if ranks.main:
            (folder / "ranks.json").write_text(
                json.dumps({"world": ranks.world, "identical_weights": identical})
            )
        ranks.barrier()
        if not ranks.main:
            ranks.close()
            return Run(folder, {})
    if not finished:
        log(f"stopped after {epochs_run} epoch(s); continue with: train run --resume {folder}")
        ranks.close()
        return Run(folder, {})
    best = state.best_weights or load_checkpoint(folder / "best.pt")["model"]
    state.core.load_state_dict(best)
    ev = evaluate_split(state.core, dm, state.task, "test", state.device, state.amp)
    ev.write(folder)
    metrics = ev.metrics
    plot_run(folder, state.task, metrics, ev.example, state.best_epoch)
    headline = {k: round(v, 4) for k, v in metrics.items() if k in state.task.headline}
    log(f"test: {json.dumps(headline)}")
    log(metrics_table(metrics, state.task))
    log(f"run folder: {folder} (plots: {', '.join(p.name for p in sorted(folder.glob('*.png')))})")
    ranks.close()
    return Run(folder, metrics)


def _append_metrics(folder: Path, row: dict, tb) -> None:
    metric_name = next((k for k in row if k.startswith("valid_") and k != "valid_loss"), "")
    values = {**row, "valid_metric": row.get(metric_name, ""), "metric_name": metric_name}
    with open(folder / "metrics.csv", "a", newline="") as f:
        csv.writer(f).writerow([values[c] for c in METRIC_COLUMNS])
    if tb:
        for k, v in row.items():
            if k not in ("epoch", "step"):
                tb.add_scalar(k, v, row["epoch"])


def _format_row(row: dict) -> str:
    parts = [
        f"epoch {row['epoch']:3d}",
        f"train_loss {row['train_loss']:.4f}",
        f"valid_loss {row['valid_loss']:.4f}",
    ]
    parts += [
        f"{k} {v:.4f}" for k, v in row.items() if k.startswith("valid_") and k != "valid_loss"
    ]
    parts += [
        f"{row['samples_per_s']:.0f} patches/s",
        f"data wait {100 * row['data_wait_share']:.1f}%",
    ]
    return "  ".join(parts)


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder / "tensorboard"))
