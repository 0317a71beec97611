"""Sweeps: declare a grid of runs (sizes, data or IsoFLOP budgets, any config axes), run it.

    spec      sweep declarations -> validated runs (ids, names, N, D, C); `default_sweep()`
    runner    run directories, the manifest, the local backend and the scheduler (`run_sweep`)
    ray_backend   the same runs as Ray tasks on a cluster
    worker    `python -m scaling.sweeps.worker RUN_DIR`: trains one prepared run
    manifest  manifest.json and per-run status files (atomic writes)
    cache     the shared JAX persistent compilation cache
"""

from scaling.sweeps.runner import run_sweep
from scaling.sweeps.spec import Run, SweepError, default_sweep, expand, load_sweep

__all__ = ["Run", "SweepError", "default_sweep", "expand", "load_sweep", "run_sweep"]
