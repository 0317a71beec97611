"""The compiled side of population training: K runs of one model shape in one vmapped train step.

Members may differ only in numbers the program reads from its inputs: the learning-rate schedule
(peak LR, warmup, total steps; they live in the optimizer state, `optim.ScheduleState`), weight
decay (kept in the optimizer state when members differ in it), the seed (init, dropout and data
order), the data budget, evaluation and checkpoint settings. Everything else (model shape, batch,
sequence length, optimizer form, schedule kind, mesh) must be equal; `check_members` says which
field differs before anything compiles.

The step is `jax.vmap` of the single run's pure `make_train_step` over (state, batch) with a
leading member axis K. A member whose loss, gradient norm or new parameter norm is not finite is
frozen on device (its state is kept by a select) and marked dead in the control arrays, which the
host reads only when it fetches metrics anyway: no extra host sync per step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scaling import config as config_lib
from scaling import optim
from scaling import sharding as sharding_lib
from scaling.models import make_model
from scaling.train import state as state_lib
from scaling.train import step as step_lib

# Config fields members of one population may differ in (a trailing '.' is a prefix).
MAY_DIFFER = ("seed", "name", "optim.lr", "optim.weight_decay", "optim.warmup_steps",
              "optim.final_lr_frac", "optim.wsd_decay_frac", "train.num_steps",
              "train.eval_every", "train.eval_at_checkpoints", "train.progress",
              "data.num_tokens", "data.epochs", "data.eval_tokens", "checkpoint.")

# Why a member stopped: bit flags in `Control.failed_code_K`.
FAILED_LOSS, FAILED_GRAD_NORM, FAILED_PARAM_NORM = 1, 2, 4


class PopulationError(ValueError):
    """Members that cannot be trained together; the message names the field and the members."""


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _may_differ(field: str) -> bool:
    return any(field == f or (f.endswith(".") and field.startswith(f)) for f in MAY_DIFFER)


def check_members(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raises PopulationError naming the first field (not in MAY_DIFFER) where members differ."""
    if not configs:
        raise PopulationError("a population needs at least one member")
    flat = [_flatten(c.to_dict()) for c in configs]
    for i, other in enumerate(flat[1:], start=1):
        for field in sorted(set(flat[0]) | set(other)):
            if _may_differ(field):
                continue
            a, b = flat[0].get(field, "<missing>"), other.get(field, "<missing>")
            if a != b:
                raise PopulationError(
                    f"config.{field} differs between member 0 ({a!r}) and member {i} ({b!r}); "
                    f"members of a population share one program and may differ only in "
                    f"{', '.join(MAY_DIFFER)}")


def program_key(config: ml_collections.ConfigDict) -> str:
    """Returns a hash of the fields members must share: equal keys can train as one population."""
    shared = {k: v for k, v in _flatten(config.to_dict()).items() if not _may_differ(k)}
    blob = json.dumps(shared, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def group_members(configs: Sequence[ml_collections.ConfigDict], limit: int) -> list[list[int]]:
    """Returns indices of `configs` grouped into populations of at most `limit` compatible members.

    Groups keep the configs' order; a sweep runner trains each group as one population.
    """
    if limit < 1:
        raise PopulationError(f"population limit {limit}: must be >= 1")
    by_key: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        by_key.setdefault(program_key(c), []).append(i)
    return [idx[j:j + limit] for idx in by_key.values() for j in range(0, len(idx), limit)]


def needs_decay_in_state(configs: Sequence[ml_collections.ConfigDict]) -> bool:
    """Returns True when members differ in weight decay (then it is kept in the optimizer state)."""
    return len({float(c.optim.weight_decay) for c in configs}) > 1


@dataclasses.dataclass(frozen=True)
class Population:
    """The shared compiled-side pieces of a population: mesh, model, optimizer, shardings."""

    configs: tuple
    mesh: Mesh
    rules: Any
    model: Any
    txs: tuple  # one per member: same structure, each initializes its member's numbers
    abstract_state: Any  # one member's unboxed abstract TrainState
    shardings: Any  # one member's NamedShardings
    stacked_shardings: Any  # the same with a leading, unsharded member axis

    @property
    def size(self) -> int:
        """Returns K, the number of members."""
        return len(self.configs)


def stacked_sharding(sharding: NamedSharding) -> NamedSharding:
    """Returns `sharding` with an unsharded leading member axis prepended."""
    return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))


def build(configs: Sequence[ml_collections.ConfigDict], devices: list | None = None) -> Population:
    """Returns the Population for resolved, validated, mutually compatible member configs."""
    check_members(configs)
    first = configs[0]
    mesh = sharding_lib.make_mesh(first, devices)
    rules = config_lib.logical_rules(first)
    model = make_model(first.model)
    with sharding_lib.logical_context(mesh, rules):
        boxed = state_lib.abstract_params(model, first)
    in_state = needs_decay_in_state(configs)
    txs = tuple(optim.make_optimizer(c, boxed, decay_in_state=in_state)[0] for c in configs)
    abstract_state, shardings = state_lib.state_shardings(model, txs[0], first, mesh)
    stacked = jax.tree.map(stacked_sharding, shardings)
    return Population(tuple(configs), mesh, rules, model, txs, abstract_state, shardings, stacked)


