"""Model size x data size grid of tiny byte-level LMs: 4 sizes x 3 token budgets (12 runs).

The classic grid for fitting L(N, D) (Kaplan et al. 2020; Hoffmann et al. 2022 approach 3): each
size is trained on 64k, 256k and 1M tokens (rounded to whole steps of 16 x 64 tokens).

    scaling sweep --config configs/sweeps/size_data_tiny.py --root sweeps/size_data_tiny --workers 2
"""

import ml_collections

from configs.sweeps._tiny_base import tiny_lm_base
from scaling.sweeps.spec import default_sweep


def get_config() -> ml_collections.ConfigDict:
    """Returns the sweep: sizes 25k-200k non-embedding params, D in {64k, 256k, 1M} tokens."""
    s = default_sweep()
    s.name = "size_data_tiny"
    s.base = tiny_lm_base()
    s.sizes = [25e3, 50e3, 100e3, 200e3]
    s.tokens = [65_536, 262_144, 1_048_576]
    s.lr.rule = "power"  # lr = 3e-3 * (N / 100k) ** -0.25
    s.lr.ref_n = 100e3
    s.lr.ref_value = 3e-3
    s.lr.exponent = -0.25
    s.resources.devices_per_process = 1
    return s
