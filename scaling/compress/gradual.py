"""Gradual magnitude pruning during training, as the optimizer's last stage (config group `prune`).

`magnitude_pruning(config, abstract_params)` is an optax transformation appended to the chain of
`scaling.optim.make_optimizer`. Its state holds the step count and one keep-mask per compressible
weight (`scaling.compress.weights`), so the masks live in the train state, are saved with every
checkpoint and restored on resume. At every update it projects the new parameters onto the mask
(pruned weights stay exactly zero: the optimizer cannot regrow them). During the ramp the mask
is recomputed every `prune.every` steps from the magnitudes of the new parameters, per layer, to
the sparsity of Zhu & Gupta's (2017) cubic schedule

    s(t) = S·(1 − (1 − (t − t0)/(t1 − t0))³)   for t0 ≤ t ≤ t1,  S after t1,  0 before t0,

with S = `prune.sparsity`, t0 = `prune.start_step`, t1 = `prune.end_step` (t1 ≤ t0: one shot at
t0). With an N:M pattern the mask is set once at t0 (N largest of every M consecutive inputs).
After t1 the masks are fixed, so training on continues as fine-tuning with the mask fixed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from scaling import config as config_lib
from scaling.compress.spec import prune_spec
from scaling.compress.weights import WeightView, weight_views


class PruneState(NamedTuple):
    """The pruning stage's state: updates applied so far and the keep-masks (bool; a scalar True
    for parameters that are never pruned)."""

    count: jax.Array
    masks: Any


def target_sparsity(step: jax.Array, final: float, start: int, end: int) -> jax.Array:
    """Returns the sparsity (fraction of zeros) the cubic schedule asks for after `step` updates."""
    step = jnp.asarray(step, jnp.float32)
    if end <= start:
        return jnp.where(step >= start, final, 0.0)
    frac = jnp.clip((step - start) / (end - start), 0.0, 1.0)
    return jnp.where(step >= start, final * (1.0 - (1.0 - frac) ** 3), 0.0)


def _rank_mask(w: jax.Array, view: WeightView, sparsity: jax.Array) -> jax.Array:
    """Returns the keep-mask zeroing round(s·I·O) smallest |w| in every layer (ties by position)."""
    a_LN = jnp.abs(view.to_matrix(w)).reshape(view.layers, -1).astype(jnp.float32)
    k = jnp.round(sparsity * a_LN.shape[1]).astype(jnp.int32)
    ranks = jnp.argsort(jnp.argsort(a_LN, axis=1, stable=True), axis=1, stable=True)
    return (ranks >= k).reshape(view.shape)


def _n_m_mask(w: jax.Array, view: WeightView, n: int, m: int) -> jax.Array:
    """Returns the keep-mask keeping the n largest |w| of every m consecutive inputs."""
    b = jnp.abs(w.reshape(view.layers, view.inputs // m, m, view.outputs)).astype(jnp.float32)
    ranks = jnp.argsort(jnp.argsort(b, axis=2, stable=True), axis=2, stable=True)
    return (ranks >= m - n).reshape(view.shape)


def _path(path: tuple) -> str:
    """Returns "a/b/c" from a tree path's dict keys (box attributes such as .value are skipped)."""
    return "/".join(str(k.key) for k in path if hasattr(k, "key"))


def _get(tree: Any, path: str) -> Any:
    for key in path.split("/"):
        tree = tree[key]
    return tree


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def pruned_views(abstract_params: Any) -> dict[str, WeightView]:
    """Returns {path: WeightView} of the weights gradual pruning acts on (boxed abstract params)."""
    names = jax.tree.map(lambda x: tuple(x.names) if isinstance(x, nn.LogicallyPartitioned) else (),
                         abstract_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return weight_views(nn.meta.unbox(abstract_params), names)


def magnitude_pruning(config: ml_collections.ConfigDict, abstract_params: Any) -> optax.GradientTransformation:
    """Returns the optax stage that prunes by magnitude on `config.prune`'s schedule (see module doc)."""
    p = config.prune
    spec = prune_spec(p.sparsity if p.pattern == "unstructured" else None, p.pattern)
    n_m = spec.n_m
    start, end, every = int(p.start_step), int(p.end_step), int(p.every)
    end_eff = start if n_m else max(end, start)
    views = pruned_views(abstract_params)
    bad = [path for path, v in views.items() if n_m and v.inputs % n_m[1]]
    if bad:
        raise config_lib.ConfigError("prune.pattern", p.pattern,
                                     f"{bad[0]} has {views[bad[0]].inputs} inputs, not a multiple of "
                                     f"{n_m[1]}")

    def init_fn(params: Any) -> PruneState:
        masks: dict[str, Any] = {}
        for path in views:  # boxed leaves stay boxed, so the masks shard like their weights
            _set(masks, path, jax.tree.map(lambda x: jnp.ones(x.shape, bool), _get(params, path)))
        return PruneState(count=jnp.zeros([], jnp.int32), masks=masks)

    def update_fn(updates: Any, state: PruneState, params: Any = None) -> tuple[Any, PruneState]:
        if params is None:
            raise ValueError("magnitude pruning needs the params in tx.update(updates, state, params)")
        step = state.count + 1  # updates applied once this one is
        s = target_sparsity(step, spec.sparsity, start, end_eff)
        refresh = (step >= start) & (step <= end_eff) & (((step - start) % every == 0) | (step == end_eff))
        masks: dict[str, Any] = {}
        replaced: dict[str, jax.Array] = {}
        for path, view in views.items():
            w_old, mask = _get(params, path), _get(state.masks, path)
            w_new = (w_old + _get(updates, path)).astype(w_old.dtype)
            kept = jnp.where(mask, w_new, 0)
            if n_m:
                compute = lambda kept=kept, view=view: _n_m_mask(kept, view, *n_m)
            else:
                compute = lambda kept=kept, view=view: _rank_mask(kept, view, s)
            mask = jax.lax.cond(refresh, lambda c=compute, m=mask: c() & m, lambda m=mask: m)
            _set(masks, path, mask)
            replaced[path] = (jnp.where(mask, w_new, 0) - w_old).astype(_get(updates, path).dtype)
        new_updates = jax.tree_util.tree_map_with_path(lambda p, u: replaced.get(_path(p), u), updates)
        return new_updates, PruneState(count=optax.safe_increment(state.count), masks=masks)

    return optax.GradientTransformation(init_fn, update_fn)


def sparsity_of(params: Any, abstract_params: Any) -> dict[str, float]:
    """Returns {"sparsity": fraction of zeros in the pruned weights, "n_zeros": their count}."""
    views = pruned_views(abstract_params)
    leaves = {_path(path): v for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    total = sum(int(leaves[p].size) for p in views)
    zeros = sum(int(jnp.sum(leaves[p] == 0)) for p in views)
    return {"sparsity": zeros / max(total, 1), "n_zeros": zeros}
