"""Model families (Flax linen, logical axis names only) and their analytic accounting."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from scaling.models.accounting import describe, flops_per_example, flops_per_token, param_counts
from scaling.models.mlp import MLP
from scaling.models.mup import lr_multipliers
from scaling.models.transformer import Transformer

__all__ = ["MLP", "Transformer", "describe", "flops_per_example", "flops_per_token",
           "lr_multipliers", "make_model", "param_counts"]


def make_model(model_cfg: ml_collections.ConfigDict) -> nn.Module:
    """Returns the (unbound) flax module for `model_cfg.kind`: Transformer or MLP."""
    if model_cfg.kind == "transformer":
        return Transformer(model_cfg)
    if model_cfg.kind == "mlp":
        return MLP(model_cfg)
    raise ValueError(f"config.model.kind={model_cfg.kind!r}: must be 'transformer' or 'mlp'")
