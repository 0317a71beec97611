"""Maximal-update parameterization (muP; Yang et al. 2022, "Tensor Programs V") for both families.

The width multiplier is ``m = width / model.mup_base_width`` with ``width = model.d_model`` for the
Transformer and ``width = model.mlp_width`` for the MLP family. Every hidden dimension (heads x
head_dim, d_ff) is assumed to grow in proportion to that width. Under
``model.parameterization == "standard"`` every rule below is the identity (m is treated as 1).

Parameters fall into two classes:

* hidden matrices: both dimensions grow with width. Transformer: the attention projections
  ``q, k, v, o`` and the MLP kernels ``wi_gate, wi_up, wi, wo``. MLP family: the kernels of the
  hidden-to-hidden layers ``dense_1 .. dense_{depth-1}``.
* vector-like parameters: at most one dimension grows with width. Token and position embeddings,
  the (untied) unembedding ``unembed``, norm scales and biases, the MLP family's input layer
  ``dense_0`` and its ``readout`` kernel, and every bias.

The rules, for Adam:

=========================  =====================================  ==================
what                       standard                               muP
=========================  =====================================  ==================
hidden matrix init std     T: ``init_std``; MLP: 1/sqrt(fan_in)   T: ``init_std / sqrt(m)``;
                                                                  MLP: 1/sqrt(fan_in)
vector-like init std       T: ``init_std``; MLP: 1/sqrt(fan_in)   the same as standard
attention logit scale      ``1 / sqrt(head_dim)``                 ``sqrt(base_head_dim) / head_dim``
output logits multiplier   1                                      ``mup_output_mult / m``
Adam LR multiplier         1 for every leaf                       hidden matrices ``1 / m``,
                                                                  vector-like 1
=========================  =====================================  ==================

(T: Transformer.) ``base_head_dim`` is the head dimension at the base width. It depends on how
the size family grows the attention, which one config cannot tell: ``model.mup_base_head_dim``
when set (a sweep's size family keeps the head size fixed and grows the head count, so it sets
this to ``family.head_dim``: the scale is then ``1/sqrt(head_dim)`` at every width, as it must be
when head_dim does not grow); else ``model.head_dim`` when set explicitly (fixed head size); else
``mup_base_width // n_heads`` (the head count is fixed and head_dim grows with width). The output multiplier is the "readout"
formulation: the unembedding (tied or not) keeps a width-independent init and LR, and its
contribution to the logits is divided by ``m``; this is equivalent to Table 3's output-weight init
variance ~ 1/fan_in^2 and LR ~ 1/fan_in. With ``mup_output_mult == 1`` muP coincides exactly with
standard parameterization at ``width == mup_base_width`` (init, forward pass and LR multipliers).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import optax
from flax.core import meta

from scaling import config as config_lib

# Leaf names (last path entry) of hidden matrices in each family; see the module docstring.
_TRANSFORMER_HIDDEN = frozenset({"q", "k", "v", "o", "wi_gate", "wi_up", "wi", "wo"})
_TRANSFORMER_VECTOR = frozenset({"embedding", "pos_embedding", "unembed", "scale", "bias"})


def is_mup(model_cfg: ml_collections.ConfigDict) -> bool:
    """Returns True when the model uses the maximal-update parameterization."""
    return model_cfg.parameterization == "mup"


def width(model_cfg: ml_collections.ConfigDict) -> int:
    """Returns the width that muP scales with (d_model, or mlp_width for the MLP family), in units."""
    return model_cfg.mlp_width if model_cfg.kind == "mlp" else model_cfg.d_model


def width_mult(model_cfg: ml_collections.ConfigDict) -> float:
    """Returns m = width / mup_base_width under muP, and 1.0 under standard parameterization."""
    if not is_mup(model_cfg):
        return 1.0
    return width(model_cfg) / model_cfg.mup_base_width


def hidden_init_std(model_cfg: ml_collections.ConfigDict) -> float:
    """Returns the Transformer's hidden-matrix init std: init_std / sqrt(m) (init_std if standard)."""
    return model_cfg.init_std / math.sqrt(width_mult(model_cfg))


def attention_scale(model_cfg: ml_collections.ConfigDict) -> float:
    """Returns the factor multiplying q.k: 1/sqrt(head_dim), or sqrt(base_head_dim)/head_dim (muP)."""
    k = config_lib.head_dim(model_cfg)
    if not is_mup(model_cfg):
        return 1.0 / math.sqrt(k)
    return math.sqrt(base_head_dim(model_cfg)) / k


def base_head_dim(model_cfg: ml_collections.ConfigDict) -> int:
    """Returns the head dimension at mup_base_width (see the module docstring), in units."""
    return (model_cfg.get("mup_base_head_dim", 0) or model_cfg.head_dim
            or model_cfg.mup_base_width // model_cfg.n_heads)


def output_multiplier(model_cfg: ml_collections.ConfigDict) -> float:
    """Returns the factor on the output logits: mup_output_mult / m under muP, 1.0 if standard."""
    if not is_mup(model_cfg):
        return 1.0
    return model_cfg.mup_output_mult / width_mult(model_cfg)


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaf_is_hidden(names: tuple[str, ...], model_cfg: ml_collections.ConfigDict) -> bool:
    leaf = names[-1]
    if model_cfg.kind == "mlp":
        if leaf == "bias":
            return False
        if leaf == "kernel" and len(names) >= 2:
            layer = names[-2]
            if layer == "readout" or layer == "dense_0":
                return False
            if layer.startswith("dense_"):
                return True
        raise ValueError(f"lr_multipliers: unknown MLP parameter {'/'.join(names)}")
    if leaf in _TRANSFORMER_HIDDEN:
        return True
    if leaf in _TRANSFORMER_VECTOR:
        return False
    raise ValueError(f"lr_multipliers: unknown Transformer parameter {'/'.join(names)}")


def lr_multipliers(params: Any, model_cfg: ml_collections.ConfigDict) -> Any:
    """Returns per-leaf Adam LR multipliers (python floats, dimensionless) shaped like `params`.

    `params` may hold flax metadata boxes (``nn.LogicallyPartitioned``) or plain arrays; either
    way the result has one float where `params` has a leaf or a box, i.e. the structure of the
    unboxed params. Hidden matrices get ``1 / m``, everything else 1.0; all 1.0 when standard.
    """
    inv_m = 1.0 / width_mult(model_cfg)

    def one(path: tuple[Any, ...], _leaf: Any) -> float:
        names = tuple(_key_name(p) for p in path)
        return inv_m if _leaf_is_hidden(names, model_cfg) else 1.0

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=meta.is_axis_metadata)


def scale_by_multipliers(multipliers: Any) -> optax.GradientTransformation:
    """Returns an optax transform multiplying each update leaf by its (dimensionless) multiplier."""

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, Any]:
        del params
        return jax.tree_util.tree_map(lambda u, s: u * s, updates, multipliers), state

    return optax.GradientTransformation(init_fn, update_fn)
