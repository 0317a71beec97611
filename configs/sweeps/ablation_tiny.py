"""Ablation of regularizers across sizes: weight decay x token-substitution augmentation.

2 sizes at 10 tokens per parameter x weight decay {0, 0.1} x token substitution {0, 0.05}
(8 runs). Axes in one dict are zipped, separate dicts are crossed; any config field can be an axis.

    scaling sweep --config configs/sweeps/ablation_tiny.py --root sweeps/ablation_tiny --workers 2
"""

import ml_collections

from configs.sweeps._tiny_base import tiny_lm_base
from scaling.sweeps.spec import default_sweep


def get_config() -> ml_collections.ConfigDict:
    """Returns the sweep: N in {50k, 100k}, D = 10 N, wd {0, 0.1}, token substitution {0, 0.05}."""
    s = default_sweep()
    s.name = "ablation_tiny"
    s.base = tiny_lm_base()
    s.sizes = [50e3, 100e3]
    s.tokens_per_param = [10.0]
    s.axes = [{"optim.weight_decay": [0.0, 0.1]},
              {"data.augment.token_substitution": [0.0, 0.05]}]
    s.resources.devices_per_process = 1
    return s
