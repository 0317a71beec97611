"""Load run directories (format version 1) into one long pandas DataFrame.

Accepted roots: a sweep root (has manifest.json listing runs with relative dirs), a run directory
(has run.json, metrics.jsonl or eval.jsonl), or any directory containing such (searched
recursively). One row per run × step × metric:

  run_id, run_name, run_dir, status, source ("train" | "eval"), step, metric, value,
  N (total parameters), N_nonembed, D (tokens seen), C (FLOPs), plus one column per sweep axis.

Training-log fields other than step/tokens/flops/time become metrics "train/<field>"
(train/loss, train/lr, ...). Missing or corrupt files (unreadable JSON, bad JSONL lines, truncated
final lines, missing config.json/run.json) are reported with logging.warning (path and reason) and
skipped; the rest of the run is still loaded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
from typing import Any, Iterable, Sequence

import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["load_runs", "load_run", "run_table", "final_values", "find_run_dirs", "COLUMNS", "run_state",
           "USABLE_STATES", "select_runs", "Convention", "apply_convention", "BUDGET_AXIS",
           "LOSS_METRICS"]

COLUMNS = ["run_id", "run_name", "run_dir", "status", "source", "step", "metric", "value", "N",
           "N_nonembed", "D", "C", "flops_per_token"]
# The axis `scaling.sweeps.spec` writes into run.json "axes" for an IsoFLOP budget (FLOPs). Spelled
# out here because analysis/ never imports the training code.
BUDGET_AXIS = "C_budget"
# Evaluation metrics a report can fit as "the loss", with their units. Bits per byte divides the
# cross-entropy by the bytes of text rather than the tokens, so runs with different tokenizers
# share one axis (`scaling.evaluate` writes it next to val/loss).
LOSS_METRICS = {"val/loss": "nats/token", "val/bits_per_byte": "bits/byte"}
# Run states whose numbers enter fits by default (see `run_state`).
USABLE_STATES = ("completed",)
_TRAIN_SKIP = {"step", "tokens", "flops", "time"}
_RUN_FILES = ("run.json", "metrics.jsonl", "eval.jsonl", "config.json", "status.json")


def _warn(path: pathlib.Path, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)


def _read_json(path: pathlib.Path, required: bool = True) -> dict[str, Any] | None:
    if not path.exists():
        if required:
            _warn(path, "file is missing")
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _warn(path, f"unreadable JSON ({e})")
        return None
    if not isinstance(obj, dict):
        _warn(path, f"expected a JSON object, got {type(obj).__name__}")
        return None
    return obj


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as e:
        _warn(path, f"unreadable ({e})")
        return rows
    lines = text.split("\n")
    truncated_tail = not text.endswith("\n") and text != ""
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            last = i == len(lines) and truncated_tail
            _warn(path, f"line {i}: {'truncated final line' if last else 'bad JSON'} ({e.msg})")
            continue
        if not isinstance(obj, dict):
            _warn(path, f"line {i}: expected a JSON object")
            continue
        rows.append(obj)
    return rows


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def is_run_dir(path: pathlib.Path) -> bool:
    """Returns True when path looks like a run directory (has one of the run files)."""
    return path.is_dir() and any((path / f).exists() for f in ("run.json", "metrics.jsonl", "eval.jsonl"))


def find_run_dirs(root: str | os.PathLike) -> list[tuple[pathlib.Path, dict[str, Any]]]:
    """Returns (run_dir, manifest entry or {}) for every run under root (manifest first, then a scan)."""
    root = pathlib.Path(root)
    if not root.exists():
        _warn(root, "path does not exist")
        return []
    if is_run_dir(root):
        return [(root, {})]
    found: list[tuple[pathlib.Path, dict[str, Any]]] = []
    seen: set[pathlib.Path] = set()
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        man = _read_json(manifest_path)
        runs = man.get("runs") if man else None
        if man is not None and not isinstance(runs, list):
            _warn(manifest_path, "no 'runs' list")
        for i, entry in enumerate(runs or []):
            if not isinstance(entry, dict) or "dir" not in entry:
                _warn(manifest_path, f"runs[{i}] has no 'dir'")
                continue
            d = (root / str(entry["dir"])).resolve()
            if not d.is_dir():
                _warn(d, f"run {entry.get('id', '?')} listed in the manifest has no directory")
                continue
            found.append((d, entry))
            seen.add(d)
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        p = pathlib.Path(dirpath)
        if p.resolve() in seen:
            dirnames[:] = []
            continue
        if p != root and is_run_dir(p):
            found.append((p, {}))
            seen.add(p.resolve())
            dirnames[:] = []
        elif p.name == "checkpoints":
            dirnames[:] = []
    return found


def load_run(run_dir: str | os.PathLike, manifest_entry: dict[str, Any] | None = None
             ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Returns (long DataFrame of one run's rows, run info dict with id, axes, N, config)."""
    d = pathlib.Path(run_dir)
    entry = manifest_entry or {}
    info = _read_json(d / "run.json") or {}
    if info and info.get("version", 1) != 1:
        log.warning("reading %s: run.json version %s (expected 1); fields may differ", d / "run.json",
                    info.get("version"))
    config = _read_json(d / "config.json") or {}
    status = _read_json(d / "status.json", required=False) or {}
    run_id = str(info.get("id") or entry.get("id") or d.name)
    axes = dict(entry.get("axes") or {})
    axes.update(info.get("axes") or {})
    n_total = _num(info.get("n_params", entry.get("n", math.nan)))
    n_ne = _num(info.get("n_params_nonembed", math.nan))
    base = {"run_id": run_id, "run_name": str(info.get("name") or entry.get("name") or config.get("name") or d.name),
            "run_dir": str(d), "status": str(status.get("status") or entry.get("status") or "unknown")}
    rows: list[dict[str, Any]] = []
    mpath = d / "metrics.jsonl"
    if mpath.exists():
        for i, r in enumerate(_read_jsonl(mpath)):
            step = _num(r.get("step"))
            if math.isnan(step):
                _warn(mpath, f"record {i + 1} has no step")
                continue
            for k, v in r.items():
                if k in _TRAIN_SKIP:
                    continue
                val = _num(v)
                if math.isnan(val) and v is not None and not isinstance(v, float):
                    continue
                rows.append({"source": "train", "step": step, "metric": f"train/{k}", "value": val,
                             "D": _num(r.get("tokens")), "C": _num(r.get("flops")),
                             "N": n_total, "N_nonembed": n_ne})
    elif "compression" in info and (d / "eval.jsonl").exists():
        pass  # a compressed checkpoint (`scaling compress`) is evaluated, never trained
    elif status.get("status") not in ("pending", None) or not (d / "eval.jsonl").exists():
        _warn(mpath, "file is missing")
    epath = d / "eval.jsonl"
    if epath.exists():
        for i, r in enumerate(_read_jsonl(epath)):
            if "metric" not in r or "step" not in r:
                _warn(epath, f"record {i + 1} lacks 'metric' or 'step'")
                continue
            n_row = _num(r.get("n_params", n_total))
            rows.append({"source": "eval", "step": _num(r["step"]), "metric": str(r["metric"]),
                         "value": _num(r.get("value")), "D": _num(r.get("tokens")),
                         "C": _num(r.get("flops")), "N": n_row if not math.isnan(n_row) else n_total,
                         "N_nonembed": _num(r.get("n_params_nonembed", n_ne))})
            if math.isnan(n_total) and not math.isnan(n_row):
                n_total = n_row
    df = pd.DataFrame(rows, columns=["source", "step", "metric", "value", "D", "C", "N", "N_nonembed"])
    df["flops_per_token"] = _num(info.get("flops_per_token"))
    for k, v in base.items():
        df[k] = v
    for k, v in axes.items():
        df[k] = v if not isinstance(v, (list, dict)) else json.dumps(v)
    run_info = {**base, "axes": axes, "N": n_total, "N_nonembed": n_ne, "config": config,
                "flops_per_token": _num(info.get("flops_per_token")),
                "tokens_per_step": _num(info.get("tokens_per_step")),
                "num_steps": _num(info.get("num_steps")), "error": status.get("error"),
                "step": _num(status.get("step"))}
    run_info["state"] = run_state(run_info["status"], run_info["error"])
    return df, run_info


