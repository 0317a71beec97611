"""`scaling evaluate RUN_DIR [--steps all|last|LIST]`: evaluate checkpoints into eval.jsonl."""

from __future__ import annotations

import json
import pathlib

from absl import flags

from scaling.cli import common, distributed_flags

DESCRIPTION = """Evaluates a run's checkpoints: validation loss (nats/token) on the held-out split and,
for the run's capability task, exact match, answer log-probability and per-token accuracy.
Rows go to RUN_DIR/eval.jsonl (rows of re-evaluated steps are replaced).

With --harness TASKS, scores the checkpoints with lm-evaluation-harness instead (each exported as a
Hugging Face model; needs the `harness` extra) into rows harness/<task>/<metric>;
--import_harness FILE writes the scores of an lm_eval results file, computed elsewhere on a model
from `scaling export`, as rows at the one checkpoint --steps names.

usage: scaling evaluate RUN_DIR [RUN_DIR ...] [--steps all|last|1,2,4]
       scaling evaluate RUN_DIR [...] --harness TASK[,TASK] [--harness_include DIR] [--steps ...]
       scaling evaluate RUN_DIR --import_harness RESULTS.json --steps STEP"""


def main(argv: list[str]) -> int:
    """Runs `scaling evaluate`; returns the exit code."""
    fv = common.new_flag_values(argv, with_config=False)
    flags.DEFINE_string("steps", "all", "Checkpoints: all, last, or a comma-separated list.",
                        flag_values=fv)
    flags.DEFINE_list("harness", [], "lm-evaluation-harness tasks to score the checkpoints on "
                      "(comma-separated), instead of the validation and task metrics.",
                      flag_values=fv)
    flags.DEFINE_string("harness_include", None, "A directory of extra lm_eval task definitions "
                        "(YAML), e.g. local offline tasks.", flag_values=fv)
    flags.DEFINE_integer("harness_limit", 0, "Score at most this many examples per task (0: all).",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("harness_batch_size", 8, "lm_eval batch size.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_string("harness_device", "cpu", "PyTorch device lm_eval runs the model on.",
                        flag_values=fv)
    flags.DEFINE_string("import_harness", None, "An lm_eval results JSON file to write as "
                        "harness rows at the checkpoint --steps names.", flag_values=fv)
    distributed_flags.define(fv)
    rest = common.parse(fv, argv, DESCRIPTION)
    if rest is None:
        return 0
    if not rest:
        return common.fail("give at least one RUN_DIR (see --help)")
    common.setup_logging(fv.verbose)

    def run() -> int:
        wanted = parse_steps(fv.steps)
        if fv.import_harness:
            return import_harness(fv, rest, wanted)
        for run_dir in rest:
            check_run_dir(run_dir, wanted)
        if fv.harness:
            return run_harness(fv, rest, wanted)
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


def print_harness_rows(run_dir: str, rows: list[dict], steps: list[int]) -> None:
    """Prints how many harness rows were written and the last step's scores."""
    print(f"{run_dir}: {len(rows)} harness rows at steps {steps}: "
          + ", ".join(f"{r['metric']}={r['value']:.4g}" for r in rows
                      if r["step"] == steps[-1] and not r["metric"].endswith("_stderr")))


def run_harness(fv: flags.FlagValues, run_dirs: list[str], wanted: list[int] | None) -> int:
    """Runs the --harness mode (lm_eval on exported checkpoints); returns the exit code."""
    from scaling.export import harness

    if fv.harness_include and not pathlib.Path(fv.harness_include).is_dir():
        raise common.UsageError(f"--harness_include={fv.harness_include}: not a directory")
    for run_dir in run_dirs:
        available = checkpoint_steps(pathlib.Path(run_dir))
        steps = wanted or (available if fv.steps == "all" else available[-1:])
        try:
            rows = harness.evaluate_harness(
                run_dir, steps, fv.harness, include_path=fv.harness_include,
                limit=fv.harness_limit or None, batch_size=fv.harness_batch_size,
                device=fv.harness_device)
        except harness.HarnessError as err:
            raise common.UsageError(str(err)) from None
        print_harness_rows(run_dir, rows, steps)
    return 0


def import_harness(fv: flags.FlagValues, run_dirs: list[str], wanted: list[int] | None) -> int:
    """Runs the --import_harness mode (a results file -> rows at one step); returns the exit code.

    The run needs run.json, not its checkpoints (the model may have been scored elsewhere).
    """
    from scaling.export import harness

    if fv.harness:
        raise common.UsageError("give either --harness or --import_harness, not both")
    if len(run_dirs) != 1 or wanted is None or len(wanted) != 1:
        raise common.UsageError("--import_harness: give one RUN_DIR and --steps=STEP, the "
                                "checkpoint the results were scored on")
    if not (pathlib.Path(run_dirs[0]) / "run.json").is_file():
        raise common.UsageError(f"{run_dirs[0]}: not a run directory (no run.json)")
    try:
        rows = harness.import_results(run_dirs[0], fv.import_harness, wanted[0])
    except harness.HarnessError as err:
        raise common.UsageError(str(err)) from None
    print_harness_rows(run_dirs[0], rows, wanted)
    return 0


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
