"""Optimizers and learning-rate schedules, built from optax parts.

`make_optimizer(config, abstract_params)` returns the optax chain
    clip_by_global_norm -> preconditioner (AdamW | Adafactor | Lion | SGD)
    -> decoupled weight decay (masked) -> per-parameter LR multipliers (muP) -> learning rate.
Weight decay is applied only to matrices (parameters whose logical axes, not counting 'layers',
have rank >= 2); embeddings are excluded unless `optim.decay_embeddings`. The mask is derived from
the logical axis names the model declares, so it is right with and without layer scanning.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from scaling import config as config_lib

Schedule = Callable[[jax.Array], jax.Array]


def make_schedule(config: ml_collections.ConfigDict) -> Schedule:
    """Returns the learning-rate schedule: step -> LR (warmup then cosine|linear|constant|WSD)."""
    o = config.optim
    total = config_lib.train_steps(config)
    warmup = min(o.warmup_steps, max(total - 1, 0))
    peak, final = o.lr, o.lr * o.final_lr_frac
    if o.schedule == "constant":
        body = optax.constant_schedule(peak)
    elif o.schedule == "cosine":
        body = optax.cosine_decay_schedule(peak, max(total - warmup, 1), alpha=o.final_lr_frac)
    elif o.schedule == "linear":
        body = optax.linear_schedule(peak, final, max(total - warmup, 1))
    elif o.schedule == "wsd":
        body = _wsd_body(peak, final, total - warmup, o.wsd_decay_frac, o.wsd_decay_shape)
    else:
        raise config_lib.ConfigError("optim.schedule", o.schedule, "unknown schedule")
    if warmup == 0:
        return body
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), body], [warmup])


def _wsd_body(peak: float, final: float, steps: int, decay_frac: float, shape: str) -> Schedule:
    """Returns the stable-then-decay part of a warmup-stable-decay schedule."""
    decay_steps = max(1, round(steps * decay_frac))
    stable_steps = max(steps - decay_steps, 0)
    if shape == "linear":
        decay = optax.linear_schedule(peak, final, decay_steps)
    elif shape == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=final / peak if peak else 0.0)
    else:  # sqrt cooldown (Hägele et al. 2024): lr = final + (peak - final) * (1 - sqrt(t/T))

        def decay(count: jax.Array) -> jax.Array:
            frac = jnp.clip(count / decay_steps, 0.0, 1.0)
            return final + (peak - final) * (1.0 - jnp.sqrt(frac))

    return optax.join_schedules([optax.constant_schedule(peak), decay], [stable_steps])


def _matrix_like(names: tuple | None) -> bool:
    if names is None:
        return False
    return len([n for n in names if n not in ("layers", None)]) >= 2


def _is_embedding(path: tuple) -> bool:
    """True for token/position embedding tables (not the untied output projection)."""
    names = [str(getattr(k, "key", k)).lower() for k in path]
    return any("embed" in n and not n.startswith("unembed") for n in names)


def _logical_names(abstract_params: Any) -> Any:
    """Returns a pytree (unboxed structure) of logical name tuples, or None for unboxed leaves."""
    return jax.tree.map(
        lambda x: tuple(x.names) if isinstance(x, nn.LogicallyPartitioned) else None,
        abstract_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def weight_decay_mask(config: ml_collections.ConfigDict, abstract_params: Any) -> Any:
    """Returns a bool pytree: True where decoupled weight decay applies."""
    names = _logical_names(abstract_params)
    return jax.tree_util.tree_map_with_path(
        lambda path, n: _matrix_like(n) and (config.optim.decay_embeddings
                                             or not _is_embedding(path)),
        names, is_leaf=lambda x: x is None or isinstance(x, tuple))


def lr_multipliers(config: ml_collections.ConfigDict, abstract_params: Any) -> Any | None:
    """Returns per-leaf LR multipliers (muP) or None for standard parameterization."""
    if config.model.parameterization != "mup":
        return None
    from scaling.models import mup  # models never import optim; the dependency points this way

    return mup.lr_multipliers(abstract_params, config.model)


def make_optimizer(config: ml_collections.ConfigDict,
                   abstract_params: Any) -> tuple[optax.GradientTransformation, Schedule]:
    """Returns (optax transformation, LR schedule) for params shaped like `abstract_params`."""
    o = config.optim
    schedule = make_schedule(config)
    parts: list[optax.GradientTransformation] = []
    if o.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    if o.name == "adamw":
        parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    elif o.name == "adafactor":
        parts.append(optax.scale_by_factored_rms(decay_rate=o.b2, epsilon=o.eps))
    elif o.name == "lion":
        parts.append(optax.scale_by_lion(b1=o.b1, b2=o.b2))
    elif o.name == "sgd":
        parts.append(optax.trace(decay=o.b1))
    else:
        raise config_lib.ConfigError("optim.name", o.name, "unknown optimizer")
    if o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay,
                                               mask=weight_decay_mask(config, abstract_params)))
    multipliers = lr_multipliers(config, abstract_params)
    if multipliers is not None:
        from scaling.models import mup

        parts.append(mup.scale_by_multipliers(multipliers))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule
