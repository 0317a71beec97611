"""Start a run from another run's checkpoint: `train.init_from = RUN_DIR[:STEP]`.

The same resolution, shape check and parameter loading serve `distill.teacher` (a teacher run's
frozen parameters); every error names the field the spec came from (`Source.field`).

Only the parameters are taken from the source checkpoint; the optimizer state, the step counter,
the RNG and the learning-rate schedule are fresh (a fine-tuning run has its own schedule). Every
check runs before anything compiles: the run directory must exist and hold checkpoints, the step
(default: the newest) must be one of them, and every parameter of the source must exist in this
model with the same shape, and every parameter of this model must come from the source except
the ones this run adds on purpose (LoRA adapters). A run that resumes reads its own checkpoint,
never the source.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from scaling import config as config_lib

FIELD = "train.init_from"
_SPEC = re.compile(r"^(?P<run>.+?)(?::(?P<step>\d+))?$")


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved `RUN_DIR[:STEP]`: the run directory (absolute), the checkpoint step and the
    config field it was given in (named by every error about it)."""

    run_dir: pathlib.Path
    step: int
    field: str = FIELD

    def record(self) -> dict[str, Any]:
        """Returns what run.json records for it: {'run': path, 'step': step}."""
        return {"run": str(self.run_dir), "step": int(self.step)}


def parse_spec(spec: str, field: str = FIELD) -> tuple[pathlib.Path, int | None]:
    """Returns (run directory, step or None for the newest) of a `RUN_DIR[:STEP]` string."""
    match = _SPEC.match(spec.strip())
    if not match or not match.group("run"):
        raise config_lib.ConfigError(field, spec, "must be RUN_DIR or RUN_DIR:STEP")
    step = match.group("step")
    return pathlib.Path(match.group("run")).expanduser(), None if step is None else int(step)


def _manager(run_dir: pathlib.Path) -> ocp.CheckpointManager:
    """Returns a read-only orbax manager over `run_dir/checkpoints` that reads the params tree."""
    return ocp.CheckpointManager(
        run_dir / "checkpoints", item_names=("state",),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(create=False, read_only=True))


def resolve(spec: str, field: str = FIELD, default_step: int | None = None) -> Source:
    """Returns the Source a `RUN_DIR[:STEP]` string given in `field` names (no step:
    `default_step`, else the newest); raises ConfigError naming the field if the run directory
    is missing, holds no checkpoint, or lacks the step (the message lists the steps it has)."""
    run_dir, step = parse_spec(spec, field)
    if step is None:
        step = default_step
    run_dir = run_dir.absolute()
    if not run_dir.is_dir():
        raise config_lib.ConfigError(field, spec, f"no such run directory: {run_dir}")
    if not (run_dir / "checkpoints").is_dir():
        raise config_lib.ConfigError(field, spec, f"{run_dir} holds no checkpoints/ directory")
    manager = _manager(run_dir)
    try:
        steps = sorted(manager.all_steps())
    finally:
        manager.close()
    if not steps:
        raise config_lib.ConfigError(field, spec, f"{run_dir} holds no complete checkpoint")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise config_lib.ConfigError(
            field, spec, f"{run_dir} has no checkpoint at step {step}; it has steps {steps}")
    return Source(run_dir, step, field)


def _flat(tree: Any) -> dict[str, Any]:
    """Returns {'a/b/c': leaf} for a nested dict pytree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def source_param_shapes(source: Source) -> dict[str, tuple[int, ...]]:
    """Returns {parameter path: shape} of the source checkpoint's params (metadata only)."""
    manager = _manager(source.run_dir)
    try:
        metadata = manager.item_metadata(source.step)["state"]
    finally:
        manager.close()
    tree = getattr(metadata, "tree", metadata)
    if not isinstance(tree, dict) or "params" not in tree:
        raise config_lib.ConfigError(
            source.field, source.record(), "the checkpoint's state holds no 'params' tree")
    return {k: tuple(v.shape) for k, v in _flat(tree["params"]).items()}


def check_shapes(source: Source, abstract_params: Any,
                 added: Callable[[str], bool] = lambda path: False) -> None:
    """Returns None; raises ConfigError naming each parameter whose shape differs (with both
    shapes), that the source lacks (unless `added(path)`: adapters this run adds) or that this
    model lacks."""
    theirs = source_param_shapes(source)
    ours = {k: tuple(v.shape) for k, v in _flat(abstract_params).items()}
    where = f"{source.run_dir}:{source.step}"
    problems = [f"parameter {k}: shape {theirs[k]} in {where} but {ours[k]} in this model"
                for k in sorted(ours.keys() & theirs.keys()) if ours[k] != theirs[k]]
    problems += [f"parameter {k} {ours[k]} of this model is not in {where}"
                 for k in sorted(ours.keys() - theirs.keys()) if not added(k)]
    problems += [f"parameter {k} {theirs[k]} of {where} is not in this model"
                 for k in sorted(theirs.keys() - ours.keys())]
    if problems:
        raise config_lib.ConfigError(
            source.field, str(source.run_dir), "the source checkpoint does not fit this model: "
            + "; ".join(problems))


def load_params(source: Source, params: Any, shardings: Any) -> Any:
    """Returns `params` with every leaf the source holds replaced by the source's value, placed
    with `shardings` (same tree as `params`) and cast to the leaf's dtype; the rest (adapters)
    keep their values."""
    theirs = source_param_shapes(source)
    flat_params = _flat(params)
    flat_shardings = _flat(shardings)
    wanted = {k: v for k, v in flat_params.items() if k in theirs}
    target: dict[str, Any] = {}
    restore_args: dict[str, Any] = {}
    for key, value in wanted.items():  # rebuild the nested dicts of the leaves to read
        *parents, leaf = key.split("/")
        node_t, node_a = target, restore_args
        for p in parents:
            node_t, node_a = node_t.setdefault(p, {}), node_a.setdefault(p, {})
        node_t[leaf] = jax.ShapeDtypeStruct(value.shape, value.dtype,
                                            sharding=flat_shardings[key])
        node_a[leaf] = ocp.ArrayRestoreArgs(sharding=flat_shardings[key], dtype=value.dtype)
    manager = _manager(source.run_dir)
    try:
        restored = manager.restore(source.step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item={"params": target}, restore_args={"params": restore_args},
            partial_restore=True)))
    finally:
        manager.close()
    loaded = _flat(restored["state"]["params"])

    def pick(path: tuple, leaf: Any) -> Any:
        key = "/".join(str(getattr(k, "key", k)) for k in path)
        return loaded.get(key, leaf)

    return jax.tree_util.tree_map_with_path(pick, params)

