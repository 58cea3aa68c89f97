"""Train, evaluate and predict: one experiment, one run folder.

    run = fit(load_experiment("configs/experiments/demo_genre.yaml"), "runs")

``fit`` reads top to bottom: data, model, optimiser, then epochs of training
steps and a validation pass in eval mode, a checkpoint each epoch (``last.pt``)
and at each improvement (``best.pt``), early stopping, and a test evaluation
with the best weights. ``--resume`` continues from ``last.pt`` exactly.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.distributed.algorithms.join import Join

from common.features import Feature, make_feature
from common.store import TargetSpec, patch_index

from . import distributed
from . import tasks as T
from .data import Prefetcher, StoreDataModule
from .dataset import StoreDataset
from .model_factory import build_model


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, a missing device); the message says why and what to do."""


# ---------------------------------------------------------------------------
# set-up


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            f"train.device is 'cuda' but no CUDA device is available (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}); use device: auto or cpu"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise TrainingError(
            "train.device is 'mps' but this machine has no Apple GPU; use device: auto or cpu"
        )
    return torch.device(name)


def task_of(cfg: dict, spec: TargetSpec) -> str:
    task = cfg["target"]["task"] or T.TASK_OF_KIND.get(spec.kind)
    if task is None:
        raise TrainingError(
            f"target {spec.name!r} is a {spec.kind} target; no task trains on it (set target.task)"
        )
    allowed = {
        "multiclass": {"class"},
        "multilabel": {"multilabel"},
        "multipitch": {"frame_pitch"},
        "work": {"work"},
    }
    if spec.kind not in allowed[task]:
        raise TrainingError(
            f"target.task {task!r} needs a {' or '.join(allowed[task])} target; {spec.name!r} is {spec.kind}"
        )
    return task


def datamodule(
    cfg: dict, store: str | Path | None = None, rank: int = 0, world: int = 1
) -> StoreDataModule:
    d, t = cfg["dataset"], cfg["train"]
    task = cfg["target"]["task"]
    return StoreDataModule(
        store,
        dataset=d["pyjama"],
        feature=cfg["feature"],
        stores=d["stores"],
        audio_root=d["audio_root"],
        unit="patch",
        target=cfg["target"]["name"],
        batch_size=t["batch_size"],
        eval_batch_size=t["eval_batch_size"],
        num_workers=t["num_workers"],
        split_seed=d["split_seed"],
        split_fractions=d["split_fractions"],
        split_key=d["split_key"],
        patch_frames=cfg["patch"]["frames"],
        hop_frames=cfg["patch"]["hop"],
        samples_per_epoch=t["samples_per_epoch"],
        works_per_batch=t["works_per_batch"] if task == "work" else None,
        versions_per_work=t["versions_per_work"],
        seed=t["seed"],
        rank=rank,
        world=world,
    )


def data_notes(ds: StoreDataset) -> list[str]:
    """What a user should know of the data the target leaves out."""
    out = []
    if ds.unlabelled:
        out.append(
            f"{ds.unlabelled} file(s) of the store have no '{ds.target}' label: left out of "
            "every split"
        )
    off = (ds.tables.attrs.get("off_grid") or {}).get(ds.target)
    if off and (off["below"] or off["above"]):
        grid = ds.spec.pitch_midi
        out.append(
            f"{off['below']} notes below / {off['above']} above the grid of this feature "
            f"(MIDI {grid[0]:.1f}-{grid[-1]:.1f}): no target, not scored"
        )
    return out


def make_optimizer(model: torch.nn.Module, t: dict) -> torch.optim.Optimizer:
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"]
        )
    cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])


