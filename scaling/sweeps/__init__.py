"""Sweeps: declare a grid of runs (sizes, data or IsoFLOP budgets, any config axes), run it.

    spec      sweep declarations -> validated runs (ids, names, N, D, C); `default_sweep()`
    runner    run directories, the manifest, the local backend and the scheduler (`run_sweep`)
    ray_backend   the same runs as Ray tasks on a cluster
    worker    `python -m scaling.sweeps.worker RUN_DIR`: trains one prepared run
    manifest  manifest.json and per-run status files (atomic writes)
    cache     the shared JAX persistent compilation cache
"""

from __future__ import annotations

import importlib
from typing import Any

# The public names resolve on first use (PEP 562), not at package import: `python -m
# scaling.sweeps.worker` imports this package first, and an eager import of the runner (which
# imports the worker module) made runpy run the worker module a second time, with a
# RuntimeWarning at the top of every run's train.log.
_EXPORTS = {"Run": "spec", "SweepError": "spec", "default_sweep": "spec", "expand": "spec",
            "load_sweep": "spec", "run_sweep": "runner"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Returns the public name `name` from its module (imported on first use)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
