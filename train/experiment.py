"""An experiment YAML: dataset + feature + target + model + optimisation, as typed settings.

Each section is a dataclass whose fields are its YAML keys (the one schema: checking, defaults
and the code that reads a setting all use these names), e.g. ``cfg.train.lr`` is
``train: {lr: ...}``. Paths in ``dataset`` are relative to the experiment file; ``feature`` and
``model`` may be paths to YAML files (relative to the experiment file) or inline mappings.
Errors name the file and the key path: ``x.yaml: train.lr: expected a number, got 'fast'``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import (
    ConfigError,
    find_config,
    from_dict,
    load_config,
    parse_override,
    schema_of,
    section,
    setting,
    validate,
)
from common.features import make_feature
from common.remote import is_url

from .tasks import TASKS


@dataclass(kw_only=True)
class DatasetSettings:
    pyjama: str = setting(kind="path")
    audio_root: str | None = setting(None, "path", nullable=True)
    # a folder, or the URL of one on object storage (s3://bucket/prefix: docs/SCALING.md)
    stores: str = setting("stores", "path")
    # a remote store's local cache: its folder (default MIRPATCH_CACHE_DIR, ~/.cache/mirpatch)
    # and its size limit in GB (default MIRPATCH_CACHE_GB, 50)
    cache_dir: str | None = setting(None, "path", nullable=True)
    cache_gb: float | None = setting(None, "float", nullable=True)
    split_seed: int = setting(0, "int")
    split_fractions: list[float] = setting([0.8, 0.1, 0.1], "list", item="number")
    split_key: str | None = setting(None, "str", nullable=True)
    # a per-file label whose files stay in one split and fold (default: ``group``, if any)
    split_group: str | None = setting(None, "str", nullable=True)
    # K-fold cross-validation: fold ``fold`` of ``folds`` is the test split (by work, or by
    # file where there are no works); ``train run --folds K`` runs every fold
    folds: int | None = setting(None, "int", nullable=True)
    fold: int | None = setting(None, "int", nullable=True)
    # train on only the first N works (or groups, or files) of the training split, in an order
    # of their own (each N's works hold the smaller N's); valid and test stay as they are: a
    # learning curve on the same test works
    train_works: int | None = setting(None, "int", nullable=True)


@dataclass(kw_only=True)
class TargetSettings:
    name: str = setting(kind="str")
    task: str | None = setting(None, "str", nullable=True, choices=[*TASKS, None])
    pitch_unit: str | None = setting(
        None, "str", nullable=True, choices=["midi", "hz", None],
        help="the unit the store must have read the target's pitches in",
    )  # fmt: skip


@dataclass(kw_only=True)
class PatchSettings:
    frames: int | None = setting(None, "int", nullable=True)
    hop: int | None = setting(None, "int", nullable=True)


@dataclass(kw_only=True)
class TrainSettings:
    optimizer: str = setting("adam", "str", choices=["adam", "adamw", "sgd"])
    lr: float = setting(1e-3, "float")
    weight_decay: float = setting(0.0, "float")
    momentum: float = setting(0.9, "float")
    schedule: str = setting("none", "str", choices=["none", "cosine", "step"])
    step_size: int = setting(10, "int")
    gamma: float = setting(0.5, "float")
    batch_size: int = setting(64, "int")
    eval_batch_size: int = setting(256, "int")
    epochs: int = setting(20, "int")
    max_steps: int | None = setting(None, "int", nullable=True)
    samples_per_epoch: int | None = setting(None, "int", nullable=True)
    patience: int = setting(5, "int")
    monitor: str = setting("valid_loss", "str")
    monitor_mode: str = setting("min", "str", choices=["min", "max"])
    seed: int = setting(0, "int")
    device: str = setting("auto", "str", choices=["auto", "cpu", "cuda", "mps"])
    amp: bool = setting(False, "bool")
    grad_clip: float | None = setting(None, "float", nullable=True)
    num_workers: int = setting(0, "int")
    # shuffle by blocks of this many MB of the store (0: every patch apart), for stores
    # read from disk; see train/data/samplers.py
    shuffle_block_mb: float = setting(0.0, "float")
    shuffle_blocks_per_draw: int = setting(8, "int")
    # steps between reading the loss back to the host (progress bar, NaN check); default
    # 1 on CPU, 20 on a GPU, whose queue a read-back would drain at every step
    sync_every: int | None = setting(None, "int", nullable=True)
    # steps between mid-epoch checkpoints (last.pt with where the epoch is): a run killed in
    # mid-epoch resumes at the last one (--resume) to the weights of an uninterrupted run
    checkpoint_every: int | None = setting(None, "int", nullable=True)
    margin: float = setting(0.3, "float")
    mining: str = setting("semihard", "str", choices=["random", "semihard", "hard"])
    works_per_batch: int = setting(8, "int")
    # work identification with a classification head (a model ending in BNNeck): the weight of
    # cross entropy over the training works (0: the metric loss alone), its label smoothing,
    # and the weight of the triplet loss beside it (0: the classification loss alone)
    classify: float = setting(0.0, "float")
    label_smoothing: float = setting(0.1, "float")
    triplet: float = setting(1.0, "float")
    # work identification: each file embedded whole in one pass (a model that pools over all
    # time), instead of the mean of its patches' embeddings
    embed_whole: bool = setting(False, "bool")
    # augmentation of training batches, on the device (see train/augment.py)
    augment: list[dict] = setting([], "list", item="dict")
    versions_per_work: int = setting(2, "int")


@dataclass(kw_only=True)
class Experiment:
    name: str | None = setting(None, "str", nullable=True)
    dataset: DatasetSettings = section(DatasetSettings)
    feature: dict = setting(kind="dict")
    feature_file: str | None = setting(None, "str", nullable=True)
    target: TargetSettings = section(TargetSettings)
    patch: PatchSettings = section(PatchSettings)
    model: dict = setting(kind="dict")
    model_file: str | None = setting(None, "str", nullable=True)
    train: TrainSettings = section(TrainSettings)
    source: str | None = None  # the file it was loaded from (not a setting)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as saved in a run folder's ``config.yaml`` and its checkpoints."""
        return dataclasses.asdict(self)

    def replace(self, **sections: dict[str, Any]) -> Experiment:
        """A copy with some settings of some sections changed, e.g. ``replace(target={"task":
        "work"})``."""
        out = dataclasses.replace(self)
        for name, values in sections.items():
            setattr(out, name, dataclasses.replace(getattr(self, name), **values))
        return out


