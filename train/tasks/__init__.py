"""Tasks by name, as timm registers models: each task is one class in one file of this folder.

| task        | target kind      | loss                         | metrics                                           |
| ----------- | ---------------- | ---------------------------- | ------------------------------------------------- |
| multiclass  | class            | cross-entropy                | accuracy, macro recall, confusion; file level too |
| multilabel  | multilabel       | BCE with logits              | ROC-AUC and PR-AUC, macro                          |
| multipitch  | frame_pitch      | BCE per bin and frame        | mir_eval.multipitch P/R/Acc, threshold from valid  |
| work        | work             | triplet, online mining       | MAP, MRR, P@1, P@10, mean rank on file embeddings  |

A new task: a subclass of :class:`~train.tasks.base.Task` decorated with :func:`register`, in a
module imported below.
"""

from __future__ import annotations

from common.config import ConfigError, close_names
from common.targets import TargetSpec

from .base import Task

TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def task_for(name: str | None, spec: TargetSpec, cfg: dict, file=None) -> Task:
    """The task ``name`` (``target.task``), or the one that trains on ``spec``'s kind."""
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


from . import multiclass, multilabel, multipitch, work  # noqa: E402, F401 - they register

__all__ = ["TASKS", "Task", "register", "task_for"]