def run_state(status: str, error: Any = None) -> str:
    """Returns the run's state: completed | diverged | failed | interrupted | running | pending | unknown.

    "diverged" is a failed run whose error is a non-finite loss (FloatingPointError), as the sweep
    runner marks it; "unknown" is a run without a readable status.json.
    """
    if status == "failed" and str(error or "").startswith("FloatingPointError"):
        return "diverged"
    if status in ("completed", "failed", "interrupted", "running", "pending"):
        return status
    return "unknown"


def _as_list(roots: str | os.PathLike | Iterable[str | os.PathLike]) -> list[pathlib.Path]:
    if isinstance(roots, (str, os.PathLike)):
        return [pathlib.Path(roots)]
    return [pathlib.Path(r) for r in roots]


def load_runs(roots: str | os.PathLike | Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Returns one long DataFrame (one row per run × step × metric) for all runs under the roots."""
    frames = []
    for root in _as_list(roots):
        for d, entry in find_run_dirs(root):
            df, _ = load_run(d, entry)
            if len(df):
                frames.append(df)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(frames, ignore_index=True, sort=False)
    first = [c for c in COLUMNS if c in out.columns]
    return out[first + [c for c in out.columns if c not in first]]


def run_table(roots: str | os.PathLike | Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Returns one row per run: id, name, status, state, step, error, N, N_nonembed, axes, flops_per_token, num_steps."""
    rows = []
    for root in _as_list(roots):
        for d, entry in find_run_dirs(root):
            _, info = load_run(d, entry)
            row = {k: v for k, v in info.items() if k not in ("axes", "config")}
            row.update(info["axes"])
            rows.append(row)
    return pd.DataFrame(rows)


def final_values(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Returns the last-step row of `metric` for each run (columns as in load_runs)."""
    sub = df[df["metric"] == metric]
    if sub.empty:
        return sub
    idx = sub.groupby("run_id")["step"].idxmax()
    return sub.loc[idx].reset_index(drop=True)


def select_runs(df: pd.DataFrame, runs: pd.DataFrame, *, include_incomplete: bool = False
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Returns (rows of the usable runs, their run_table rows, the excluded runs with why).

    Usable: state in USABLE_STATES (completed); failed, diverged, interrupted, still running,
    pending and status-less runs are excluded with their state as the reason, unless
    include_incomplete (then every run is kept and nothing is excluded).
    """
    if runs.empty:
        return df, runs, pd.DataFrame(columns=["run", "state", "step", "reason"])
    keep = pd.Series(True, index=runs.index) if include_incomplete else runs["state"].isin(USABLE_STATES)
    excluded = runs[~keep]
    table = pd.DataFrame({"run": excluded["run_name"], "state": excluded["state"],
                          "step": excluded["step"],
                          "reason": [e if isinstance(e, str) and e else f"status {s}" for e, s in
                                     zip(excluded["error"], excluded["state"])]})
    kept_ids = set(runs.loc[keep, "run_id"])
    return df[df["run_id"].isin(kept_ids)], runs[keep], table.reset_index(drop=True)


class Convention:
    """Which N and which C every fit uses: params "nonembed" | "total"; compute "measured" | "6ND"."""

    def __init__(self, params: str = "nonembed", compute: str = "measured"):
        if params not in ("nonembed", "total"):
            raise ValueError(f"params must be 'nonembed' or 'total', got {params!r}")
        if compute not in ("measured", "6ND"):
            raise ValueError(f"compute must be 'measured' or '6ND', got {compute!r}")
        self.params, self.compute = params, compute

    @property
    def n_text(self) -> str:
        """Returns the words for N (e.g. "non-embedding parameters")."""
        return "non-embedding parameters" if self.params == "nonembed" else "total parameters"

    @property
    def c_text(self) -> str:
        """Returns the words for C (FLOPs)."""
        if self.compute == "6ND":
            return f"6·N·D with N = {self.n_text} (asked for)"
        return "D × the run's measured training FLOPs per token (run.json)"

    def describe(self) -> str:
        """Returns one sentence naming N and C, for every table and figure caption."""
        return f"N = {self.n_text}; C = {self.c_text}"

    def to_dict(self) -> dict[str, str]:
        """Returns {"params", "compute", "text"}."""
        return {"params": self.params, "compute": self.compute, "text": self.describe()}


def apply_convention(df: pd.DataFrame, conv: Convention) -> pd.DataFrame:
    """Returns a copy of df whose "N" is the convention's count and "C" its compute (FLOPs).

    The total count moves to "N_total". Measured C is D × the run's flops_per_token from run.json
    (the logged "flops" where run.json has none); "6ND" is 6·N·D with the chosen N.
    """
    out = df.copy()
    out["N_total"] = out["N"]
    if conv.params == "nonembed":
        out["N"] = out["N_nonembed"]
    if conv.compute == "6ND":
        out["C"] = 6.0 * out["N"] * out["D"]
    elif "flops_per_token" in out.columns:
        fpt = out["flops_per_token"].astype(float)
        out["C"] = (out["D"] * fpt).where(fpt.notna() & (fpt > 0), out["C"])
    return out