SCHEMA = schema_of(Experiment)


def load_experiment(
    path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()
) -> Experiment:
    """Load, inline, override and check an experiment; dataset paths made absolute."""
    path = Path(path)
    file, stands_for = find_config(path)
    raw = load_config(file, overrides, references=("feature", "model"))
    try:
        cfg = from_dict(Experiment, validate(raw, SCHEMA, path))
    except ConfigError as e:  # a key or value given with --set is said to be from --set
        given = {".".join(parse_override(o)[0]) for o in overrides}
        if e.key is not None and any(e.key == k or e.key.startswith(k + ".") for k in given):
            raise ConfigError("--set", e.key, e.reason) from None
        raise
    base = stands_for.resolve().parent
    d = cfg.dataset
    for key in ("pyjama", "audio_root", "stores"):
        v = getattr(d, key)
        if v is not None and not Path(v).is_absolute() and not is_url(v):
            setattr(d, key, str((base / v).resolve()))
    try:
        make_feature(cfg.feature)
    except ConfigError as e:
        raise ConfigError(
            cfg.feature_file or path, f"feature.{e.key}" if e.key else "feature", e.reason
        ) from None
    _check(cfg, path)
    cfg.name = cfg.name or path.stem
    cfg.source = str(path)
    return cfg


def _check(cfg: Experiment, path: Path) -> None:
    """What the types alone do not say: fractions that add up, folds in range, sizes > 0."""
    d, t = cfg.dataset, cfg.train
    fr = d.split_fractions
    if len(fr) != 3 or abs(sum(fr) - 1) > 1e-6 or min(fr) < 0:
        raise ConfigError(
            path,
            "dataset.split_fractions",
            f"expected 3 non-negative numbers adding to 1, got {fr}",
        )
    if d.folds is not None or d.fold is not None:
        if d.folds is None or d.folds < 2:
            raise ConfigError(path, "dataset.folds", f"must be 2 or more, got {d.folds}")
        if d.fold is None or not 0 <= d.fold < d.folds:
            raise ConfigError(path, "dataset.fold", f"must be in 0..{d.folds - 1}, got {d.fold}")
        if d.split_key is not None:
            raise ConfigError(
                path, "dataset.folds", "dataset.split_key names each file's split; drop one"
            )
    if t.checkpoint_every is not None and t.checkpoint_every < 1:
        raise ConfigError(
            path, "train.checkpoint_every", f"must be 1 or more, got {t.checkpoint_every}"
        )
    for key in ("lr", "batch_size", "epochs"):
        if getattr(t, key) <= 0:
            raise ConfigError(path, f"train.{key}", f"must be > 0, got {getattr(t, key)}")


def reload_resolved(cfg: dict[str, Any] | Experiment) -> Experiment:
    """Check a resolved config saved in a run folder (its paths are already absolute)."""
    if isinstance(cfg, Experiment):
        return cfg
    data = {k: v for k, v in cfg.items() if k != "source"}
    out = from_dict(Experiment, validate(data, SCHEMA, cfg.get("source", "config.yaml")))
    out.source = cfg.get("source")
    return out
