"""The tasks by name, as timm registers models: :func:`register` adds a class, :func:`task_for`
makes the one an experiment names (or the one that trains on its target's kind)."""

from __future__ import annotations

from typing import Any

from common.config import ConfigError, close_names
from common.targets import TargetSpec

from .base import Task

TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def task_for(name: str | None, spec: TargetSpec, cfg: Any, file=None) -> Task:
    """The task ``name`` (``target.task``), or the one that trains on ``spec``'s kind;
    ``cfg``: the experiment's ``train`` settings."""
    if name is None:
        found = [cls for cls in TASKS.values() if spec.kind in cls.kinds]
        if not found:
            raise ConfigError(
                file,
                "target.task",
                f"target {spec.name!r} is a {spec.kind} target; no task trains on it",
            )
        return found[0](cfg)
    if name not in TASKS:
        raise ConfigError(
            file, "target.task", f"unknown task {name!r}; {close_names(name, list(TASKS))}"
        )
    cls = TASKS[name]
    if spec.kind not in cls.kinds:
        raise ConfigError(
            file,
            "target.task",
            f"task {name!r} needs a {' or '.join(cls.kinds)} target; {spec.name!r} is {spec.kind}",
        )
    return cls(cfg)
