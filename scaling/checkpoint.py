"""Checkpoints with orbax: the save schedule, saving and resuming the train state.

A checkpoint `checkpoints/<step>/` holds three items: `state` (the TrainState, sharded arrays),
`data` (the data iterator's position, JSON) and `config` (the resolved config, JSON). Orbax writes
each checkpoint into a temporary directory and renames it when complete, so a crash or SIGKILL
mid-save leaves the previous checkpoint as the latest readable one.

Retention (`checkpoint.max_to_keep > 0`) keeps the newest `max_to_keep` checkpoints plus every
log-spaced one (an orbax preservation policy), so the early checkpoints that later evaluation
and emergence curves need are never deleted. `check_resume` compares a checkpoint's config with
the requested one before a resume writes anything.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from scaling import config as config_lib


# Fields that may differ between a checkpoint's config and the config resuming it: they change
# what is logged, evaluated, kept or shown, or where the work runs, never the trained numbers.
RESUME_MUTABLE_FIELDS: tuple[str, ...] = (
    "name",
    "train.log_every", "train.eval_every", "train.eval_at_checkpoints", "train.progress",
    "train.peak_flops", "train.on_nonfinite", "train.max_skipped_steps", "train.max_rewinds",
    "train.rewind_lr_factor",
    "checkpoint.every", "checkpoint.max_to_keep", "checkpoint.async_save",
    "data.tfds_data_dir", "data.prefetch",
    "mesh.data", "mesh.fsdp", "mesh.tensor", "mesh.rules",
)


class ResumeError(config_lib.ConfigError):
    """A resume whose config differs from its checkpoint's in fields that change the run."""

    def __init__(self, message: str, fields: list[str]):
        self.fields = fields
        self.field, self.value = ", ".join(fields), None
        ValueError.__init__(self, message)


def config_differences(saved: ml_collections.ConfigDict, requested: ml_collections.ConfigDict
                       ) -> dict[str, tuple[Any, Any]]:
    """Returns {dotted field: (saved value, requested value)} for every field that differs."""
    old = config_lib.flatten_fields(json.loads(config_lib.to_json(saved)))
    new = config_lib.flatten_fields(json.loads(config_lib.to_json(requested)))
    missing = object()
    return {k: (old.get(k, missing), new.get(k, missing))
            for k in sorted(old.keys() | new.keys()) if old.get(k, missing) != new.get(k, missing)}


def check_resume(saved: ml_collections.ConfigDict, requested: ml_collections.ConfigDict,
                 step: int, workdir: str | pathlib.Path) -> list[str]:
    """Raises ResumeError listing `field: old → new` if the configs differ outside
    RESUME_MUTABLE_FIELDS; returns the allowed fields that differ."""
    diffs = config_differences(saved, requested)
    allowed = [k for k in diffs if k in RESUME_MUTABLE_FIELDS]
    refused = [k for k in diffs if k not in allowed]
    if refused:
        lines = "\n".join(f"  {k}: {diffs[k][0]!r} → {diffs[k][1]!r}" for k in refused)
        raise ResumeError(
            f"cannot resume {workdir}: its checkpoint at step {step} was trained with a different "
            f"config in {len(refused)} field(s) that change the run:\n{lines}\n"
            f"Only {', '.join(RESUME_MUTABLE_FIELDS)} may change on resume; use a new workdir "
            "for a different run. Nothing in the run directory was changed.", refused)
    return allowed


def log_spaced_steps(config: ml_collections.ConfigDict) -> list[int]:
    """Returns the log-spaced checkpoint steps 1, 2, 4, ..., <= checkpoint.log_max (or [])."""
    k = config.checkpoint
    steps, s = [], 1
    while k.log_spaced and s <= k.log_max:
        steps.append(s)
        s *= 2
    return steps


def save_steps(config: ml_collections.ConfigDict, num_steps: int) -> list[int]:
    """Returns the sorted steps to checkpoint: log-spaced ∪ every-N ∪ final (as in Pythia)."""
    k = config.checkpoint
    steps: set[int] = set(log_spaced_steps(config))
    if k.every > 0:
        steps.update(range(k.every, num_steps + 1, k.every))
    if k.save_final:
        steps.add(num_steps)
    return sorted(s for s in steps if 1 <= s <= num_steps)


class Checkpointer:
    """Orbax CheckpointManager over `workdir/checkpoints` for TrainState + data position + config."""

    def __init__(self, workdir: str | pathlib.Path, config: ml_collections.ConfigDict):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        k = config.checkpoint
        preservation = None  # keep all
        if k.max_to_keep > 0:
            preservation = ocp.checkpoint_managers.AnyPreservationPolicy([
                ocp.checkpoint_managers.LatestN(n=k.max_to_keep),
                ocp.checkpoint_managers.CustomSteps(log_spaced_steps(config))])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation,
            enable_async_checkpointing=bool(k.async_save),
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config"))

    def latest_step(self) -> int | None:
        """Returns the newest complete checkpoint step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Returns all complete checkpoint steps, ascending."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None,
             config: ml_collections.ConfigDict) -> None:
        """Saves a checkpoint at `step` (no-op if it already exists)."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        ), force=True)

    def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict]:
        """Returns (state placed with `shardings`, data iterator state) from checkpoint `step`."""
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state, shardings)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["data"] or {})

    def restore_params(self, step: int, abstract_state: Any, shardings: Any) -> Any:
        """Returns only the params of checkpoint `step` (for evaluation)."""
        state, _ = self.restore(step, abstract_state, shardings)
        return state.params

    def read_config(self, step: int) -> ml_collections.ConfigDict:
        """Returns the config stored with checkpoint `step`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))
        return config_lib.from_dict(restored["config"])

    def wait(self) -> None:
        """Blocks until pending (async) saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        try:
            self.manager.wait_until_finished()
        finally:
            self.manager.close()


def log_restore(step: int) -> None:
    """Logs that a run resumes from `step`."""
    logging.info("resuming from checkpoint at step %d", step)
