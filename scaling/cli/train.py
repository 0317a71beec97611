"""`scaling train --config configs/<name>.py --workdir DIR [--config.<field>=<value> ...]`."""

from __future__ import annotations

import json
import os
import pathlib

import ml_collections

from scaling.cli import common

DESCRIPTION = """Trains one run (or resumes it from its latest checkpoint) into --workdir.

The run directory gets config.json, run.json, metrics.jsonl, tb/, checkpoints/ and status.json.
Multi-host: pass --coordinator_address/--num_processes/--process_id (or set them in the
environment as on SLURM / TPU pods) to span several processes."""


def main(argv: list[str]) -> int:
    """Runs `scaling train`; returns the exit code."""
    fv = common.new_flag_values(argv)
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it has checkpoints).",
                        flag_values=fv)
    flags.DEFINE_integer("stop_after", 0, "Stop after this step without finishing (0: off).",
                         flag_values=fv)
    from scaling.cli import distributed_flags

    distributed_flags.define(fv)
    rest = common.parse(fv, argv, DESCRIPTION)
    if rest is None:
        return 0
    if fv.config is None or fv.workdir is None:
        return common.fail("--config and --workdir are required (see --help)")
    common.setup_logging(fv.verbose)

    def run() -> int:
        check_before_training(fv.config, fv.workdir)
        distributed_flags.initialize(fv)
        from scaling.train.loop import train

        summary = train(fv.config, fv.workdir, stop_after=fv.stop_after or None)
        print(f"{summary['status']}: step {summary['step']}, loss {summary['loss']}")
        return 0

    return common.run_with_errors(run, fv.debug)


def check_before_training(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Returns None; raises a user error naming the field or path if the run cannot start.

    Runs before anything is written or compiled: the config (fields, domains, vocabulary against
    the data) and the run directory (a directory or creatable; its config.json, if any, JSON)."""
    from scaling import config as config_lib
    from scaling import validation

    config_lib.validate(config)
    validation.check_vocab(config)
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise common.UsageError(f"--workdir={workdir}: exists and is not a directory")
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise common.UsageError(f"--workdir={workdir}: {parent} is not a directory")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise common.UsageError(f"--workdir={workdir}: {parent} is not writable")
    saved = path / "config.json"
    if saved.exists():  # a corrupt run directory: name the file rather than fail on resume
        try:
            ok = isinstance(json.loads(saved.read_text(encoding="utf-8")), dict)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise common.UsageError(f"{saved}: not a readable JSON config ({err}); is --workdir "
                                    "a run directory?") from None
        if not ok:
            raise common.UsageError(f"{saved}: not a JSON object; is --workdir a run directory?")
