"""`scaling evaluate RUN_DIR [--steps all|last|LIST]`: evaluate checkpoints into eval.jsonl."""

from __future__ import annotations

import sys

from absl import flags

from scaling.cli import common, distributed_flags

DESCRIPTION = """Evaluates a run's checkpoints: validation loss (nats/token) on the held-out split and,
for the run's capability task, exact match, answer log-probability and per-token accuracy.
Rows go to RUN_DIR/eval.jsonl (rows of re-evaluated steps are replaced).

usage: scaling evaluate RUN_DIR [RUN_DIR ...] [--steps all|last|1,2,4]"""


def main(argv: list[str]) -> int:
    """Runs `scaling evaluate`; returns the exit code."""
    fv = common.new_flag_values(argv, with_config=False)
    flags.DEFINE_string("steps", "all", "Checkpoints: all, last, or a comma-separated list.",
                        flag_values=fv)
    distributed_flags.define(fv)
    rest = common.parse(fv, argv, DESCRIPTION)
    if rest is None:
        return 0
    if not rest:
        print("error: give at least one RUN_DIR (see --help)", file=sys.stderr)
        return 2
    common.setup_logging(fv.verbose)

    def run() -> int:
        distributed_flags.initialize(fv)
        from scaling.evaluate import evaluate_run

        for run_dir in rest:
            rows = evaluate_run(run_dir, fv.steps)
            last = {r["metric"]: r["value"] for r in rows if r["step"] == rows[-1]["step"]} \
                if rows else {}
            print(f"{run_dir}: {len(rows)} rows; last step: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
        return 0

    return common.run_with_errors(run)