def init_member(pop: Population, i: int) -> state_lib.TrainState:
    """Returns member i's freshly initialized TrainState (seeded by its own config.seed)."""
    return state_lib.init_state(pop.model, pop.txs[i], pop.configs[i], pop.mesh, pop.shardings)


def stack_states(pop: Population, states: Sequence[Any]) -> Any:
    """Returns the members' states stacked along a leading axis K, placed for the population step."""
    # one jitted program for the whole tree: eager per-leaf stacking compiles one program per leaf
    stack = jax.jit(lambda *xs: jax.tree.map(lambda *leaves: jnp.stack(leaves), *xs),
                    out_shardings=pop.stacked_shardings)
    return stack(*states)


def _index(state_K: Any, i: jax.Array) -> Any:
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), state_K)


_index_jit = jax.jit(_index)  # one compilation per state structure, whatever the member index


def member_state(state_K: Any, i: int) -> Any:
    """Returns member i's slice of a stacked state (a single run's TrainState)."""
    return _index_jit(state_K, jnp.asarray(i, jnp.int32))


def initial_control(num_steps: Sequence[int]) -> dict[str, jax.Array]:
    """Returns the on-device control arrays: each member's last step, alive flags, failure record."""
    k = len(num_steps)
    return {"end_K": jnp.asarray(num_steps, jnp.int32), "alive_K": jnp.ones((k,), bool),
            "failed_at_K": jnp.zeros((k,), jnp.int32),
            "failed_code_K": jnp.zeros((k,), jnp.int32)}


def make_population_step(model: Any, tx: Any, config: ml_collections.ConfigDict) -> Callable:
    """Returns step(state_K, batch_K, control) -> (state_K, metrics_K, control); jit it outside.

    A member updates only while alive and before its own last step; an update whose loss, grad
    norm or resulting parameter norm is not finite is dropped and the member marked dead with the
    step and the reason (`FAILED_*` bits).
    """
    single = jax.vmap(step_lib.make_train_step(model, tx, config))

    def step(state_K: Any, batch_K: dict, control: dict) -> tuple[Any, dict, dict]:
        new_K, metrics_K = single(state_K, batch_K)
        code_K = (jnp.where(jnp.isfinite(metrics_K["loss"]), 0, FAILED_LOSS)
                  | jnp.where(jnp.isfinite(metrics_K["grad_norm"]), 0, FAILED_GRAD_NORM)
                  | jnp.where(jnp.isfinite(metrics_K["param_norm"]), 0, FAILED_PARAM_NORM))
        running_K = control["alive_K"] & (state_K.step < control["end_K"])
        keep_K = running_K & (code_K == 0)
        state_K = jax.tree.map(
            lambda n, o: jnp.where(keep_K.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
            new_K, state_K)
        newly_dead_K = running_K & (code_K != 0)
        control = dict(
            control, alive_K=control["alive_K"] & ~newly_dead_K,
            failed_at_K=jnp.where(newly_dead_K, state_K.step + 1, control["failed_at_K"]),
            failed_code_K=jnp.where(newly_dead_K, code_K, control["failed_code_K"]))
        return state_K, metrics_K, control

    return step


def jit_population_step(pop: Population, example_batch_K: dict[str, np.ndarray]) -> Callable:
    """Returns the jitted population step taking numpy batches [K, ...]; state and control donated."""
    batch_shardings = {
        k: stacked_sharding(sharding_lib.batch_sharding(pop.mesh, pop.rules, np.ndim(v) - 1))
        for k, v in example_batch_K.items()}
    replicated = sharding_lib.replicated(pop.mesh)
    fn = make_population_step(pop.model, pop.txs[0], pop.configs[0])
    jitted = jax.jit(fn, in_shardings=(pop.stacked_shardings, batch_shardings, replicated),
                     out_shardings=(pop.stacked_shardings, replicated, replicated),
                     donate_argnums=(0, 2))

    def run(state_K: Any, batch_np_K: dict[str, np.ndarray], control: dict) -> tuple:
        batch = {}
        for key, value in batch_np_K.items():
            if jax.process_count() == 1:
                batch[key] = jax.device_put(value, batch_shardings[key])
            else:
                batch[key] = jax.make_array_from_process_local_data(batch_shardings[key], value)
        with sharding_lib.logical_context(pop.mesh, pop.rules):
            return jitted(state_K, batch, control)

    return run


def describe_failure(code: int) -> str:
    """Returns the quantities named by a `FAILED_*` bit set, e.g. 'loss and grad_norm'."""
    names = [n for bit, n in ((FAILED_LOSS, "loss"), (FAILED_GRAD_NORM, "grad_norm"),
                              (FAILED_PARAM_NORM, "param_norm")) if code & bit]
    return " and ".join(names) or "nothing"
