"""Capability tasks: multitask sparse parity, modular arithmetic, addition, associative recall.

`make_task(name, params)` returns a `base.Task`; `params` are the knobs of
config.data.task.params (each task module documents its keys and defaults).
"""

from __future__ import annotations

from typing import Any, Mapping

from scaling.data.tasks.addition import Addition
from scaling.data.tasks.associative_recall import AssociativeRecall
from scaling.data.tasks.base import Task
from scaling.data.tasks.modular_arithmetic import ModularArithmetic
from scaling.data.tasks.sparse_parity import SparseParity

TASKS: dict[str, type[Task]] = {
    "sparse_parity": SparseParity,
    "modular_arithmetic": ModularArithmetic,
    "addition": Addition,
    "associative_recall": AssociativeRecall,
}


def make_task(name: str, params: Mapping[str, Any] | None = None) -> Task:
    """Returns the task `name` configured with `params` (unknown names or keys raise)."""
    if name not in TASKS:
        raise ValueError(f"config.data.task.name={name!r}: unknown task; known: {sorted(TASKS)}")
    return TASKS[name](params)


__all__ = ["TASKS", "Task", "make_task", "SparseParity", "ModularArithmetic", "Addition",
           "AssociativeRecall"]
