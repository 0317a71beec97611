"""Optimizers and learning-rate schedules, built from optax parts.

`make_optimizer(config, abstract_params)` returns the optax chain
    clip_by_global_norm -> preconditioner (AdamW | Adafactor | Lion | SGD)
    -> decoupled weight decay (masked) -> per-parameter LR multipliers (muP) -> learning rate,
whose schedule numbers live in the optimizer state (`ScheduleState`), not in the program.
Weight decay is applied only to matrices (parameters whose logical axes, not counting 'layers',
have rank >= 2); embeddings are excluded unless `optim.decay_embeddings`. The mask is derived from
the logical axis names the model declares, so it is right with and without layer scanning.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from scaling import config as config_lib

Schedule = Callable[[jax.Array], jax.Array]


class ScheduleState(NamedTuple):
    """State of the learning-rate stage: the step count and the schedule's numbers as arrays.

    Keeping the numbers (peak/final LR, warmup, total and WSD decay steps) in the optimizer state
    instead of baking them into the program makes the compiled train step the same for every run
    of a model shape, whatever its budget or peak LR: a sweep's runs share compilations through
    the persistent cache (see `benchmarks/compile_cache.py`).
    """

    count: jax.Array
    hparams: dict[str, jax.Array]


def schedule_hparams(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Returns the schedule's numbers: peak and final LR, and warmup/total/stable/decay steps."""
    o = config.optim
    total = config_lib.train_steps(config)
    warmup = min(o.warmup_steps, max(total - 1, 0))
    body = max(total - warmup, 0)
    decay = max(1, round(body * o.wsd_decay_frac))  # WSD only
    return {"peak": float(o.lr), "final": float(o.lr * o.final_lr_frac), "warmup": float(warmup),
            "body": float(max(body, 1)), "stable": float(max(body - decay, 0)),
            "decay": float(decay)}


def schedule_lr(step: jax.Array, hp: dict[str, Any], kind: str,
                wsd_shape: str = "linear") -> jax.Array:
    """Returns the LR at `step` (float32): linear warmup, then cosine|linear|constant|WSD.

    `hp` holds the numbers of `schedule_hparams` (Python floats or traced arrays); `kind` and
    `wsd_shape` choose the formula. The body counts steps after warmup; cosine and linear decay
    from peak to final over the body, WSD stays at peak for `stable` steps then decays over
    `decay` steps (linear, cosine, or the sqrt cooldown of Hägele et al. 2024).
    """
    f32 = jnp.float32
    step = jnp.asarray(step, f32)
    peak, final, warmup, body, stable, decay = (jnp.asarray(hp[k], f32) for k in
                                                ("peak", "final", "warmup", "body", "stable",
                                                 "decay"))
    t = step - warmup
    if kind == "constant":
        after = peak * jnp.ones_like(t)
    elif kind == "cosine":
        after = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(t / body, 0.0, 1.0)))
    elif kind == "linear":
        after = peak + (final - peak) * jnp.clip(t / body, 0.0, 1.0)
    elif kind == "wsd":
        frac = jnp.clip((t - stable) / decay, 0.0, 1.0)
        if wsd_shape == "linear":
            down = peak + (final - peak) * frac
        elif wsd_shape == "cosine":
            down = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        else:  # sqrt
            down = final + (peak - final) * (1.0 - jnp.sqrt(frac))
        after = jnp.where(t < stable, peak, down)
    else:
        raise config_lib.ConfigError("optim.schedule", kind, "unknown schedule")
    ramp = peak * step / jnp.maximum(warmup, 1.0)
    return jnp.where(step < warmup, ramp, after)


def make_schedule(config: ml_collections.ConfigDict) -> Schedule:
    """Returns the learning-rate schedule: step -> LR (warmup then cosine|linear|constant|WSD)."""
    hp, o = schedule_hparams(config), config.optim
    return lambda step: schedule_lr(step, hp, o.schedule, o.wsd_decay_shape)


def scale_by_schedule_state(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Returns the last stage, updates -> -LR(step)·updates, with the schedule's numbers as state."""
    hp, kind, shape = schedule_hparams(config), config.optim.schedule, config.optim.wsd_decay_shape

    def init_fn(params: Any) -> ScheduleState:
        del params
        return ScheduleState(count=jnp.zeros([], jnp.int32),
                             hparams={k: jnp.asarray(v, jnp.float32) for k, v in hp.items()})

    def update_fn(updates: Any, state: ScheduleState, params: Any = None) -> tuple[Any, ScheduleState]:
        del params
        lr = schedule_lr(state.count, state.hparams, kind, shape)
        updates = jax.tree.map(lambda u: jnp.asarray(-lr, u.dtype) * u, updates)
        return updates, ScheduleState(count=optax.safe_increment(state.count), hparams=state.hparams)

    return optax.GradientTransformation(init_fn, update_fn)


def current_lr(config: ml_collections.ConfigDict, opt_state: Any, step: jax.Array) -> jax.Array:
    """Returns the LR the optimizer applies at `step`, read from the schedule numbers in its state."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ScheduleState))
             if isinstance(x, ScheduleState)]
    if len(found) != 1:
        raise ValueError(f"expected one ScheduleState in the optimizer state, found {len(found)}")
    return schedule_lr(step, found[0].hparams, config.optim.schedule, config.optim.wsd_decay_shape)


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


def make_optimizer(config: ml_collections.ConfigDict, abstract_params: Any, *,
                   decay_in_state: bool = False) -> tuple[optax.GradientTransformation, Schedule]:
    """Returns (optax transformation, LR schedule) for params shaped like `abstract_params`.

    `decay_in_state` keeps the weight-decay rate in the optimizer state (the stage is present even
    at rate 0), so runs that differ only in weight decay share one program: populations of runs
    trained by one vmapped step (`scaling/train/population.py`). The numbers are the same.
    """
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
    if decay_in_state:
        parts.append(optax.inject_hyperparams(optax.add_decayed_weights, static_args=("mask",))(
            weight_decay=float(o.weight_decay), mask=weight_decay_mask(config, abstract_params)))
    elif o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay,
                                               mask=weight_decay_mask(config, abstract_params)))
    multipliers = lr_multipliers(config, abstract_params)
    if multipliers is not None:
        from scaling.models import mup

        parts.append(mup.scale_by_multipliers(multipliers))
    parts.append(scale_by_schedule_state(config))
    if config.prune.sparsity > 0 or config.prune.pattern != "unstructured":
        from scaling.compress.gradual import magnitude_pruning  # the masks live in the opt state

        parts.append(magnitude_pruning(config, abstract_params))
    tx = optax.chain(*parts)
    if config.finetune.lora_rank > 0:  # LoRA: only the adapters train; the base gets no update
        from scaling.models import lora

        tx = optax.multi_transform({"adapter": tx, "frozen": optax.set_to_zero()},
                                   lora.trainable_labels(abstract_params))
    return tx, schedule
