"""Studies that run end to end: `scaling experiment <name> --root DIR [--scale ...]`.

Each module declares its sweeps, its analysis and the expected outcome (see experiments/common.py
for the interface and experiments/README.md for commands, runtimes and measured numbers).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module under experiments/, in the order `scaling experiment --list` shows them
NAMES = ("quickstart", "sparse_parity", "grokking", "regularization", "augmentation", "transfer",
         "compression")


def get(name: str) -> ModuleType:
    """Returns the experiment module `name`; raises KeyError (listing the known names) otherwise."""
    if name not in NAMES:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"experiments.{name}")


def all_experiments() -> list[ModuleType]:
    """Returns every experiment module, in listing order."""
    return [get(n) for n in NAMES]
