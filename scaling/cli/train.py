"""`scaling train --config configs/<name>.py --workdir DIR [--config.<field>=<value> ...]`."""

from __future__ import annotations

import sys

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
        print("error: --config and --workdir are required (see --help)", file=sys.stderr)
        return 2
    common.setup_logging(fv.verbose)

    def run() -> int:
        distributed_flags.initialize(fv)
        from scaling.train.loop import train

        summary = train(fv.config, fv.workdir, stop_after=fv.stop_after or None)
        print(f"{summary['status']}: step {summary['step']}, loss {summary['loss']}")
        return 0

    return common.run_with_errors(run)
