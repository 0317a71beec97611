"""IsoFLOP sweep of tiny byte-level LMs: 3 compute budgets x 4 model sizes (12 runs).

Model shapes come from the family rule (head_dim 16, aspect d_model/n_layers near 16, N within 10%
of each target); every run's steps are the budget divided by its FLOPs per step, rounded, so its
compute is within half a step's FLOPs of the budget. Smaller models get a higher learning rate
(table rule). About 3-5 minutes on 2 CPU cores with --workers 2.

    scaling sweep --config configs/sweeps/isoflop_tiny.py --root sweeps/isoflop_tiny --dry-run
"""

import ml_collections

from configs.sweeps._tiny_base import tiny_lm_base
from scaling.sweeps.spec import default_sweep


def get_config() -> ml_collections.ConfigDict:
    """Returns the sweep: sizes 25k-200k non-embedding params, budgets 3e10, 1e11, 3e11 FLOPs."""
    s = default_sweep()
    s.name = "isoflop_tiny"
    s.base = tiny_lm_base()
    s.family.head_dim = 16
    s.family.aspect = 16.0
    s.sizes = [25e3, 50e3, 100e3, 200e3]
    s.flops = [3e10, 1e11, 3e11]
    s.min_steps = 16
    s.lr.rule = "table"
    s.lr.table = [(60e3, 5e-3), (1e12, 3e-3)]  # (max N, lr)
    s.resources.devices_per_process = 1
    return s
