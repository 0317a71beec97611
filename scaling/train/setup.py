"""Everything a run compiles, built once from a resolved config: mesh, model, optimizer, shardings.

A distilled run (`distill.teacher`) also holds its frozen teacher: `resolve_teacher` checks the
teacher run before anything compiles, `load_teacher` places its parameters on the run's mesh, and
the train step's wrapper puts the teacher's logits into each batch (`teacher_logits`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from scaling import config as config_lib
from scaling import optim
from scaling import sharding as sharding_lib
from scaling.models import lora as lora_lib
from scaling.models import make_model
from scaling.train import init_from as init_from_lib
from scaling.train import state as state_lib
from scaling.train import step as step_lib

log = logging.getLogger(__name__)

TEACHER_FIELD = "distill.teacher"


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """A checked `distill.teacher`: its checkpoint, and its run's config set to this run's
    batch, sequence length and mesh (what its forward pass runs with)."""

    source: init_from_lib.Source
    config: ml_collections.ConfigDict

    def record(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """Returns run.json's `distill` entry: teacher {run, step}, temperature, mix, and the
        teacher's non-embedding N and forward FLOPs per token (a third of its training FLOPs)."""
        from scaling.models import accounting

        numbers = accounting.run_numbers(self.config)
        return {"teacher": self.source.record(), "temperature": float(config.distill.temperature),
                "mix": float(config.distill.mix),
                "teacher_n_params_nonembed": numbers["n_params_nonembed"],
                "teacher_forward_flops_per_token": numbers["flops_per_token"] / 3.0}


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A loaded teacher: its module and frozen params with their shardings on the run's mesh."""

    spec: TeacherSpec
    model: Any
    params: Any
    shardings: Any


