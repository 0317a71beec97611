"""Pure train and eval steps: `train_step(state, batch) -> (state, metrics)`. No I/O here.

Loss is token cross-entropy in nats/token, averaged over the tokens with weight > 0, with optional
label smoothing and z-loss (PaLM: z_loss * log(Z)^2). A batch that carries `teacher_logits`
(distillation, `distill.*`) trains on (1 − mix)·data objective + mix·T²·KL(teacher_T ‖ student_T)
(+ the z-loss, a stabilizer, in full); `loss` stays the plain data cross-entropy, and `distill_kd`
and `distill_ce` report the two terms. With gradient accumulation the batch is split
into `train.microbatches` equal parts and per-part *sums* are accumulated, so the update equals the
full-batch update up to float summation order.

Divergence guard: every step returns `metrics["nonfinite"]`, a bit mask (int32, computed on
device, no host sync) of the quantities that are not finite: 1 loss, 2 grad norm, 4 parameter
norm after the update (`NONFINITE_BITS`). Under `train.on_nonfinite == "skip"` a step whose mask
is non-zero keeps the old params and optimizer state (only the step counter advances).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from scaling import optim
from scaling.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

# Bits of metrics["nonfinite"]: which of a step's guarded quantities are not finite.
NONFINITE_BITS: dict[str, int] = {"loss": 1, "grad_norm": 2, "param_norm": 4}


def nonfinite_names(mask: int) -> list[str]:
    """Returns the names of the quantities set in a `nonfinite` bit mask (e.g. ['loss'])."""
    return [name for name, bit in NONFINITE_BITS.items() if int(mask) & bit]


def nonfinite_mask(values: dict[str, jax.Array]) -> jax.Array:
    """Returns the int32 bit mask (see NONFINITE_BITS) of the non-finite scalars in `values`."""
    mask = jnp.zeros((), jnp.int32)
    for name, bit in NONFINITE_BITS.items():
        mask = mask | jnp.where(jnp.isfinite(values[name]), 0, bit).astype(jnp.int32)
    return mask


def argmax_hits(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """Returns float32 [B, T]: 1 where `targets` is the argmax of `logits` over the last axis, else 0.

    Equal to `jnp.argmax(logits, -1) == targets` for finite logits, ties going to the first index
    as argmax's do: the target wins if no logit beats it and no equal logit comes before it.
    Written out because argmax is a variadic (value, index) reduce that XLA:CPU runs as a scalar
    loop: 0.68 ms of the 3.4 ms train step of the quickstart's smallest model (1,024 tokens x 320
    logits), where these comparisons and one boolean reduce take ~0.1 ms.
    """
    v_BTV = jax.lax.broadcasted_iota(jnp.int32, logits_BTV.shape, logits_BTV.ndim - 1)
    t_BT1 = targets_BT[..., None]
    target_BT1 = jnp.take_along_axis(logits_BTV, t_BT1, axis=-1)
    beaten_BTV = (logits_BTV > target_BT1) | ((logits_BTV == target_BT1) & (v_BTV < t_BT1))
    return (~jnp.any(beaten_BTV, axis=-1)).astype(jnp.float32)


def cross_entropy_sums(logits_BTV: jax.Array, targets_BT: jax.Array, weights_BT: jax.Array,
                       label_smoothing: float = 0.0, z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Returns weighted sums: 'loss' (objective, nats), 'nll' (plain CE, nats), 'z', 'weight', 'correct'."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    nll_BT = optax.losses.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
    # log Z for the z-loss and smoothing; XLA shares this logsumexp with the one inside optax's CE
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    objective_BT = nll_BT
    if label_smoothing > 0:  # cross-entropy against the uniform distribution: -mean_v log p_v
        smooth_BT = log_z_BT - jnp.mean(logits_BTV, axis=-1)
        objective_BT = (1.0 - label_smoothing) * nll_BT + label_smoothing * smooth_BT
    z_BT = jnp.square(log_z_BT)
    if z_loss > 0:
        objective_BT = objective_BT + z_loss * z_BT
    correct_BT = argmax_hits(logits_BTV, targets_BT)
    return {
        "loss": jnp.sum(objective_BT * weights_BT),
        "nll": jnp.sum(nll_BT * weights_BT),
        "z": jnp.sum(z_BT * weights_BT),
        "weight": jnp.sum(weights_BT),
        "correct": jnp.sum(correct_BT * weights_BT),
    }


def _apply(model: nn.Module, params: Any, inputs: jax.Array, rng: jax.Array | None) -> jax.Array:
    if rng is None:
        return model.apply({"params": params}, inputs, deterministic=True)
    return model.apply({"params": params}, inputs, deterministic=False, rngs={"dropout": rng})


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Returns the pure train step (state, batch) -> (new state, metrics); jit it outside.

    The program depends on the model shape and the optimizer's form, not on the run's length or
    peak LR (those are read from the optimizer state), so runs of one shape share compilations.
    """
    t = config.train
    n_micro = t.microbatches
    skip_nonfinite = t.on_nonfinite == "skip"
    use_dropout = any(config.model.get(k, 0.0) > 0 for k in
                      ("embed_dropout", "attn_dropout", "resid_dropout"))
    mix, temperature = float(config.distill.mix), float(config.distill.temperature)

    def sums_fn(params: Any, mb: Batch, rng: jax.Array | None) -> tuple[jax.Array, dict]:
        logits = _apply(model, params, mb["inputs"], rng)
        sums = cross_entropy_sums(logits, mb["targets"], mb["weights"], t.label_smoothing,
                                  t.z_loss)
        if "teacher_logits" in mb:  # distillation: the key's presence is static under jit
            from scaling.compress import distill as distill_lib

            kd_BT = distill_lib.kd_per_token(logits, mb["teacher_logits"], temperature)
            sums["kd"] = jnp.sum(kd_BT * mb["weights"])
            z_sum = t.z_loss * sums["z"] if t.z_loss > 0 else 0.0
            sums["loss"] = (1.0 - mix) * (sums["loss"] - z_sum) + mix * sums["kd"] + z_sum
        return sums["loss"], sums

    grad_fn = jax.value_and_grad(sums_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        step_rng = jax.random.fold_in(state.rng, state.step)
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        if n_micro == 1:
            rng = step_rng if use_dropout else None
            (_, sums), grads = grad_fn(state.params, batch, rng)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape((n_micro, x.shape[0] // n_micro) + x.shape[1:]), batch)

            def accumulate(carry: tuple, xs: tuple) -> tuple:
                grads_acc, sums_acc = carry
                mb, i = xs
                rng = jax.random.fold_in(step_rng, i) if use_dropout else None
                (_, s), g = grad_fn(state.params, mb, rng)
                return (jax.tree.map(jnp.add, grads_acc, g),
                        jax.tree.map(jnp.add, sums_acc, s)), None

            init_sums = {k: jnp.zeros((), jnp.float32)
                         for k in ("loss", "nll", "z", "weight", "correct")
                         + (("kd",) if "teacher_logits" in batch else ())}
            (grads, sums), _ = jax.lax.scan(accumulate, (zeros, init_sums),
                                            (micro, jnp.arange(n_micro)))
        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        loss = sums["nll"] / denom
        grad_norm = optax.tree.norm(grads)
        param_norm = optax.tree.norm(params)
        nonfinite = nonfinite_mask({"loss": loss, "grad_norm": grad_norm,
                                    "param_norm": param_norm})
        if skip_nonfinite:
            # Hand-written rather than optax.apply_if_finite: that wrapper sees only the
            # gradients and changes the optimizer state's structure (and so the checkpoints);
            # this also guards the loss and the updated parameters.
            keep_old = nonfinite != 0
            params, opt_state = jax.tree.map(
                lambda new, old: jnp.where(keep_old, old, new),
                (params, opt_state), (state.params, state.opt_state))
        metrics = {
            "loss": loss,
            "objective": sums["loss"] / denom,
            "z_loss": sums["z"] / denom,
            "token_accuracy": sums["correct"] / denom,
            "grad_norm": grad_norm,
            "update_norm": optax.tree.norm(updates),
            "param_norm": param_norm,
            "nonfinite": nonfinite,
            "lr": optim.current_lr(config, state.opt_state, state.step),
            "weight": sums["weight"],
        }
        if "kd" in sums:
            metrics.update(distill_kd=sums["kd"] / denom, distill_ce=sums["nll"] / denom)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def scale_lr(state: TrainState, factor: float) -> TrainState:
    """Returns `state` with the schedule's peak and final LR (in the optimizer state) times `factor`."""

    def scale(x: Any) -> Any:
        if not isinstance(x, optim.ScheduleState):
            return x
        hp = dict(x.hparams, peak=x.hparams["peak"] * factor, final=x.hparams["final"] * factor)
        return optim.ScheduleState(count=x.count, hparams=hp)

    opt_state = jax.tree.map(scale, state.opt_state,
                             is_leaf=lambda x: isinstance(x, optim.ScheduleState))
    return state.replace(opt_state=opt_state)


def make_eval_step(model: nn.Module) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Returns eval_step(params, batch) -> weighted sums (nats) and per-example answer stats."""

    def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        logits = _apply(model, params, batch["inputs"], None).astype(jnp.float32)
        w = batch["weights"]
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        tok_lp = jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
        correct = argmax_hits(logits, batch["targets"])
        reduce_axes = tuple(range(1, w.ndim))
        return {
            "nll_sum": -jnp.sum(tok_lp * w),
            "weight_sum": jnp.sum(w),
            "correct_sum": jnp.sum(correct * w),
            # per example: log-prob of the whole answer span, #answer tokens, all tokens right
            "example_logprob": jnp.sum(tok_lp * w, axis=reduce_axes),
            "example_tokens": jnp.sum(w, axis=reduce_axes),
            "example_correct": jnp.sum(correct * w, axis=reduce_axes),
        }

    return eval_step
