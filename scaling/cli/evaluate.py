"""`scaling evaluate RUN_DIR [--steps all|last|LIST]`: evaluate checkpoints into eval.jsonl."""

from __future__ import annotations

import json
import pathlib

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
        return common.fail("give at least one RUN_DIR (see --help)")
    common.setup_logging(fv.verbose)

    def run() -> int:
        wanted = parse_steps(fv.steps)
        for run_dir in rest:
            check_run_dir(run_dir, wanted)
        distributed_flags.initialize(fv)
        from scaling.evaluate import evaluate_run

        for run_dir in rest:
            rows = evaluate_run(run_dir, fv.steps)
            last = {r["metric"]: r["value"] for r in rows if r["step"] == rows[-1]["step"]} \
                if rows else {}
            print(f"{run_dir}: {len(rows)} rows; last step: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
        return 0

    return common.run_with_errors(run, fv.debug)


def parse_steps(steps: str) -> list[int] | None:
    """Returns the checkpoint steps --steps asks for (None for 'all' or 'last')."""
    if steps in ("all", "last"):
        return None
    parts = [p.strip() for p in steps.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise common.UsageError(f"--steps={steps!r}: must be 'all', 'last' or a comma-separated "
                                "list of checkpoint steps, e.g. 1,2,4")
    return [int(p) for p in parts]


def checkpoint_steps(run_dir: pathlib.Path) -> list[int]:
    """Returns the steps of the finished checkpoints in run_dir/checkpoints (ascending)."""
    ckpt = run_dir / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit())


def check_run_dir(run_dir: str, wanted: list[int] | None) -> None:
    """Returns None; raises a user error naming the directory or file if it cannot be evaluated."""
    from scaling import config as config_lib

    path = pathlib.Path(run_dir)
    if not path.is_dir():
        raise common.UsageError(f"{run_dir}: not a directory (give a run directory)")
    if not (path / "config.json").exists():
        raise common.UsageError(f"{run_dir}: not a run directory (no config.json)")
    config_lib.load_json(path / "config.json")
    try:
        run = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise common.UsageError(f"{path / 'run.json'}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise common.UsageError(f"{path / 'run.json'}: not valid JSON ({err})") from None
    if not isinstance(run, dict):
        raise common.UsageError(f"{path / 'run.json'}: not a JSON object")
    available = checkpoint_steps(path)
    if not available:
        raise common.UsageError(f"{run_dir}: has no checkpoints to evaluate")
    missing = sorted(set(wanted or []) - set(available))
    if missing:
        raise common.UsageError(f"--steps: {run_dir} has no checkpoint at steps {missing}; "
                                f"available: {available}")
