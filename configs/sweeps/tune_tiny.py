"""Learning-rate tuning of tiny byte-level LMs at the quickstart's sizes (3.4k-50k parameters).

Per size, 5 peak LRs spaced by sqrt(2) around the quickstart's LR rule (5e-3 below 60k
parameters), each trained on 256k tokens (256 steps of 16 x 64 tokens) with the final validation
loss as the judge. A size whose optimum is at an edge of its grid gets up to 3 more LRs beyond it;
then LR*(N) = c * N^e is fitted (bootstrap CIs) and written to ROOT/tuned.json:

    scaling sweep --config configs/sweeps/tune_tiny.py --root sweeps/tune_tiny --workers 2
    scaling sweep --config configs/sweeps/isoflop_tiny.py --root sweeps/isoflop_tuned \\
        --config.lr.rule=tuned --config.lr.tuned_file=sweeps/tune_tiny/tuned.json
"""

import ml_collections

from configs.sweeps._tiny_base import tiny_lm_base
from scaling.sweeps.spec import default_sweep


def get_config() -> ml_collections.ConfigDict:
    """Returns the sweep: 5 sizes x 5 LRs (up to 3 more per size at an edge), 256k tokens each."""
    s = default_sweep()
    s.name = "tune_tiny"
    s.base = tiny_lm_base()
    s.family.head_dim = 16  # the quickstart's family: its sizes get the same shapes and N
    s.family.aspect = 16.0
    s.sizes = [3.4e3, 6.7e3, 12.5e3, 25e3, 50e3]
    s.tokens = [262_144]
    s.lr.rule = "table"  # the grid's centre: the quickstart's rule
    s.lr.table = [(60e3, 5e-3), (1e12, 3e-3)]
    s.tune.enabled = True
    s.tune.lr_points = 5
    s.tune.max_extend = 3
    s.resources.devices_per_process = 1
    return s
