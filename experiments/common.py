"""What every experiment shares: scales, the LM base run, running the sweeps, evaluation, outputs.

An experiment (`experiments/<name>.py`) declares

    NAME, DESCRIPTION (one line), PAPER, EXPECTED_RUNTIME {scale: text}, FIGURES (file stems the
    experiment's own analysis always writes under report/figures/),
    sweeps(scale, data_dir="", tfds_name="") -> {sweep name: sweep ConfigDict (scaling.sweeps.spec format)}
    analyze(root, out_dir, scale, bootstrap) -> summary dict (also written to
        out_dir/experiment.json, with out_dir/experiment.md)
    and optionally post_train(root, scale, progress), a stage run after training and evaluation
        and before the analysis (e.g. compressing the trained checkpoints into new run directories)

and `run_experiment` trains every sweep into ROOT/<sweep name>/ with the sweep runner (which skips
completed runs and resumes interrupted ones from their latest checkpoint), evaluates any checkpoint
that has no evaluation rows yet (inline evaluation covers the scheduled ones; a checkpoint saved on
SIGTERM is scored here), then writes the report into ROOT/report/. ROOT/experiment.json records
the experiment, the scale and the wall time of every invocation.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SCALES = ("tiny", "small", "medium", "large")
DEFAULT_SCALE = "small"
REPORT_DIR = "report"
STATE_FILE = "experiment.json"
# Bootstrap resamples of the analysis per scale (tiny keeps the test suite fast).
BOOTSTRAP = {"tiny": 8, "small": 200, "medium": 400, "large": 1000}


class ExperimentError(RuntimeError):
    """An experiment cannot run as asked (unknown scale, a root used for something else, ...)."""


def check_scale(scale: str) -> str:
    """Returns `scale` if it is one of SCALES; raises ExperimentError otherwise."""
    if scale not in SCALES:
        raise ExperimentError(f"--scale={scale!r}: must be one of {list(SCALES)}")
    return scale


def pick(scale: str, **values: Any) -> Any:
    """Returns values[scale] (a per-scale table written as keyword arguments)."""
    check_scale(scale)
    if scale not in values:
        raise ExperimentError(f"no setting for scale {scale!r}; have {sorted(values)}")
    return values[scale]


# ------------------------------------------------------------------------------------ base runs


def lm_base(scale: str, data_dir: str = "", tfds_name: str = "") -> ml_collections.ConfigDict:
    """Returns the byte-level LM base run on the stdlib corpus for a scale (a full run config).

    tiny: the `tiny` corpus variant, 32-token context, batch 8; small: the full corpus, 64-token
    context, batch 16 (CPU); medium / large: 256 / 1024-token context, batch 64 / 256 (one GPU /
    a pod). Inline evaluation at every checkpoint; log-spaced checkpoints plus a regular interval.
    `tfds_name` replaces the corpus (any TFDS text dataset prepared as array_record); the `large`
    budgets need ~1e10 tokens, far more than the stdlib corpus's ~1e7, so it must be given there.
    """
    from scaling.config import default_config

    if scale == "large" and not tfds_name:
        raise ExperimentError(
            "--scale=large trains on ~1e10 tokens; the stdlib corpus holds ~1e7 bytes. Pass "
            "--tfds_name=<a large TFDS text dataset prepared as array_record> (and "
            "--tfds_data_dir), or --tfds_name=stdlib_corpus to try anyway")
    c = default_config()
    seq, batch, every, eval_tokens, keep = pick(
        scale, tiny=(32, 8, 10, 1024, 0), small=(64, 16, 250, 8192, 4),
        medium=(256, 64, 1000, 65_536, 4), large=(1024, 256, 2000, 1_048_576, 4))
    c.data.tfds_name = tfds_name or ("stdlib_corpus/tiny" if scale == "tiny" else "stdlib_corpus")
    c.data.tfds_data_dir = str(data_dir)
    c.data.seq_len = seq
    c.model.max_seq_len = seq
    c.data.eval_tokens = eval_tokens
    c.train.batch_size = batch
    # CPU scales: the whole validation set (and the task's held-out set) in a few device calls;
    # per-call overhead, not FLOPs, is what evaluating a 3k-50k-parameter model costs
    c.data.eval_batch_size = pick(scale, tiny=32, small=128, medium=0, large=0)
    c.train.log_every = 5 if scale == "tiny" else 10
    c.train.progress = False
    c.train.eval_at_checkpoints = True
    c.optim.lr = 3e-3
    # β2 0.99 rather than 0.95: at these small batches (1k-16k tokens per step) the second-moment
    # estimate of 0.95 is too noisy (Porian et al. 2024); a warmup long enough to pass the
    # early instability at peak LR (small: 50 steps, >= 2% of every quickstart run but the
    # shortest three)
    c.optim.b2 = 0.99
    c.optim.warmup_steps = 5 if scale == "tiny" else (50 if scale == "small" else 100)
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.1
    c.checkpoint.log_spaced = True
    c.checkpoint.log_max = 512
    c.checkpoint.every = every
    c.checkpoint.max_to_keep = keep
    return c


def add_recall_task(c: ml_collections.ConfigDict, scale: str, mix_rate: float) -> None:
    """Returns None; mixes in-context associative recall into the text stream, in place.

    Two key->value pairs then a query ("a:3 q:7 ?q:" -> "7\\n"); scored at every checkpoint as
    exact match over held-out examples (chance after learning the format: 1/10; subtask = the
    position of the queried pair). More pairs at larger scales.
    """
    c.data.source = "mixture"
    c.data.task.name = "associative_recall"
    c.data.task.mix_rate = float(mix_rate)
    c.data.task.params.num_pairs = pick(scale, tiny=2, small=2, medium=4, large=8)
    c.data.task.eval_examples = pick(scale, tiny=32, small=256, medium=512, large=1024)


def lm_sweep(scale: str, name: str, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Returns an empty sweep over `base` with the Transformer family and resources for the scale."""
    from scaling.sweeps.spec import default_sweep

    s = default_sweep()
    s.name = name
    s.base = base
    if scale == "tiny":  # 1-2 layers of width 16 (see scaling.sweeps.testing)
        s.family.head_dim = 8
        s.family.aspect = 8.0
    else:
        s.family.head_dim = 16
        s.family.aspect = 16.0
    s.min_steps = 4
    s.max_unique_tokens = -1  # budgets beyond the corpus repeat it (reshuffled epochs)
    s.resources.devices_per_process = 1 if scale in ("tiny", "small") else 0
    return s


