"""Checkpoints with orbax: the save schedule, saving and resuming the train state.

A checkpoint `checkpoints/<step>/` holds three items: `state` (the TrainState, sharded arrays),
`data` (the data iterator's position, JSON) and `config` (the resolved config, JSON). Orbax writes
each checkpoint into a temporary directory and renames it when complete, so a crash or SIGKILL
mid-save leaves the previous checkpoint as the latest readable one.
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


def save_steps(config: ml_collections.ConfigDict, num_steps: int) -> list[int]:
    """Returns the sorted steps to checkpoint: log-spaced ∪ every-N ∪ final (as in Pythia)."""
    k = config.checkpoint
    steps: set[int] = set()
    if k.log_spaced:
        s = 1
        while s <= min(k.log_max, num_steps):
            steps.add(s)
            s *= 2
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
        options = ocp.CheckpointManagerOptions(
            max_to_keep=k.max_to_keep or None,
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