def recorded_teacher_step(workdir: pathlib.Path) -> int | None:
    """Returns the teacher checkpoint step the run's run.json recorded when it started (None,
    with a warning, when it holds none: the resume then takes the teacher's newest step)."""
    try:
        step = json.loads((workdir / "run.json").read_text())["distill"]["teacher"]["step"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        log.warning("%s/run.json has no readable distill.teacher.step (%s); resuming with the "
                    "teacher's newest checkpoint", workdir, err)
        return None
    return int(step)


def resolve_teacher(config: ml_collections.ConfigDict, resume_dir: pathlib.Path | None = None,
                    num_devices: int | None = None) -> TeacherSpec:
    """Returns the checked teacher of a resolved config with `distill.teacher` set (no step in
    it: the step `resume_dir`'s run.json recorded when resuming, else the newest). Raises
    ConfigError naming `distill.teacher`, before anything compiles, for a missing run or step,
    an unreadable config.json, another vocabulary, a model that cannot run on this run's
    sequence length or mesh, or a checkpoint whose parameters do not fit the teacher's config."""
    from scaling.compress import distill as distill_lib  # (scaling.compress imports training)
    from scaling.compress.spec import CompressionError

    spec = config.distill.teacher
    default_step = recorded_teacher_step(resume_dir) if resume_dir is not None else None
    source = init_from_lib.resolve(spec, TEACHER_FIELD, default_step)
    try:
        saved = config_lib.load_json(source.run_dir / "config.json")
    except config_lib.ConfigFileError as err:
        raise config_lib.ConfigError(TEACHER_FIELD, spec,
                                     f"cannot read the teacher's config: {err}") from None
    try:
        distill_lib.check_teacher(saved, config, str(source.run_dir))
    except CompressionError as err:
        raise config_lib.ConfigError(TEACHER_FIELD, spec, str(err)) from None
    placed = ml_collections.ConfigDict(saved.to_dict())
    placed.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
    placed.data.seq_len = config.data.seq_len
    placed.data.eval_tokens = max(placed.data.eval_tokens, config.data.seq_len)  # (unused)
    placed.train.batch_size, placed.train.microbatches = config.train.batch_size, 1
    try:
        config_lib.validate(placed, num_devices)
        check_platform(placed)  # e.g. a cuDNN-attention teacher on a CPU
    except config_lib.ConfigError as err:
        raise config_lib.ConfigError(
            TEACHER_FIELD, spec, f"the teacher cannot run on this run's batches and mesh: {err}"
        ) from None
    init_from_lib.check_shapes(source, abstract_params(placed))
    return TeacherSpec(source, placed)


def load_teacher(spec: TeacherSpec, mesh: Mesh, rules: Any) -> Teacher:
    """Returns the teacher with its checkpoint's params placed on `mesh` with the logical-axis
    shardings of a model of its shape (under this run's `rules`); they never train."""
    import flax.linen as nn

    model = run_model(spec.config)
    with sharding_lib.logical_context(mesh, rules):
        boxed = state_lib.abstract_params(model, spec.config)
    shardings = sharding_lib.logical_to_shardings(nn.get_partition_spec(boxed), mesh, rules)
    params = init_from_lib.load_params(spec.source, nn.meta.unbox(boxed), shardings)
    return Teacher(spec, model, params, shardings)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The compiled-side pieces of a run: model, optimizer, schedule and state shardings."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    rules: Any
    model: Any
    tx: optax.GradientTransformation
    schedule: Callable[[jax.Array], jax.Array]
    abstract_state: Any
    shardings: Any
    teacher: Teacher | None = None  # distillation: the frozen teacher whose logits each step sees

    def with_teacher(self, teacher: Teacher | None) -> "Trainer":
        """Returns this Trainer with `teacher` (distillation; None: without)."""
        return dataclasses.replace(self, teacher=teacher)

    def init_state(self) -> state_lib.TrainState:
        """Returns a freshly initialized, sharded TrainState (seeded by config.seed)."""
        return state_lib.init_state(self.model, self.tx, self.config, self.mesh, self.shardings)

    def batch_shardings(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Returns the NamedSharding of each array of a batch (leading axis over 'batch')."""
        return {k: _batch_sharding(self.mesh, self.rules, np.ndim(v)) for k, v in batch.items()}

    def step_batch(self, batch_np: dict[str, Any]) -> dict[str, Any]:
        """Returns this process's numpy batch as the compiled step takes it: the arrays
        themselves in one process (the step places them), global batch-sharded arrays across
        processes (see `sharding.step_batch`)."""
        if jax.process_count() == 1:
            return dict(batch_np)
        return sharding_lib.step_batch(batch_np, self.batch_shardings(batch_np))

    def init_state_from(self, source: init_from_lib.Source) -> state_lib.TrainState:
        """Returns a fresh TrainState whose params the source checkpoint replaces (init_from)."""
        state = self.init_state()
        params = init_from_lib.load_params(source, state.params, self.shardings.params)
        return state.replace(params=params)

    def jit_train_step(self, example_batch: dict[str, np.ndarray]) -> Callable:
        """Returns the jitted train step with explicit in/out shardings; the state is donated.

        The step takes numpy or device batches (see `step_batch`). It is compiled ahead of time
        on the first call, inside the logical-axis context; later calls go straight to the
        compiled program, without re-entering the context or re-deriving shardings per step.
        With a teacher, a separately compiled teacher forward pass adds `teacher_logits`
        (batch-sharded) to each batch first, so the step itself stays pure and splits them into
        microbatches with the rest of the batch."""
        batch_shardings = self.batch_shardings(example_batch)
        teacher_forward = None
        if self.teacher is not None:
            logits_sharding = _batch_sharding(self.mesh, self.rules,
                                              np.ndim(example_batch["targets"]) + 1)
            batch_shardings["teacher_logits"] = logits_sharding
            teacher_forward = self.jit_teacher_forward(batch_shardings["inputs"], logits_sharding)
        step = step_lib.make_train_step(self.model, self.tx, self.config)
        jitted = jax.jit(step, in_shardings=(self.shardings, batch_shardings),
                         out_shardings=(self.shardings, sharding_lib.replicated(self.mesh)),
                         donate_argnums=(0,))
        compiled: list[Any] = []

        def run(state: state_lib.TrainState, batch: dict[str, Any]) -> tuple:
            batch = self.step_batch(batch)
            if teacher_forward is not None:
                batch = {**batch, "teacher_logits": teacher_forward(batch["inputs"])}
            if not compiled:
                with sharding_lib.logical_context(self.mesh, self.rules):
                    compiled.append(jitted.lower(state, batch).compile())
            return compiled[0](state, batch)

        return run

    def jit_teacher_forward(self, inputs_sharding: Any, logits_sharding: Any
                            ) -> Callable[[jax.Array], jax.Array]:
        """Returns inputs -> the teacher's float32 logits (deterministic, no gradient), placed
        with `logits_sharding`; compiled ahead of time on the first call."""
        teacher = self.teacher
        if teacher is None:
            raise ValueError("this Trainer has no teacher (distill.teacher is empty)")

        def forward(params: Any, inputs: jax.Array) -> jax.Array:
            return teacher.model.apply({"params": params}, inputs, deterministic=True)

        jitted = jax.jit(forward, in_shardings=(teacher.shardings, inputs_sharding),
                         out_shardings=logits_sharding)
        compiled: list[Any] = []

        def run(inputs: jax.Array) -> jax.Array:
            if not compiled:
                with sharding_lib.logical_context(self.mesh, self.rules):
                    compiled.append(jitted.lower(teacher.params, inputs).compile())
            return compiled[0](teacher.params, inputs)

        return run


@functools.lru_cache(maxsize=64)
def _batch_sharding(mesh: Mesh, rules: Any, ndim: int) -> Any:
    """Returns (cached) the batch sharding of rank `ndim` on `mesh` under `rules`."""
    return sharding_lib.batch_sharding(mesh, rules, ndim)


def check_platform(config: ml_collections.ConfigDict, devices: list | None = None) -> None:
    """Raises ConfigError if the config needs hardware that `devices` (default: all) lack."""
    m = config.model
    if m.kind != "transformer" or m.attention_impl != "cudnn":
        return
    device = (devices or jax.devices())[0]
    if device.platform != "gpu":
        raise config_lib.ConfigError(
            "model.attention_impl", m.attention_impl,
            f"cuDNN attention needs a GPU, but the devices are {device.platform!r}; "
            "use 'xla' or 'einsum'")
    capability = getattr(device, "compute_capability", None)
    k = config_lib.head_dim(m)
    hopper_or_later = capability is None or tuple(map(int, capability.split("."))) >= (9, 0)
    if not hopper_or_later and k > config_lib.CUDNN_MAX_HEAD_DIM_PRE_HOPPER:
        raise config_lib.ConfigError(
            "model.head_dim", k,
            f"cuDNN attention on {device.device_kind} (compute capability {capability}) needs "
            f"head_dim <= {config_lib.CUDNN_MAX_HEAD_DIM_PRE_HOPPER}")


def run_model(config: ml_collections.ConfigDict) -> Any:
    """Returns the run's flax module: the model, with LoRA adapters when finetune.lora_rank > 0
    (raises ConfigError if finetune.lora_modules matches none of its modules)."""
    model = make_model(config.model)
    if config.finetune.lora_rank > 0:
        lora_lib.check_modules(config.finetune, state_lib.abstract_params(model, config))
        model = lora_lib.apply(model, config.finetune)
    return model


def abstract_params(config: ml_collections.ConfigDict) -> Any:
    """Returns the unboxed ShapeDtypeStruct tree of the run model's params (nothing compiles)."""
    import flax.linen as nn

    return nn.meta.unbox(state_lib.abstract_params(run_model(config), config))


def build(config: ml_collections.ConfigDict, devices: list | None = None) -> Trainer:
    """Returns the Trainer for a resolved, validated config on `devices` (default: all)."""
    check_platform(config, devices)  # before anything compiles
    mesh = sharding_lib.make_mesh(config, devices)
    rules = config_lib.logical_rules(config)
    model = run_model(config)
    with sharding_lib.logical_context(mesh, rules):
        boxed = state_lib.abstract_params(model, config)
    tx, schedule = optim.make_optimizer(config, boxed)
    abstract_state, shardings = state_lib.state_shardings(model, tx, config, mesh)
    return Trainer(config, mesh, rules, model, tx, schedule, abstract_state, shardings)
