"""The train state (a pytree) and its sharded initialization from logical axis names."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from scaling import config as config_lib
from scaling import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes: step counter, params, optimizer state, RNG key."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def dummy_inputs(config: ml_collections.ConfigDict, batch: int = 1) -> jax.Array:
    """Returns a zero input batch with the model's input shape (tokens or vectors)."""
    m = config.model
    if m.kind == "mlp":
        return jnp.zeros((batch, m.input_dim), jnp.float32)
    return jnp.zeros((batch, config.data.seq_len), jnp.int32)


def _init_boxed(model: nn.Module, tx: optax.GradientTransformation | None,
                config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    """Returns a TrainState whose params/opt_state leaves are still logically boxed."""
    init_rng, state_rng = jax.random.split(rng)
    params = model.init({"params": init_rng}, dummy_inputs(config), deterministic=True)["params"]
    opt_state = tx.init(params) if tx is not None else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      rng=state_rng)


def abstract_params(model: nn.Module, config: ml_collections.ConfigDict) -> Any:
    """Returns the boxed (logically named) ShapeDtypeStruct tree of the model's params."""
    return jax.eval_shape(
        lambda r: model.init({"params": r}, dummy_inputs(config), deterministic=True)["params"],
        jax.random.PRNGKey(0))


def state_shardings(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh: Mesh) -> tuple[Any, Any]:
    """Returns (abstract unboxed TrainState, matching pytree of NamedSharding)."""
    rules = config_lib.logical_rules(config)
    with sharding_lib.logical_context(mesh, rules):
        boxed = jax.eval_shape(lambda r: _init_boxed(model, tx, config, r), jax.random.PRNGKey(0))
    specs = nn.get_partition_spec(boxed)
    shardings = sharding_lib.logical_to_shardings(specs, mesh, rules)
    return nn.meta.unbox(boxed), shardings


def make_param_init(model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh,
                    shardings: Any) -> Callable[[jax.Array], tuple[Any, jax.Array]]:
    """Returns the compiled rng -> (params, state rng) of a TrainState's initialization.

    It holds no optimizer number, so the members of a population (one model, many seeds and
    learning rates) share one program: at the quickstart's sizes this compile takes ~3 s, about
    as long as the train step's (measured: ~1 s less per extra member without a compile cache)."""
    rules = config_lib.logical_rules(config)

    def init(rng: jax.Array) -> tuple[Any, jax.Array]:
        init_rng, state_rng = jax.random.split(rng)
        params = model.init({"params": init_rng}, dummy_inputs(config), deterministic=True)
        return nn.meta.unbox(params["params"]), state_rng

    jitted = jax.jit(init, out_shardings=(shardings.params, shardings.rng))

    def run(rng: jax.Array) -> tuple[Any, jax.Array]:
        with sharding_lib.logical_context(mesh, rules):
            return jitted(rng)

    return run


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict, mesh: Mesh, shardings: Any,
               param_init: Callable[[jax.Array], tuple[Any, jax.Array]] | None = None
               ) -> TrainState:
    """Returns a freshly initialized TrainState placed with `shardings` (seeded by config.seed).

    The same values as `_init_boxed` unboxed: params and state rng from `param_init` (built
    here unless given, e.g. shared by a population), then the optimizer state of `tx`."""
    if param_init is None:
        param_init = make_param_init(model, config, mesh, shardings)
    params, state_rng = param_init(jax.random.PRNGKey(config.seed))
    with sharding_lib.logical_context(mesh, config_lib.logical_rules(config)):
        opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state, rng=state_rng)
