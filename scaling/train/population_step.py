"""The compiled side of population training: K runs of one model shape in one vmapped train step.

Members may differ only in numbers the program reads from its inputs: the learning-rate schedule
(peak LR, warmup, total steps; they live in the optimizer state, `optim.ScheduleState`), weight
decay (kept in the optimizer state when members differ in it), the seed (init, dropout and data
order), the data budget (tokens, epochs, a task's number of training examples), the run whose
parameters a member starts from (`train.init_from`), evaluation and checkpoint settings. Everything else (model shape, batch,
sequence length, optimizer form, schedule kind, mesh) must be equal; `check_members` says which
field differs before anything compiles.

The step is `jax.vmap` of the single run's pure `make_train_step` over (state, batch) with a
leading member axis K. The divergence policy is the single run's `train.on_nonfinite`, per member:
under `stop` a member whose loss, gradient norm or new parameter norm is not finite (the step's
`nonfinite` mask) is frozen on device (its state is kept by a select) and marked dead in the
control arrays; under `skip` the step itself keeps the old state, the member's skipped steps are
counted and it is marked dead past `train.max_skipped_steps`. `rewind` needs a restore from disk
mid-step and is refused (`check_members`): train such runs alone. The host reads the control arrays
only when it fetches metrics anyway: no extra host sync per step.
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
from scaling.train import setup as setup_lib
from scaling.train import state as state_lib
from scaling.train import step as step_lib

# Config fields members of one population may differ in (a trailing '.' is a prefix).
MAY_DIFFER = ("seed", "name", "optim.lr", "optim.weight_decay", "optim.warmup_steps",
              "optim.final_lr_frac", "optim.wsd_decay_frac", "train.num_steps",
              "train.eval_every", "train.eval_at_checkpoints", "train.progress",
              "train.init_from", "data.num_tokens", "data.epochs", "data.eval_tokens",
              "data.task.num_examples", "checkpoint.")

# Why a member stopped: the train step's `nonfinite` bits (step.NONFINITE_BITS), in
# `control["failed_code_K"]`; FAILED_SKIPS marks a member stopped for too many skipped steps.
FAILED_LOSS = step_lib.NONFINITE_BITS["loss"]
FAILED_GRAD_NORM = step_lib.NONFINITE_BITS["grad_norm"]
FAILED_PARAM_NORM = step_lib.NONFINITE_BITS["param_norm"]
FAILED_SKIPS = 8


class PopulationError(ValueError):
    """Members that cannot be trained together; the message names the field and the members."""


def _may_differ(field: str) -> bool:
    return any(field == f or (f.endswith(".") and field.startswith(f)) for f in MAY_DIFFER)


def trains_alone(config: ml_collections.ConfigDict) -> str:
    """Returns why a run cannot be a population member ('' if it can). Members share one model
    (with the same LoRA adapters, if any) and one optimizer form, and may start from another
    run's parameters (`train.init_from`, loaded over their initialization); a run that distills
    from a teacher or rewinds to a checkpoint mid-run trains alone."""
    if config.train.on_nonfinite == "rewind":
        return "config.train.on_nonfinite='rewind' (it restores a checkpoint mid-training)"
    if config.distill.teacher:
        return f"config.distill.teacher={config.distill.teacher!r} (a teacher's forward pass per step)"
    return ""


def check_members(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raises PopulationError naming the first field (not in MAY_DIFFER) where members differ."""
    if not configs:
        raise PopulationError("a population needs at least one member")
    for i, c in enumerate(configs):
        if c.train.on_nonfinite == "rewind":
            raise PopulationError(
                f"member {i} has config.train.on_nonfinite='rewind', which restores a checkpoint "
                "mid-training and cannot run inside a population; use 'stop' or 'skip', or train "
                "the run alone (resources.population=1)")
    flat = [config_lib.flatten_fields(c.to_dict()) for c in configs]
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
    flat = config_lib.flatten_fields(config.to_dict())
    shared = {k: v for k, v in flat.items() if not _may_differ(k)}
    blob = json.dumps(shared, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
    param_init: Any  # rng -> (params, state rng): one compiled program for every member

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
    model = setup_lib.run_model(first)  # LoRA members: the adapters on the frozen base
    with sharding_lib.logical_context(mesh, rules):
        boxed = state_lib.abstract_params(model, first)
    in_state = needs_decay_in_state(configs)
    txs = tuple(optim.make_optimizer(c, boxed, decay_in_state=in_state)[0] for c in configs)
    abstract_state, shardings = state_lib.state_shardings(model, txs[0], first, mesh)
    stacked = jax.tree.map(stacked_sharding, shardings)
    param_init = state_lib.make_param_init(model, first, mesh, shardings)
    return Population(tuple(configs), mesh, rules, model, txs, abstract_state, shardings, stacked,
                      param_init)


def init_member(pop: Population, i: int) -> state_lib.TrainState:
    """Returns member i's freshly initialized TrainState (seeded by its own config.seed)."""
    return state_lib.init_state(pop.model, pop.txs[i], pop.configs[i], pop.mesh, pop.shardings,
                                pop.param_init)


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


def member_params(state_K: Any, i: int) -> Any:
    """Returns member i's parameters from a stacked state (without slicing its optimizer state)."""
    return _index_jit(state_K.params, jnp.asarray(i, jnp.int32))


def initial_control(num_steps: Sequence[int], mesh: Mesh | None = None,
                    skipped: Sequence[int] | None = None) -> dict[str, jax.Array]:
    """Returns the on-device control arrays: last steps, alive flags, skip counts, failure record;
    replicated over `mesh` when given, as the population step returns them (an uncommitted
    first control would be another input type and compile the step a second time)."""
    k = len(num_steps)
    control = {"end_K": np.asarray(num_steps, np.int32), "alive_K": np.ones((k,), bool),
               "skipped_K": np.asarray(skipped if skipped is not None else [0] * k, np.int32),
               "failed_at_K": np.zeros((k,), np.int32),
               "failed_code_K": np.zeros((k,), np.int32)}
    if mesh is None:
        return {name: jnp.asarray(x) for name, x in control.items()}
    return jax.device_put(control, sharding_lib.replicated(mesh))


def make_population_step(model: Any, tx: Any, config: ml_collections.ConfigDict) -> Callable:
    """Returns step(state_K, batch_K, control) -> (state_K, metrics_K, control); jit it outside.

    A member updates only while alive and before its own last step. Under `stop` an update whose
    `nonfinite` mask is set is dropped and the member marked dead with the step and the reason
    bits; under `skip` the (already state-preserving) step is counted, and the member is marked
    dead (FAILED_SKIPS) once its count exceeds `train.max_skipped_steps`.
    """
    single = jax.vmap(step_lib.make_train_step(model, tx, config))
    skip = config.train.on_nonfinite == "skip"
    max_skipped = int(config.train.max_skipped_steps)

    def step(state_K: Any, batch_K: dict, control: dict) -> tuple[Any, dict, dict]:
        new_K, metrics_K = single(state_K, batch_K)
        code_K = metrics_K["nonfinite"]
        running_K = control["alive_K"] & (state_K.step < control["end_K"])
        bad_K = running_K & (code_K != 0)
        skipped_K = control["skipped_K"] + bad_K.astype(jnp.int32)
        if skip:  # the step kept the old params; only too many skips stop a member
            keep_K = running_K
            newly_dead_K = running_K & (skipped_K > max_skipped)
            dead_code_K = jnp.full_like(code_K, FAILED_SKIPS) | code_K
        else:
            keep_K = running_K & (code_K == 0)
            newly_dead_K = bad_K
            dead_code_K = code_K
        state_K = jax.tree.map(
            lambda n, o: jnp.where(keep_K.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
            new_K, state_K)
        control = dict(
            control, alive_K=control["alive_K"] & ~newly_dead_K, skipped_K=skipped_K,
            failed_at_K=jnp.where(newly_dead_K, state_K.step + (0 if skip else 1),
                                  control["failed_at_K"]),
            failed_code_K=jnp.where(newly_dead_K, dead_code_K, control["failed_code_K"]))
        return state_K, metrics_K, control

    return step


def jit_population_step(pop: Population, example_batch_K: dict[str, np.ndarray]) -> Callable:
    """Returns the jitted population step taking numpy batches [K, ...]; the state is donated.

    Compiled ahead of time on the first call, inside the logical-axis context, as the single
    run's step is; later calls go straight to the compiled program, which places the numpy
    batch itself (`sharding.step_batch`). The control arrays are not donated (a few bytes): the loop
    may still read one step's control after it has dispatched the next."""
    batch_shardings = {
        k: stacked_sharding(sharding_lib.batch_sharding(pop.mesh, pop.rules, np.ndim(v) - 1))
        for k, v in example_batch_K.items()}
    replicated = sharding_lib.replicated(pop.mesh)
    fn = make_population_step(pop.model, pop.txs[0], pop.configs[0])
    jitted = jax.jit(fn, in_shardings=(pop.stacked_shardings, batch_shardings, replicated),
                     out_shardings=(pop.stacked_shardings, replicated, replicated),
                     donate_argnums=(0,))
    compiled: list[Any] = []

    def run(state_K: Any, batch_np_K: dict[str, np.ndarray], control: dict) -> tuple:
        batch = sharding_lib.step_batch(batch_np_K, batch_shardings)
        if not compiled:
            with sharding_lib.logical_context(pop.mesh, pop.rules):
                compiled.append(jitted.lower(state_K, batch, control).compile())
        return compiled[0](state_K, batch, control)

    return run


def describe_failure(code: int, max_skipped: int = 0) -> str:
    """Returns why a member stopped, e.g. 'loss and grad_norm not finite'."""
    names = " and ".join(step_lib.nonfinite_names(code & ~FAILED_SKIPS)) or "nothing"
    if code & FAILED_SKIPS:
        return f"more than {max_skipped} skipped steps (last: {names} not finite)"
    return f"{names} not finite"
