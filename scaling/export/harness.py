"""lm-evaluation-harness scores of a run's checkpoints as `eval.jsonl` rows.

`evaluate_harness` exports each chosen checkpoint as a Hugging Face model (a temporary directory,
`scaling.export.run`), runs `lm_eval.simple_evaluate` on it (the `harness` extra: lm_eval,
PyTorch) and writes one row per (step, task, metric); `import_results` turns a results file that
lm_eval wrote elsewhere (`lm_eval ... --output_path`, e.g. on a GPU machine, on a model exported
with `scaling export`) into the same rows. Row metrics are ``harness/<task>/<metric>`` (plus
``/<filter>`` when lm_eval's filter is not "none"), e.g. ``harness/arc_easy/acc_norm`` and
``harness/arc_easy/acc_norm_stderr``; every row also carries step, tokens, flops, n_params and
n_params_nonembed, so `scaling analyze` treats them like the project's own metrics. Re-scoring a
step replaces only that step's harness rows.
"""

from __future__ import annotations

import json
import math
import pathlib
import tempfile
from typing import Any, Sequence

from scaling.export import run as export_run_lib

PREFIX = "harness/"


class HarnessError(ValueError):
    """Bad harness input: an unknown task, an unreadable or malformed results file."""


def harness_rows(results: dict[str, Any], step: int, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Returns eval.jsonl rows for an lm_eval results object scored at checkpoint `step`."""
    scores = results.get("results") if isinstance(results, dict) else None
    if not isinstance(scores, dict) or not scores:
        raise HarnessError("lm_eval results: no 'results' object mapping tasks to metrics")
    tokens = int(step) * int(run["tokens_per_step"])
    base = {"step": int(step), "tokens": tokens,
            "flops": float(tokens * float(run["flops_per_token"])),
            "n_params": run["n_params"], "n_params_nonembed": run["n_params_nonembed"]}
    rows = []
    for task, metrics in sorted(scores.items()):
        if not isinstance(metrics, dict):
            raise HarnessError(f"lm_eval results: task {task!r} holds {type(metrics).__name__}, "
                             "not an object of metrics")
        for key, value in sorted(metrics.items()):
            # lm_eval names scores "<metric>,<filter>" (other keys: alias, sample_len, ...) and
            # writes "N/A" for a stderr it could not compute
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(float(value)):
                continue
            metric, _, filt = key.partition(",")
            name = f"{PREFIX}{task}/{metric}" + (f"/{filt}" if filt and filt != "none" else "")
            rows.append(dict(base, metric=name, value=float(value)))
    if not rows:
        raise HarnessError("lm_eval results: no numeric metric in 'results'")
    return rows


def read_run(run_dir: pathlib.Path) -> dict[str, Any]:
    """Returns run.json of run_dir (the counts every row carries)."""
    path = run_dir / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (not a run directory)")
    run = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in ("tokens_per_step", "flops_per_token", "n_params", "n_params_nonembed")
               if k not in run]
    if missing:
        raise HarnessError(f"{path}: lacks {missing}")
    return run


def write_rows(run_dir: pathlib.Path, rows: list[dict[str, Any]], steps: set[int]) -> None:
    """Replaces the harness rows of `steps` in run_dir/eval.jsonl by `rows` (others are kept)."""
    from scaling.evaluate import replace_rows

    replace_rows(run_dir / "eval.jsonl", rows, steps, metric_prefix=PREFIX)


def import_results(run_dir: str | pathlib.Path, results_file: str | pathlib.Path,
                   step: int) -> list[dict[str, Any]]:
    """Returns the rows of an lm_eval results JSON file, written into run_dir's eval.jsonl at step."""
    run_dir, results_file = pathlib.Path(run_dir), pathlib.Path(results_file)
    try:
        results = json.loads(results_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{results_file}: not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HarnessError(f"{results_file}: not valid JSON ({err})") from None
    run = read_run(run_dir)
    try:
        rows = harness_rows(results, step, run)
    except HarnessError as err:
        raise HarnessError(f"{results_file}: {err}") from None
    write_rows(run_dir, rows, {int(step)})
    return rows


def task_manager(tasks: Sequence[str], include_path: str | None) -> Any:
    """Returns an lm_eval TaskManager that knows every task in `tasks` (HarnessError if not)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError("scaling evaluate --harness needs lm-evaluation-harness and PyTorch: "
                          "pip install -e '.[harness]'") from err
    manager = None
    if include_path:  # indexing lm_eval's own thousands of tasks takes a minute: local ones first
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if any(t not in manager.all_tasks for t in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise HarnessError(f"--harness: unknown lm_eval tasks {unknown}"
                           + (f" (also searched {include_path})" if include_path else ""))
    return manager


def run_lm_eval(model_dir: pathlib.Path, tasks: Sequence[str], manager: Any, limit: int | None,
                batch_size: int, device: str) -> dict[str, Any]:
    """Returns lm_eval's results object for the HF model in model_dir on `tasks`."""
    import lm_eval

    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"},
        tasks=list(tasks), task_manager=manager, limit=limit, batch_size=batch_size,
        device=device)
    keep = ("results", "versions", "n-shot", "n-samples", "configs", "lm_eval_version", "date")
    return {k: results[k] for k in keep if k in results}


def evaluate_harness(run_dir: str | pathlib.Path, steps: Sequence[int], tasks: Sequence[str], *,
                     include_path: str | None = None, limit: int | None = None,
                     batch_size: int = 8, device: str = "cpu") -> list[dict[str, Any]]:
    """Returns the harness rows of `steps`, each checkpoint exported and scored by lm_eval.

    Also writes lm_eval's results of step s to run_dir/harness/<s>.json.
    """
    run_dir = pathlib.Path(run_dir)
    run = read_run(run_dir)
    config = export_run_lib.read_run_config(run_dir)
    if config.data.source == "task" or config.data.tokenizer not in ("byte", "bpe", "hf"):
        raise ValueError(f"config.data.tokenizer={config.data.tokenizer!r} "
                         f"(data.source={config.data.source!r}): lm_eval needs a Hugging Face "
                         "tokenizer, which only byte, bpe and hf tokenizers of text runs export as")
    manager = task_manager(tasks, include_path)  # unknown tasks fail before any export
    rows: list[dict[str, Any]] = []
    out = run_dir / "harness"
    out.mkdir(exist_ok=True)
    for step in steps:
        with tempfile.TemporaryDirectory(prefix="hf_export_") as tmp:
            export_run_lib.export_run(run_dir, tmp, int(step))
            results = run_lm_eval(pathlib.Path(tmp), tasks, manager, limit, batch_size, device)
        (out / f"{int(step)}.json").write_text(json.dumps(results, indent=1, default=str) + "\n",
                                               encoding="utf-8")
        rows.extend(harness_rows(results, int(step), run))
    write_rows(run_dir, rows, {int(s) for s in steps})
    return rows
