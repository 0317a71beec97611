"""Multilayer perceptron for vector tasks: x [B, input_dim] -> logits [B, num_classes].

``mlp_depth`` hidden layers of ``mlp_width`` units (``model.mlp_activation``: gelu | relu, gelu when
the field is absent), each ``act(x @ kernel + bias)``, then a linear ``readout``. Dropout
(``model.resid_dropout``) follows every hidden activation. Parameters::

  dense_0/kernel  [input_dim, W]  (input, hidden)     dense_0/bias  [W]  (hidden,)
  dense_i/kernel  [W, W]          (input, hidden)     dense_i/bias  [W]  (hidden,)   i >= 1
  readout/kernel  [W, C]          (hidden, classes)   readout/bias  [C]  (classes,)

('input' names the fan-in axis of every hidden layer: a logical name may appear only once per
array.) Kernels start N(0, 1/fan_in) (LeCun normal; ``model.init_std`` is a Transformer setting),
biases at zero, in both parameterizations; muP adds the readout multiplier (applied to the
readout's input, so not to its bias) and the LR multipliers of `scaling.models.mup`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from scaling.models import mup
from scaling.models.common import constrain, dtype_of, param

ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu}


class Dense(nn.Module):
    """Affine layer x @ kernel + bias with logically named axes."""

    cfg: ml_collections.ConfigDict
    features: int
    names: tuple[str, str]
    init_std: float

    @nn.compact
    def __call__(self, x_BI: jax.Array) -> jax.Array:
        """Returns x @ kernel + bias, shape [B, features], in the compute dtype."""
        dtype, pdtype = dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        kernel_IO = param(self, "kernel", nn.initializers.normal(self.init_std),
                          (x_BI.shape[-1], self.features), self.names, pdtype, dtype)
        bias_O = param(self, "bias", nn.initializers.zeros, (self.features,), self.names[1:],
                       pdtype, dtype)
        return jnp.einsum("BI,IO->BO", x_BI, kernel_IO) + bias_O


class MLP(nn.Module):
    """Fully connected classifier: x [B, input_dim] -> logits [B, num_classes] (float32)."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x_BD: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Returns float32 class logits [B, C]; dropout draws from the 'dropout' stream."""
        cfg = self.cfg
        if cfg.input_dim <= 0 or cfg.num_classes <= 0:
            raise ValueError(f"model.input_dim={cfg.input_dim}, model.num_classes="
                             f"{cfg.num_classes}: must be resolved (> 0)")
        if x_BD.shape[-1] != cfg.input_dim:
            raise ValueError(f"input has {x_BD.shape[-1]} features, model.input_dim="
                             f"{cfg.input_dim}")
        act = ACTIVATIONS[cfg.get("mlp_activation", "gelu")]
        h_BW = constrain(x_BD.astype(dtype_of(cfg.dtype)), ("act_batch", None))
        fan_in = cfg.input_dim
        for i in range(cfg.mlp_depth):
            h_BW = Dense(cfg, cfg.mlp_width, ("input", "hidden"), 1.0 / math.sqrt(fan_in),
                         name=f"dense_{i}")(h_BW)
            h_BW = constrain(act(h_BW), ("act_batch", "act_mlp"))
            h_BW = nn.Dropout(cfg.resid_dropout)(h_BW, deterministic=deterministic)
            fan_in = cfg.mlp_width
        self.sow("intermediates", "final_hidden", h_BW)
        # muP readout multiplier on the readout's input (as in the reference muP code), so that
        # it scales the kernel's contribution but not the bias.
        h_BW = h_BW * jnp.asarray(mup.output_multiplier(cfg), h_BW.dtype)
        logits_BC = Dense(cfg, cfg.num_classes, ("hidden", "classes"), 1.0 / math.sqrt(fan_in),
                          name="readout")(h_BW).astype(jnp.float32)
        return constrain(logits_BC, ("act_batch", None))
