"""An experiment YAML: dataset + feature + target + model + optimisation, checked key by key.

Paths in ``dataset`` are relative to the experiment file; ``feature`` and ``model`` may be
paths to YAML files (relative to the experiment file) or inline mappings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from common.config import ConfigError, Field, load_config, validate
from common.features import make_feature

from .tasks import TASKS

SCHEMA = {
    "name": Field("str", None, nullable=True),
    "dataset": {
        "pyjama": Field("path"),
        "audio_root": Field("path", None, nullable=True),
        "stores": Field("path", "stores"),
        "split_seed": Field("int", 0),
        "split_fractions": Field("list", [0.8, 0.1, 0.1], item="number"),
        "split_key": Field("str", None, nullable=True),
        # K-fold cross-validation: fold ``fold`` of ``folds`` is the test split (by work, or
        # by file where there are no works); ``train run --folds K`` runs every fold
        "folds": Field("int", None, nullable=True),
        "fold": Field("int", None, nullable=True),
    },
    "feature": Field("dict"),
    "feature_file": Field("str", None, nullable=True),
    "target": {
        "name": Field("str"),
        "task": Field("str", None, nullable=True, choices=[*TASKS, None]),
        "pitch_unit": Field(
            "str",
            None,
            nullable=True,
            choices=["midi", "hz", None],
            help="the unit the store must have read the target's pitches in",
        ),
    },
    "patch": {
        "frames": Field("int", None, nullable=True),
        "hop": Field("int", None, nullable=True),
    },
    "model": Field("dict"),
    "model_file": Field("str", None, nullable=True),
    "train": {
        "optimizer": Field("str", "adam", choices=["adam", "adamw", "sgd"]),
        "lr": Field("float", 1e-3),
        "weight_decay": Field("float", 0.0),
        "momentum": Field("float", 0.9),
        "schedule": Field("str", "none", choices=["none", "cosine", "step"]),
        "step_size": Field("int", 10),
        "gamma": Field("float", 0.5),
        "batch_size": Field("int", 64),
        "eval_batch_size": Field("int", 256),
        "epochs": Field("int", 20),
        "max_steps": Field("int", None, nullable=True),
        "samples_per_epoch": Field("int", None, nullable=True),
        "patience": Field("int", 5),
        "monitor": Field("str", "valid_loss"),
        "monitor_mode": Field("str", "min", choices=["min", "max"]),
        "seed": Field("int", 0),
        "device": Field("str", "auto", choices=["auto", "cpu", "cuda", "mps"]),
        "amp": Field("bool", False),
        "grad_clip": Field("float", None, nullable=True),
        "num_workers": Field("int", 0),
        # shuffle by blocks of this many MB of the store (0: every patch apart), for stores
        # read from disk; see train/samplers.py
        "shuffle_block_mb": Field("float", 0.0),
        "shuffle_blocks_per_draw": Field("int", 8),
        # steps between reading the loss back to the host (progress bar, NaN check); default
        # 1 on CPU, 20 on a GPU, whose queue a read-back would drain at every step
        "sync_every": Field("int", None, nullable=True),
        "margin": Field("float", 0.3),
        "mining": Field("str", "semihard", choices=["random", "semihard", "hard"]),
        "works_per_batch": Field("int", 8),
        # augmentation of training batches, on the device (see train/augment.py)
        "augment": Field("list", [], item="dict"),
        "versions_per_work": Field("int", 2),
    },
}


def load_experiment(
    path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Load, inline, override and check an experiment; dataset paths made absolute."""
    path = Path(path)
    raw = load_config(path, overrides, references=("feature", "model"))
    cfg = validate(raw, SCHEMA, path)
    base = path.resolve().parent
    for key in ("pyjama", "audio_root", "stores"):
        v = cfg["dataset"][key]
        if v is not None and not Path(v).is_absolute():
            cfg["dataset"][key] = str((base / v).resolve())
    try:
        make_feature(cfg["feature"])
    except ConfigError as e:
        raise ConfigError(
            cfg.get("feature_file") or path, f"feature.{e.key}" if e.key else "feature", e.reason
        ) from None
    fr = cfg["dataset"]["split_fractions"]
    if len(fr) != 3 or abs(sum(fr) - 1) > 1e-6 or min(fr) < 0:
        raise ConfigError(
            path,
            "dataset.split_fractions",
            f"expected 3 non-negative numbers adding to 1, got {fr}",
        )
    d = cfg["dataset"]
    if d["folds"] is not None or d["fold"] is not None:
        if d["folds"] is None or d["folds"] < 2:
            raise ConfigError(path, "dataset.folds", f"must be 2 or more, got {d['folds']}")
        if d["fold"] is None or not 0 <= d["fold"] < d["folds"]:
            raise ConfigError(
                path, "dataset.fold", f"must be in 0..{d['folds'] - 1}, got {d['fold']}"
            )
        if d["split_key"] is not None:
            raise ConfigError(
                path, "dataset.folds", "dataset.split_key names each file's split; drop one"
            )
    t = cfg["train"]
    for key in ("lr", "batch_size", "epochs"):
        if t[key] <= 0:
            raise ConfigError(path, f"train.{key}", f"must be > 0, got {t[key]}")
    cfg["name"] = cfg["name"] or path.stem
    cfg["source"] = str(path)
    return cfg


def reload_resolved(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check a resolved config saved in a run folder (its paths are already absolute)."""
    data = {k: v for k, v in cfg.items() if k != "source"}
    out = validate(data, SCHEMA, cfg.get("source", "config.yaml"))
    out["source"] = cfg.get("source")
    return out