def mlp_base(scale: str) -> ml_collections.ConfigDict:
    """Returns the base run for vector tasks: an MLP on data.source='task', eval at checkpoints."""
    from scaling.config import default_config

    c = default_config()
    c.model.kind = "mlp"
    c.model.mlp_depth = 1
    c.data.source = "task"
    c.train.progress = False
    c.train.eval_at_checkpoints = True
    c.train.log_every = 10 if scale == "tiny" else 50
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 10
    c.optim.clip_norm = 0.0
    c.checkpoint.log_spaced = True
    c.checkpoint.max_to_keep = 0 if scale == "tiny" else 4
    return c


def mlp_sweep(scale: str, name: str, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Returns an empty MLP sweep over `base` (one CPU device per run on tiny/small)."""
    from scaling.sweeps.spec import default_sweep

    s = default_sweep()
    s.name = name
    s.base = base
    s.min_steps = 1
    s.resources.devices_per_process = 1 if scale in ("tiny", "small") else 0
    return s


# --------------------------------------------------------------------------------- the driver


def read_state(root: pathlib.Path) -> dict[str, Any]:
    """Returns ROOT/experiment.json ({} if there is none)."""
    try:
        return json.loads((root / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_json(path: pathlib.Path, value: Any) -> None:
    """Writes `value` as indented JSON to `path` atomically (NaN/inf/complex become null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(value), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (complex, np.complexfloating)):  # not a real number: no value
        return None
    return v


def checkpoint_steps(run_dir: pathlib.Path) -> list[int]:
    """Returns the steps of the complete checkpoints in run_dir/checkpoints (ascending)."""
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def evaluated_steps(run_dir: pathlib.Path) -> set[int]:
    """Returns the steps that have rows in run_dir/eval.jsonl."""
    out: set[int] = set()
    path = run_dir / "eval.jsonl"
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.add(int(json.loads(line)["step"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return out


def run_dirs(sweep_root: pathlib.Path) -> list[pathlib.Path]:
    """Returns the run directories listed in a sweep root's manifest (in manifest order)."""
    try:
        manifest = json.loads((sweep_root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [sweep_root / r["dir"] for r in manifest.get("runs", []) if "dir" in r]


def evaluate_missing(sweep_root: pathlib.Path, progress: bool = False) -> int:
    """Evaluates every checkpoint that has no eval.jsonl rows; returns how many were evaluated."""
    done = 0
    for run_dir in run_dirs(sweep_root):
        missing = sorted(set(checkpoint_steps(run_dir)) - evaluated_steps(run_dir))
        if not missing:
            continue
        from scaling.evaluate import evaluate_run

        log.info("evaluating %s at steps %s", run_dir.name, missing)
        evaluate_run(run_dir, ",".join(str(s) for s in missing), progress=progress)
        done += len(missing)
    return done


def run_experiment(module: Any, root: str | os.PathLike, scale: str = DEFAULT_SCALE, *,
                   backend: str = "local", workers: int = 0, address: str | None = None,
                   data_dir: str = "", tfds_name: str = "", bootstrap: int | None = None,
                   analyze_only: bool = False, progress: bool = True) -> dict[str, Any]:
    """Trains, evaluates and analyses one experiment in `root`; returns {'status', 'timings', ...}.

    status is 'completed' (report written with every figure), 'incomplete' (report written, but a
    figure of module.FIGURES could not be drawn for lack of data; see its notes), 'interrupted'
    (SIGINT/SIGTERM during training: run the same call again to continue) or 'failed' (some run
    failed, the report is still written from the runs that completed; or the analysis raised, which
    is recorded in ROOT/experiment.json and re-raised). timings are wall seconds per phase.
    """
    from scaling.sweeps import runner

    check_scale(scale)
    root = pathlib.Path(root).absolute()
    state = read_state(root)
    if state and (state.get("experiment"), state.get("scale")) != (module.NAME, scale):
        raise ExperimentError(
            f"{root} holds experiment {state.get('experiment')!r} at scale {state.get('scale')!r}; "
            f"use another --root for {module.NAME!r} at scale {scale!r}")
    root.mkdir(parents=True, exist_ok=True)
    invocations = list(state.get("invocations", []))
    t0 = time.time()
    timings: dict[str, float] = {}
    status = "completed"
    counts: dict[str, int] = {}
    # a study whose runs start from its own earlier sweeps (train.init_from) takes the root
    takes_root = "root" in inspect.signature(module.sweeps).parameters
    sweeps = module.sweeps(scale, data_dir=data_dir, tfds_name=tfds_name,
                           **({"root": root} if takes_root else {}))
    if workers <= 0:
        workers = default_workers(scale, backend)

    def record(final: str) -> None:
        entry = {"started": t0, "status": final, "wall_s": time.time() - t0, "timings": timings,
                 "workers": workers, "backend": backend, "analyze_only": analyze_only}
        write_json(root / STATE_FILE, {
            "experiment": module.NAME, "scale": scale, "status": final,
            "sweeps": sorted(sweeps), "invocations": invocations + [entry],
            "report": str(pathlib.Path(REPORT_DIR) / "experiment.md")})

    record("running")
    if not analyze_only:
        t = time.time()
        for name, sweep in sweeps.items():
            result = runner.run_sweep(sweep, root / name, backend=backend, workers=workers,
                                      address=address, progress=progress)
            for k, v in result["counts"].items():
                counts[k] = counts.get(k, 0) + v
            if result["status"] == "interrupted":
                timings["train_s"] = time.time() - t
                record("interrupted")
                return {"status": "interrupted", "timings": timings, "counts": counts,
                        "root": str(root)}
            if result["status"] != "completed":
                status = "failed"
        timings["train_s"] = time.time() - t
        record("running")  # the training wall time, for the analysis (`realised_throughput`)
        t = time.time()
        for name in sweeps:
            evaluate_missing(root / name, progress=progress)
        timings["evaluate_s"] = time.time() - t
        post_train = getattr(module, "post_train", None)
        if post_train is not None:  # a stage over the trained runs (e.g. compressing them)
            t = time.time()
            try:
                post_train(root, scale, progress)
            except Exception:
                timings["post_train_s"] = time.time() - t
                record("failed")  # recorded, then re-raised unchanged
                raise
            timings["post_train_s"] = time.time() - t
    t = time.time()
    out_dir = root / REPORT_DIR
    boot = BOOTSTRAP[scale] if bootstrap is None else int(bootstrap)
    try:
        summary = module.analyze(root, out_dir, scale, boot)
    except Exception:
        timings["analyze_s"] = time.time() - t
        record("failed")  # the analysis raised: recorded, then re-raised unchanged
        raise
    timings["analyze_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    missing = missing_figures(module, summary)
    if missing and status == "completed":
        status = "incomplete"
    summary = dict(summary, scale=scale, timings=timings, status=status, figures_missing=missing)
    write_json(out_dir / "experiment.json", summary)
    record(status)
    return {"status": status, "timings": timings, "counts": counts, "root": str(root),
            "report": str(out_dir / "experiment.md"), "summary": summary}


def missing_figures(module: Any, summary: Mapping[str, Any]) -> list[str]:
    """Returns the stems of module.FIGURES that the analysis did not draw (see `figure`)."""
    drawn = summary.get("figures") or {}
    return [stem for stem in module.FIGURES if not drawn.get(stem)]


def realised_throughput(root: pathlib.Path) -> dict[str, Any]:
    """Returns Σ model training FLOPs of every run of every sweep in `root` (each run's
    flops_per_token × tokens_per_step × num_steps), the training wall seconds summed over the
    experiment's invocations, and their ratio in FLOP/s; raises InsufficientData without either."""
    from analysis.errors import InsufficientData

    state = read_state(root)
    train_s = sum(float(r.get("timings", {}).get("train_s", 0.0))
                  for r in state.get("invocations", []))
    flops, runs = 0.0, 0
    for run_json in sorted(root.glob("*/runs/*/run.json")):
        run = json.loads(run_json.read_text())
        flops += float(run["flops_per_token"]) * float(run["tokens_per_step"]) * int(run["num_steps"])
        runs += 1
    if runs == 0 or train_s <= 0:
        raise InsufficientData(f"{root}: {runs} run.json files under ROOT/*/runs/ and {train_s:.0f} s "
                               f"of training recorded in {STATE_FILE}")
    return {"flops": flops, "runs": runs, "train_s": train_s, "flops_per_s": flops / train_s}


def default_workers(scale: str, backend: str) -> int:
    """Returns the runs trained at a time by default: 2 on CPU scales, 1 on one accelerator, 0 (as
    many as the cluster allows) for Ray."""
    if backend == "ray":
        return 0
    if scale in ("tiny", "small"):
        return max(1, min(2, os.cpu_count() or 1))
    return 1


# ------------------------------------------------------------------------------ data helpers


def load(roots: Sequence[pathlib.Path] | pathlib.Path, notes: list[str] | None = None,
         include_incomplete: bool = False) -> pd.DataFrame:
    """Returns the long DataFrame of analysis.runs.load_runs for the sweep roots, completed runs only.

    Failed, diverged, interrupted and unfinished runs are left out (their last checkpoint is not a
    result) unless include_incomplete; each one left out is logged and added to `notes`.
    """
    from analysis.runs import load_runs, run_table, select_runs

    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    roots = [r for r in roots if pathlib.Path(r).exists()]
    df = load_runs(roots)
    if df.empty:
        return df
    df, _, excluded = select_runs(df, run_table(roots), include_incomplete=include_incomplete)
    for r in excluded.itertuples():
        msg = f"run {r.run} left out of the analysis: {r.state} ({r.reason})"
        log.warning(msg)
        if notes is not None:
            notes.append(msg)
    return df


def curves(df: pd.DataFrame, metric: str, source: str | None = None) -> pd.DataFrame:
    """Returns the rows of one metric sorted by run and step (columns as in load_runs)."""
    sub = df[df["metric"] == metric]
    if source is not None:
        sub = sub[sub["source"] == source]
    return sub.sort_values(["run_id", "step"]).reset_index(drop=True)


def final(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Returns each run's last-step row of `metric`."""
    sub = curves(df, metric)
    if sub.empty:
        return sub
    return sub.groupby("run_id").tail(1).reset_index(drop=True)


def subtask_matrix(df: pd.DataFrame, task: str, metric: str = "exact_match") -> pd.DataFrame:
    """Returns a wide table (run_id, step, N, D, C, then one column per subtask index).

    The values are the eval rows "<task>/subtask_<i>/<metric>", e.g. metric "exact_match" (fraction)
    or "answer_logprob" (nats per answer token); empty if the runs have no such rows.
    """
    from analysis.emergence import subtask_curves

    return subtask_curves(df, task, metric)


def loglog_fit(x: Iterable[float], y: Iterable[float], bootstrap: int, seed: int = 0
               ) -> dict[str, Any]:
    """Returns the least-squares fit ln y = ln k + slope·ln x with bootstrap CIs (slope: exponent)."""
    from analysis.isoflop import fit_loglog

    x = np.asarray(list(x), dtype=float)
    y = np.asarray(list(y), dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or len(np.unique(x[ok])) < 2:
        return {"slope": math.nan, "ci": [math.nan, math.nan], "k": math.nan, "n": int(ok.sum())}
    f = fit_loglog(x[ok], y[ok], bootstrap=max(bootstrap, 0), seed=seed)
    return {"slope": f.a, "ci": list(f.ci_a), "k": f.k, "n": f.n, "r2": f.r2}


def fit_or_none(fn: Callable[[], Any], what: str, notes: list[str],
                expected: tuple[type[Exception], ...] = ()) -> Any:
    """Returns fn(), or None after noting why `what` could not be fitted.

    Only a data shortage (`analysis.errors.InsufficientData`) and the caller's `expected` outcome
    types count as "not fitted"; anything else (KeyError, IndexError, a ValueError from a bug)
    propagates.
    """
    from analysis.errors import InsufficientData

    try:
        return fn()
    except (InsufficientData, *expected) as err:
        notes.append(f"{what}: not fitted ({type(err).__name__}: {err})")
        log.warning("%s: not fitted (%s)", what, err)
        return None


def fmt_ci(value: float, ci: Sequence[float] | None, digits: int = 3) -> str:
    """Returns 'v [lo, hi]' with `digits` significant digits (nan-safe)."""
    def f(x: Any) -> str:
        try:
            x = float(x)
        except (TypeError, ValueError):
            return "n/a"
        return "n/a" if not math.isfinite(x) else f"{x:.{digits}g}"
    if ci is None or len(ci) != 2:
        return f(value)
    return f"{f(value)} [{f(ci[0])}, {f(ci[1])}]"


def in_ci(value: float, ci: Sequence[float] | None) -> bool | None:
    """Returns whether value lies in the closed interval ci (None if the CI is unknown)."""
    if ci is None or len(ci) != 2 or not all(math.isfinite(float(c)) for c in ci):
        return None
    return bool(min(ci) <= value <= max(ci))


def save_figure(fig: Any, out_dir: pathlib.Path, stem: str) -> str:
    """Saves a matplotlib figure as out_dir/figures/<stem>.png and .pdf; returns the PNG path."""
    from analysis.plots import save_figure as _save

    paths = _save(fig, out_dir / "figures" / stem)
    return str(paths[0].relative_to(out_dir))


def legend(ax: Any) -> None:
    """Draws the axes' legend when something on it has a label (returns None)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=7)


def figure(out_dir: pathlib.Path, stem: str, draw: Callable[[], Any], notes: list[str]) -> str | None:
    """Saves the figure `draw()` returns as <stem>.png/.pdf; returns the PNG path (relative).

    A draw function whose data is short raises `analysis.errors.InsufficientData`: the figure is then
    not drawn, the reason is noted, and None is returned (the study records the missing figure and
    is not "completed"). Any other exception propagates: a bug never becomes a placeholder.
    """
    import matplotlib.pyplot as plt

    from analysis.errors import InsufficientData

    try:
        fig = draw()
    except InsufficientData as err:
        plt.close("all")
        notes.append(f"figure {stem}: not drawn ({err})")
        log.warning("figure %s: not drawn (%s)", stem, err)
        return None
    return save_figure(fig, out_dir, stem)


def generic_report(roots: Sequence[pathlib.Path], out_dir: pathlib.Path, bootstrap: int,
                   title: str, notes: list[str]) -> dict[str, Any]:
    """Runs analysis.report.build_report into out_dir; returns its summary.json (errors propagate).

    The report's skipped sections (too little data) are added to `notes`.
    """
    from analysis.report import build_report

    roots = [r for r in roots if pathlib.Path(r).exists()]
    # arm_axis="": the experiments analyse their own arms, so the generic report has none
    build_report(roots, out_dir, bootstrap=bootstrap, title=title, arm_axis="")
    summary = json.loads((out_dir / "summary.json").read_text())
    for s in summary.get("skipped", []):
        notes.append(f"generic report, {s['section']}: skipped ({s['reason']})")
    return summary


def write_markdown(out_dir: pathlib.Path, module: Any, sections: list[str],
                   figures: Mapping[str, str], notes: Sequence[str]) -> pathlib.Path:
    """Writes out_dir/experiment.md (expected outcome, measured numbers, figures); returns its path."""
    lines = [f"# Experiment `{module.NAME}`", "", module.DESCRIPTION, "",
             f"Follows: {module.PAPER}", "", "## Expected outcome", "", module.EXPECTED_OUTCOME, ""]
    lines += sections
    if figures:
        lines += ["", "## Figures", ""]
        for stem, rel in figures.items():
            lines += [f"![{stem}]({rel})" if rel else f"*{stem}: not drawn (see Notes)*", ""]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "The generic scaling report (all sweeps) is in `report.md` next to this file."]
    path = out_dir / "experiment.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Returns rows as a Markdown table (floats with 4 significant digits)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def f(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "n/a" if not math.isfinite(float(v)) else f"{float(v):.4g}"
        return str(v)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(f(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)