def make_scheduler(opt: torch.optim.Optimizer, t: dict):
    if t["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t["epochs"])
    if t["schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t["step_size"], gamma=t["gamma"])
    return None


def amp_settings(device: torch.device, enabled: bool) -> tuple[bool, torch.dtype | None, bool]:
    """(autocast on, its dtype, gradient scaler on): bf16 where supported, else fp16 with a scaler."""
    if not enabled:
        return False, None, False
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, torch.bfloat16, False
        return True, torch.float16, True
    if device.type == "cpu":
        return True, torch.bfloat16, False
    return False, None, False


# ---------------------------------------------------------------------------
# one step, one evaluation pass


def model_input(X: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch as the model wants it: moved as stored (time-major bytes, float16 or float32,
    one copy), then made float32 and contiguous on the device, in one operation."""
    return X.to(device, non_blocking=True).to(torch.float32, memory_format=torch.contiguous_format)


def loss_of(task: str, out: torch.Tensor, y: torch.Tensor, t: dict) -> torch.Tensor:
    if task == "multiclass":
        return T.multiclass_loss(out, y)
    if task in ("multilabel", "multipitch"):
        return T.multilabel_loss(out, y)
    return T.triplet_loss(out, y, margin=t["margin"], mining=t["mining"])


def read_losses(
    pending: list[tuple[torch.Tensor, int, int]], epoch: int, t: dict, store, bar
) -> float:
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
                f"loss is {v} at epoch {epoch}, step {step}: lower train.lr (now {t['lr']}), "
                f"set train.grad_clip, or check the features with `precompute verify {store}`"
            )
        total += v * n
    pending.clear()
    bar.set_postfix(loss=f"{values[-1]:.4f}")
    return total


@torch.no_grad()
def evaluate_patches(model, loader, task: str, t: dict, device, amp) -> dict[str, Any]:
    """Loss and outputs over a loader, in eval mode (BatchNorm statistics frozen, no dropout)."""
    model.eval()
    losses, outs, ys = [], [], []
    for batch in loader:
        x = model_input(batch["X"], device)
        y = batch["y"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            out = model(x)
        if task != "work":
            losses.append(float(loss_of(task, out, y, t)) * len(x))
        outs.append(out.float().cpu())
        ys.append(batch["y"])
    out = torch.cat(outs)
    # the loader goes through its split in order: patch i is of file patch_file[i]
    res = {"out": out, "y": torch.cat(ys), "file": torch.from_numpy(loader.dataset.patch_file)}
    if task != "work":
        res["loss"] = sum(losses) / len(out)
    else:
        res["loss"] = float(loss_of(task, out, res["y"], {**t, "mining": "hard"}))
    return res


def patch_metrics(task: str, res: dict, spec: TargetSpec) -> dict[str, float]:
    out, y = res["out"], res["y"].numpy()
    if task == "multiclass":
        m = T.classification_metrics(torch.softmax(out, 1).numpy(), y, spec.vocabulary)
        return {"accuracy": m["accuracy"], "macro_recall": m["macro_recall"]}
    if task == "multilabel":
        m = T.multilabel_metrics(torch.sigmoid(out).numpy(), y, spec.vocabulary)
        return {"roc_auc_macro": m["roc_auc_macro"], "pr_auc_macro": m["pr_auc_macro"]}
    if task == "multipitch":
        p = torch.sigmoid(out).numpy() >= 0.5
        tp = float((p & (y > 0)).sum())
        return {"frame_f1@0.5": 2 * tp / max(1.0, float(p.sum() + (y > 0).sum()))}
    ids, emb = T.file_average(
        torch.nn.functional.normalize(out, dim=1).numpy(), res["file"].numpy()
    )
    works = np.array([int(res["y"][res["file"] == i][0]) for i in ids])
    return {"MAP": T.retrieval_metrics(emb, works)["MAP"]}


# ---------------------------------------------------------------------------
# whole files: shared by eval and predict, so both give the same answer for a file


@torch.no_grad()
def predict_file(
    model, block: np.ndarray, feature: Feature, task: str, device, amp=(False, None, False)
) -> np.ndarray:
    """Model output for one whole file's time-major feature ``(T, C, F)``.

    multiclass / multilabel: class probabilities averaged over the file's patches ``(K,)``;
    work: the mean of the patch embeddings, unit length ``(D,)``;
    multipitch: salience ``(bins, T)`` from non-overlapping patches (the last one aligned to the end).
    """
    model.eval()
    L = feature.patch_frames
    n = block.shape[0]
    if n < L:
        block = np.concatenate([block, np.zeros((L - n, *block.shape[1:]), dtype=block.dtype)])
    total = block.shape[0]
    if task == "multipitch":
        starts = np.unique(np.r_[np.arange(0, total - L + 1, L), total - L])
    else:
        _, starts = patch_index(np.array([total]), L, feature.patch_hop)
    X = torch.from_numpy(np.stack([feature.patch_view(block[s : s + L]) for s in starts]))
    X = X.to(device).float()
    outs = []
    for i in range(0, len(X), 64):
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            outs.append(model(X[i : i + 64]).float())
    out = torch.cat(outs)
    if task == "multiclass":
        return torch.softmax(out, 1).mean(0).cpu().numpy()
    if task == "multilabel":
        return torch.sigmoid(out).mean(0).cpu().numpy()
    if task == "work":
        return (
            torch.nn.functional.normalize(torch.nn.functional.normalize(out, dim=1).mean(0), dim=0)
            .cpu()
            .numpy()
        )
    sal = torch.sigmoid(out).cpu().numpy()  # (n_patches, bins, L)
    roll = np.zeros((sal.shape[1], total), dtype=np.float32)
    for s, p in zip(starts, sal):
        roll[:, s : s + L] = p
    return roll[:, :n]


def file_outputs(
    model, ds: StoreDataset, task: str, device, amp
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``predict_file`` for every file of a dataset split: (file indices, outputs)."""
    outs = [
        predict_file(model, block, ds.feature, task, device, amp)
        for block in ds.file_rows("features", ds.files)
    ]
    return ds.files, outs


def file_metrics(
    model, ds: StoreDataset, task: str, device, amp, threshold: float | None = None
) -> dict[str, Any]:
    """The metrics researchers report, over whole files of a split."""
    files, outs = file_outputs(model, ds, task, device, amp)
    spec = ds.spec
    if task == "multiclass":
        y = ds.file_targets[spec.name][files]
        m = T.classification_metrics(np.stack(outs), y, spec.vocabulary)
        return {"file_" + k: v for k, v in m.items()} | {"files": len(files)}
    if task == "multilabel":
        y = ds.file_targets[spec.name][files]
        m = T.multilabel_metrics(np.stack(outs), y, spec.vocabulary)
        return {"file_" + k: v for k, v in m.items()} | {"files": len(files)}
    if task == "work":
        works = ds.file_targets[spec.name][files]
        return T.retrieval_metrics(np.stack(outs), works) | {"files": len(files)}
    truth = [rows.T for rows in ds.file_rows(f"targets/{spec.name}", files)]
    frame_s = ds.feature.hop_length / ds.feature.sr
    th = 0.5 if threshold is None else threshold
    return T.multipitch_metrics(outs, truth, np.asarray(spec.pitch_midi), frame_s, th) | {
        "files": len(files)
    }


# ---------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: Path, **state: Any) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Run:
    folder: Path
    metrics: dict[str, Any]


# ---------------------------------------------------------------------------
# the loop


def fit(
    cfg: dict,
    out: str | Path = "runs",
    resume: str | Path | None = None,
    stop_after_epochs: int | None = None,
    progress: bool = True,
    log=print,
) -> Run:
    """Train the experiment ``cfg`` (see :func:`train.experiment.load_experiment`) into a run folder.

    ``resume``: a run folder whose ``last.pt`` to continue from. ``stop_after_epochs``: end this
    invocation after that many epochs (a time-boxed job), leaving ``last.pt`` to resume from.
    """
    from contextlib import nullcontext

    from tqdm import tqdm

    t = cfg["train"]
    if t["sync_every"] is not None and t["sync_every"] < 1:
        raise TrainingError(f"train.sync_every must be 1 or more, got {t['sync_every']}")
    torch.manual_seed(t["seed"])
    ranks, device = distributed.setup(pick_device(t["device"]))
    amp = amp_settings(device, t["amp"])
    sync_every = t["sync_every"] or (1 if device.type == "cpu" else 20)
    if not ranks.main:  # one voice: rank 0 logs, shows progress and writes the run folder
        log, progress = (lambda m: None), False

    # data
    dm = datamodule(cfg, rank=ranks.rank, world=ranks.world)
    store = dm.prepare_data()
    dm.setup()
    spec = dm.train_ds.spec
    task = task_of(cfg, spec)
    cfg = {**cfg, "target": {**cfg["target"], "task": task}}
    train_loader, valid_loader = dm.train_dataloader(), dm.val_dataloader()

    # model, optimiser
    n_out = None if task in ("multipitch", "work") else dm.train_ds.n_out
    core = build_model(cfg["model"], dm.train_ds.item_shape, n_out=n_out).to(device)
    model = core
    if ranks.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = make_optimizer(core, t)
    sched = make_scheduler(opt, t)
    scaler = torch.amp.GradScaler(device.type, enabled=amp[2])

    # run folder, or the one to resume
    if resume is not None:
        folder = Path(resume)
        ck = load_checkpoint(folder / "last.pt")
        core.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck.get("scheduler"):
            sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        start_epoch, step, best, bad_epochs = (
            ck["epoch"] + 1,
            ck["step"],
            ck["best"],
            ck["bad_epochs"],
        )
        set_rng_state(ck["rng"])
        log(f"resuming {folder} at epoch {start_epoch} (step {step})")
    else:
        folder = ranks.broadcast(Path(out) / f"{cfg['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
        start_epoch, step, best, bad_epochs = 0, 0, None, 0
        if ranks.main:
            folder.mkdir(parents=True, exist_ok=False)
            (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            with open(folder / "metrics.csv", "w", newline="") as f:
                csv.writer(f).writerow(METRIC_COLUMNS)
    meta = {
        "config": cfg,
        "feature": dm.train_ds.feature.to_dict(),
        "target": spec.to_attrs() | {"name": spec.name},
        "item_shape": list(dm.train_ds.item_shape),
        "n_out": n_out,
        "store": str(store),
    }
    tb = _tensorboard(folder) if ranks.main else None
    log(f"run folder: {folder}")
    log(
        f"{task} on '{spec.name}': {len(dm.train_ds)} train / {len(dm.valid_ds)} valid patches, "
        f"{sum(p.numel() for p in core.parameters()):,} parameters, device {device}"
        + (f", {ranks.world} ranks" if ranks.enabled else "")
    )
    for line in data_notes(dm.train_ds):
        log(line)

    epochs_run = 0
    mode = t["monitor_mode"] if t["monitor"] != "valid_loss" else "min"
    for epoch in range(start_epoch, t["epochs"]):
        dm.set_epoch(epoch)
        model.train()
        t0, data_s, seen, loss_sum = time.perf_counter(), 0.0, 0, 0.0
        pending: list[tuple[torch.Tensor, int, int]] = []  # (loss, batch size, step) not read yet
        # on a GPU the host is idle while the device computes: the next batch is made then;
        # on the CPU the step already uses every core, and making it aside measured slower
        prefetch = device.type != "cpu" and train_loader.num_workers == 0
        it = Prefetcher(train_loader) if prefetch else iter(train_loader)
        bar = tqdm(
            total=len(train_loader),
            desc=f"epoch {epoch}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        # Join: with ranks holding unequal shares of the last batch, none waits forever
        with Join([model]) if ranks.enabled else nullcontext():
            while True:
                t_wait = time.perf_counter()
                batch = next(it, None)
                data_s += time.perf_counter() - t_wait
                if batch is None:
                    break
                x = model_input(batch["X"], device)
                y = batch["y"].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
                    out = model(x)
                    loss = loss_of(task, out, y, t)
                # the loss is read back (a host-device sync) every sync_every steps: on a GPU the
                # host meanwhile prepares the next batches; on CPU it costs nothing, so every step
                pending.append((loss.detach(), len(x), step))
                if len(pending) >= sync_every:
                    loss_sum += read_losses(pending, epoch, t, store, bar)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if t["grad_clip"]:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(core.parameters(), t["grad_clip"])
                scaler.step(opt)
                scaler.update()
                step += 1
                seen += len(x)
                bar.update()
                if t["max_steps"] and step >= t["max_steps"]:
                    break
        if isinstance(it, Prefetcher):
            it.close()
        loss_sum += read_losses(pending, epoch, t, store, bar)
        bar.close()
        loss_sum, seen = ranks.sum(loss_sum, seen)  # over all ranks: the epoch's loss and samples
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_s = time.perf_counter() - t0
        if sched is not None:
            sched.step()

        # validation, in eval mode; every rank sees the whole split, so all decide alike
        ranks.sync_buffers(core)
        res = evaluate_patches(core, valid_loader, task, t, device, amp)
        row = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / max(1, seen),
            "valid_loss": res["loss"],
            **{f"valid_{k}": v for k, v in patch_metrics(task, res, spec).items()},
            "lr": opt.param_groups[0]["lr"],
            "epoch_s": epoch_s,
            "samples": int(seen),
            "samples_per_s": seen / epoch_s,
            "data_wait_share": data_s / epoch_s,
        }
        value = row.get(t["monitor"])
        if value is None:
            raise TrainingError(
                f"train.monitor {t['monitor']!r} is not a metric of this task; have: {', '.join(row)}"
            )
        improved = best is None or (value < best if mode == "min" else value > best)
        best, bad_epochs = (value, 0) if improved else (best, bad_epochs + 1)
        log(_format_row(row) + (" *" if improved else ""))
        state = dict(
            model=core.state_dict(),
            optimizer=opt.state_dict(),
            scheduler=sched.state_dict() if sched else None,
            scaler=scaler.state_dict(),
            epoch=epoch,
            step=step,
            best=best,
            bad_epochs=bad_epochs,
            rng=rng_state(),
            **meta,
        )
        if ranks.main:  # checkpoints and logs from rank 0 only
            _append_metrics(folder, row, tb)
            if improved:
                save_checkpoint(folder / "best.pt", **state)
            save_checkpoint(folder / "last.pt", **state)
        ranks.barrier()
        epochs_run += 1
        if bad_epochs >= t["patience"]:
            log(f"early stop: {t['monitor']} has not improved for {t['patience']} epochs")
            break
        if (t["max_steps"] and step >= t["max_steps"]) or (
            stop_after_epochs and epochs_run >= stop_after_epochs
        ):
            break
    if tb:
        tb.close()
    finished = not (
        stop_after_epochs
        and epochs_run >= stop_after_epochs
        and epoch + 1 < t["epochs"]
        and bad_epochs < t["patience"]
        and not (t["max_steps"] and step >= t["max_steps"])
    )
    if ranks.enabled:
        identical = ranks.same_weights(core)
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
    metrics = evaluate_run(folder, split="test", device=device)
    plot_run(folder)
    log(f"test: {json.dumps(_headline(metrics))}")
    log(f"run folder: {folder} (plots: {', '.join(p.name for p in sorted(folder.glob('*.png')))})")
    ranks.close()
    return Run(folder, metrics)


METRIC_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "valid_loss",
    "valid_metric",
    "metric_name",
    "lr",
    "epoch_s",
    "samples",
    "samples_per_s",
    "data_wait_share",
]


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


def _headline(metrics: dict) -> dict:
    keep = (
        "accuracy",
        "macro_recall",
        "file_accuracy",
        "file_macro_recall",
        "roc_auc_macro",
        "pr_auc_macro",
        "file_roc_auc_macro",
        "file_pr_auc_macro",
        "precision",
        "recall",
        "MAP",
        "MRR",
        "P@1",
        "P@10",
        "mean_rank",
    )
    return {k: round(v, 4) for k, v in metrics.items() if k in keep}


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder / "tensorboard"))


# ---------------------------------------------------------------------------
# after training


def load_run(folder: str | Path, which: str = "best", device: torch.device | None = None):
    """(model, checkpoint) of a run folder, the model in eval mode on ``device``."""
    ck = load_checkpoint(Path(folder) / f"{which}.pt")
    model = build_model(ck["config"]["model"], ck["item_shape"], n_out=ck["n_out"])
    model.load_state_dict(ck["model"])
    model.to(device or torch.device("cpu")).eval()
    return model, ck


def evaluate_run(
    folder: str | Path, split: str = "test", device: torch.device | None = None
) -> dict[str, Any]:
    """Metrics of a run's best weights on a split (patch and whole-file), written to metrics_<split>.json."""
    folder = Path(folder)
    device = device or pick_device("auto")
    model, ck = load_run(folder, "best", device)
    cfg = ck["config"]
    task = cfg["target"]["task"]
    dm = datamodule(cfg, store=ck["store"])
    dm.setup()
    amp = amp_settings(device, cfg["train"]["amp"])
    ds = {"train": dm.train_ds, "valid": dm.valid_ds, "test": dm.test_ds}[split]
    loader = dm.eval_dataloader(ds)
    res = evaluate_patches(model, loader, task, cfg["train"], device, amp)
    metrics: dict[str, Any] = {"split": split, "loss": res["loss"], "patches": len(ds)}
    spec = ds.spec
    if task == "multiclass":
        metrics |= T.classification_metrics(
            torch.softmax(res["out"], 1).numpy(), res["y"].numpy(), spec.vocabulary
        )
    elif task == "multilabel":
        metrics |= T.multilabel_metrics(
            torch.sigmoid(res["out"]).numpy(), res["y"].numpy(), spec.vocabulary
        )
    threshold = None
    if task == "multipitch":
        _, val_outs = file_outputs(model, dm.valid_ds, task, device, amp)
        val_truth = [
            rows.T for rows in dm.valid_ds.file_rows(f"targets/{spec.name}", dm.valid_ds.files)
        ]
        threshold = T.best_threshold(val_outs, val_truth)
    metrics |= file_metrics(model, ds, task, device, amp, threshold)
    metrics["vocabulary"] = spec.vocabulary
    (folder / f"metrics_{split}.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def plot_run(folder: str | Path) -> list[Path]:
    """curves.png, and per task confusion.png / labels.png / pianoroll.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    written = []
    if rows:
        ep = [int(r["epoch"]) for r in rows]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
        a.plot(ep, [float(r["train_loss"]) for r in rows], label="train")
        a.plot(ep, [float(r["valid_loss"]) for r in rows], label="valid")
        a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
        b.plot(ep, [float(r["valid_metric"]) for r in rows])
        b.set_xlabel("epoch"), b.set_ylabel(rows[0]["metric_name"])
        fig.tight_layout()
        fig.savefig(folder / "curves.png", dpi=100)
        plt.close(fig)
        written.append(folder / "curves.png")
    mpath = folder / "metrics_test.json"
    if not mpath.exists():
        return written
    m = json.loads(mpath.read_text())
    vocab = m.get("vocabulary", [])
    if "confusion" in m:
        cm = np.array(m["confusion"])
        fig, ax = plt.subplots(figsize=(4 + 0.4 * len(vocab), 3.5 + 0.4 * len(vocab)))
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(len(vocab)), vocab, rotation=45, ha="right")
        ax.set_yticks(range(len(vocab)), vocab)
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title("test patches")
        fig.tight_layout()
        fig.savefig(folder / "confusion.png", dpi=100)
        plt.close(fig)
        written.append(folder / "confusion.png")
    if "per_label_roc_auc" in m:
        labels = list(m["per_label_roc_auc"])
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(labels)), 3.5))
        ax.bar(labels, [m["per_label_roc_auc"][k] for k in labels])
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.set_ylabel("ROC-AUC (test patches)"), ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        fig.savefig(folder / "labels.png", dpi=100)
        plt.close(fig)
        written.append(folder / "labels.png")
    if "threshold" in m:
        written.append(plot_pianoroll(folder, m["threshold"]))
    return written


def plot_pianoroll(folder: Path, threshold: float) -> Path:
    import matplotlib.pyplot as plt

    model, ck = load_run(folder)
    dm = datamodule(ck["config"], store=ck["store"])
    dm.setup()
    ds = dm.test_ds
    f = ds.files[:1]
    (block,) = ds.file_rows("features", f)
    sal = predict_file(model, block, ds.feature, "multipitch", torch.device("cpu"))
    truth = ds.file_rows(f"targets/{ds.target}", f)[0].T
    grid = np.asarray(ds.spec.pitch_midi)
    times = ds.feature.frame_times(truth.shape[1])
    fig, (a, b) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    a.imshow(
        sal,
        origin="lower",
        aspect="auto",
        extent=(times[0], times[-1], grid[0], grid[-1]),
        cmap="magma",
    )
    a.set_title(f"predicted salience: {ds.tables.names[f[0]]}"), a.set_ylabel("MIDI")
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
    b.set_ylabel("MIDI")
    b.set_xlabel("time (s)")
    b.legend(loc="upper right")
    fig.tight_layout()
    out = folder / "pianoroll.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def predict_audio(
    folder: str | Path,
    audio: list[str | Path],
    out_dir: str | Path | None = None,
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """Per-file results of a run's best model on audio files, computing the feature as precompute did."""
    from common.audio import load_audio

    device = device or pick_device("auto")
    model, ck = load_run(folder, "best", device)
    feature = make_feature(ck["feature"])
    task = ck["config"]["target"]["task"]
    spec = TargetSpec.from_attrs(ck["target"]["name"], ck["target"])
    amp = amp_settings(device, ck["config"]["train"]["amp"])
    out_dir = Path(out_dir or Path(folder) / "predictions")
    results = []
    threshold = None
    if task == "multipitch":
        mpath = Path(folder) / "metrics_test.json"
        threshold = json.loads(mpath.read_text())["threshold"] if mpath.exists() else 0.5
    for path in audio:
        a = load_audio(path, sr=feature.sr)
        block = feature.compute(a.y).transpose(2, 0, 1)
        out = predict_file(model, block, feature, task, device, amp)
        r: dict[str, Any] = {"file": str(path), "duration_s": round(a.duration_s, 3)}
        if task in ("multiclass", "multilabel"):
            order = np.argsort(-out)
            r["scores"] = {spec.vocabulary[i]: round(float(out[i]), 4) for i in order}
            r["labels"] = (
                [spec.vocabulary[order[0]]]
                if task == "multiclass"
                else [spec.vocabulary[i] for i in order if out[i] >= 0.5]
            )
        elif task == "work":
            out_dir.mkdir(parents=True, exist_ok=True)
            p = out_dir / f"{Path(path).stem}.npy"
            np.save(p, out)
            r["embedding"] = str(p)
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            r |= _write_notes(
                out, threshold, feature, np.asarray(spec.pitch_midi), out_dir / Path(path).stem
            )
        r["output"] = out
        results.append(r)
    return results


def _write_notes(
    sal: np.ndarray, threshold: float, feature: Feature, grid: np.ndarray, stem: Path
) -> dict:
    """Piano-roll PNG and a CSV of notes (onset_s, offset_s, midi) from runs of active frames per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    on = sal >= threshold
    times = feature.frame_times(sal.shape[1])
    frame_s = feature.hop_length / feature.sr
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
    notes.sort()
    csv_path = stem.with_suffix(".notes.csv")
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
    ax.set_xlabel("time (s)"), ax.set_ylabel("MIDI"), ax.set_title(stem.name)
    png = stem.with_suffix(".pianoroll.png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return {
        "notes": len(notes),
        "notes_csv": str(csv_path),
        "pianoroll": str(png),
        "threshold": threshold,
    }
