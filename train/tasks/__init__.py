"""Tasks by name, as timm registers models: each task is one class in one file of this folder.

| task        | target kind      | loss                         | metrics                                           |
| ----------- | ---------------- | ---------------------------- | ------------------------------------------------- |
| multiclass  | class            | cross-entropy                | accuracy, macro recall, confusion; file level too |
| multilabel  | multilabel       | BCE with logits              | ROC-AUC and PR-AUC, macro                          |
| multipitch  | frame_pitch      | BCE per bin and frame        | mir_eval.multipitch P/R/Acc, threshold from valid  |
| work        | work             | triplet, online mining       | MAP, MRR, P@1, P@10, mean rank on file embeddings  |

A new task: a subclass of :class:`~train.tasks.base.Task` decorated with
:func:`~train.tasks.registry.register`, in a module imported below.
"""

from __future__ import annotations

from . import multiclass, multilabel, multipitch, work  # noqa: F401 - they register
from .base import Example, Task
from .registry import TASKS, register, task_for

__all__ = ["TASKS", "Example", "Task", "register", "task_for"]
