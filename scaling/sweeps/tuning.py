"""Learning-rate (and batch-size / β2) tuning as a sweep stage, and the `tuned` LR / batch rule.

Declared under `sweep.tune` (fields and defaults in `spec.default_sweep`). With `tune.enabled`,
every size gets a grid of peak LRs around the value the sweep's LR rule predicts for it, lr =
predicted · lr_factor^k for integer grid steps k (`lr_points` of them, centred on k = 0),
optionally crossed with batch sizes predicted · batch_factor^j (`batch_points`) and β2 values
(`tune.b2`). Each run records k as the axis `lr_step` (and j as `batch_step`).

When the grid's runs are done, `runner.run_sweep` (local and Ray backends alike) reads each run's
final validation loss, takes each size's optimum (mean over seeds; a diverged run counts as +inf)
and, where the optimum is at the low or high LR edge, adds the next grid step beyond it and
trains that, up to `max_extend` steps beyond the initial grid on each side. A size whose optimum
still sits at an edge is flagged. It then fits LR*(N) = c·N^e (and B*(N) where batch was swept)
with cluster-bootstrap CIs (`analysis.tuning`) and writes `tune.out` (tuned.json) in the sweep
root: per-size optima, fits, flags and the table of runs it used.

`sweep.lr.rule = "tuned"` with `sweep.lr.tuned_file` (likewise `sweep.batch`) reads such a file:
a size that was tuned (same non-embedding N) gets its own refined optimum (`tuned_source =
"optimum"`), any other size the fitted law (`tuned_source = "fit"` uses the law for every size).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pathlib
from typing import Any, Iterator

import ml_collections
import pandas as pd

from scaling.sweeps import manifest as manifest_lib
from scaling.sweeps.spec import Run, SweepError

log = logging.getLogger(__name__)

TUNED_VERSION = 1
STEP_AXES = ("lr_step", "batch_step")  # grid positions recorded in a tuning run's axes
TUNED_SOURCES = ("optimum", "fit")
VALUE_KEYS = {"lr": "lr_opt", "batch": "batch"}  # per-size value of tuned.json used by a rule


# ----------------------------------------------------------------------------- declaration


def initial_range(points: int) -> tuple[int, int]:
    """Returns the (lowest, highest) grid step of `points` points centred on step 0."""
    lo = -((points - 1) // 2)
    return lo, lo + points - 1


def check_tune(sweep: ml_collections.ConfigDict) -> None:
    """Raises SweepError naming the field if `sweep.tune` is invalid; returns None."""
    t = sweep.tune
    if not t.enabled:
        return
    if int(t.lr_points) < 1:
        raise SweepError(f"sweep.tune.lr_points={t.lr_points}: the LR grid is empty (need >= 1 "
                         "points per size)")
    for field in ("lr_factor", "batch_factor"):
        value = t[field]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 1.0:
            raise SweepError(f"sweep.tune.{field}={value!r}: must be a number > 1 (the ratio of "
                             "neighbouring grid values)")
    if int(t.batch_points) < 1:
        raise SweepError(f"sweep.tune.batch_points={t.batch_points}: must be >= 1 (1: batch "
                         "not swept)")
    if int(t.max_extend) < 0:
        raise SweepError(f"sweep.tune.max_extend={t.max_extend}: must be >= 0")
    for v in t.b2:
        if not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise SweepError(f"sweep.tune.b2: value {v!r} must be in (0, 1)")
    if len(set(t.b2)) != len(t.b2):
        raise SweepError(f"sweep.tune.b2: has duplicate values {list(t.b2)}")
    if not sweep.sizes:
        raise SweepError("sweep.tune.enabled: tuning picks an optimum per size, so sweep.sizes "
                         "must list the sizes")
    if not t.out or "/" in str(t.out):
        raise SweepError(f"sweep.tune.out={t.out!r}: must be a file name in the sweep root")
    train = sweep.base.train
    if t.metric == "val/loss" and not (train.eval_at_checkpoints or train.eval_every > 0):
        raise SweepError("sweep.tune: the optimum comes from the final validation loss, but the "
                         "base config never evaluates; set base.train.eval_at_checkpoints=True "
                         "or base.train.eval_every > 0")


def grid_product(sweep: ml_collections.ConfigDict, sizes: list[float | None],
                 combos: list[dict[str, Any]], seeds: list[int],
                 lr_steps: dict[float, tuple[int, int]] | None = None
                 ) -> Iterator[tuple[float | None, dict[str, Any], int]]:
    """Yields (target N, axis combo, seed) per run; with tuning, combos gain the grid position.

    Grid positions are the axes `lr_step` / `batch_step` (applied by `apply_point` after the
    rules) and `optim.b2` (an ordinary field). `lr_steps` maps a target N to its (lowest,
    highest) LR step (default: the initial grid).
    """
    t = sweep.tune
    if not t.enabled:
        for target, combo, seed in _product(sizes, combos, seeds):
            yield target, combo, seed
        return
    fields = set(combos[0]) if combos else set()
    swept = {"optim.lr": True, "train.batch_size": int(t.batch_points) > 1,
             "optim.b2": len(t.b2) > 0}
    for field, on in swept.items():
        if on and field in fields:
            raise SweepError(f"sweep.axes: field {field!r} is swept by sweep.tune; remove the "
                             "axis or turn tuning off")
    for target in sizes:
        lo, hi = (lr_steps or {}).get(float(target), initial_range(int(t.lr_points)))
        b_lo, b_hi = initial_range(int(t.batch_points))
        for combo in combos:
            for b2 in (list(t.b2) or [None]):
                for j in range(b_lo, b_hi + 1):
                    for k in range(lo, hi + 1):
                        point = dict(combo, lr_step=k)
                        if int(t.batch_points) > 1:
                            point["batch_step"] = j
                        if b2 is not None:
                            point["optim.b2"] = float(b2)
                        for seed in seeds:
                            yield target, point, seed


def _product(sizes: list[float | None], combos: list[dict[str, Any]],
             seeds: list[int]) -> Iterator[tuple[float | None, dict[str, Any], int]]:
    for target in sizes:
        for combo in combos:
            for seed in seeds:
                yield target, combo, seed


def split_point(combo: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any]]:
    """Returns (grid steps {'lr_step', 'batch_step'} of a combo, the combo's config fields)."""
    steps = {k: int(v) for k, v in combo.items() if k in STEP_AXES}
    return steps, {k: v for k, v in combo.items() if k not in STEP_AXES}


def apply_point(config: ml_collections.ConfigDict, sweep: ml_collections.ConfigDict,
                steps: dict[str, int]) -> dict[str, Any]:
    """Scales the rule-set LR / batch of `config` in place by the grid steps; returns its axes."""
    if not steps:
        return {}
    t = sweep.tune
    axes: dict[str, Any] = {}
    if "batch_step" in steps:
        batch = config.train.batch_size * float(t.batch_factor) ** steps["batch_step"]
        multiple = max(1, int(sweep.batch.multiple))
        config.train.batch_size = max(multiple, int(round(batch / multiple)) * multiple)
        axes.update({"train.batch_size": int(config.train.batch_size),
                     "batch_step": steps["batch_step"]})
    lr = float(config.optim.lr) * float(t.lr_factor) ** steps["lr_step"]
    config.optim.lr = lr
    axes.update({"optim.lr": lr, "lr_step": steps["lr_step"]})
    return axes


# ------------------------------------------------------------------------------ the tuned rule


def resolve_paths(sweep: ml_collections.ConfigDict, config_path: str | os.PathLike,
                  skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Makes relative `lr.tuned_file` / `batch.tuned_file` absolute; returns None.

    Paths are taken relative to the sweep config file, except for the rules in `skip` (set on the
    command line), which are taken relative to the working directory.
    """
    base = pathlib.Path(config_path).resolve().parent
    for what in ("lr", "batch"):
        path = str(sweep[what].tuned_file or "")
        if path and not os.path.isabs(path):
            sweep[what].tuned_file = str((pathlib.Path.cwd() if what in skip else base) / path)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> dict[str, Any]:
    del mtime_ns  # part of the cache key: a rewritten file is read again
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_tuned(rule: ml_collections.ConfigDict, what: str) -> dict[str, Any]:
    """Returns the checked tuned.json of a `tuned` rule; raises SweepError naming the problem."""
    where = f"sweep.{what}.tuned_file"
    path = str(rule.tuned_file or "")
    if not path:
        raise SweepError(f"{where} is empty but sweep.{what}.rule='tuned'; give the tuned.json "
                         "written by a tuning sweep")
    if rule.tuned_source not in TUNED_SOURCES:
        raise SweepError(f"sweep.{what}.tuned_source={rule.tuned_source!r}: must be one of "
                         f"{list(TUNED_SOURCES)}")
    p = pathlib.Path(path).absolute()
    if not p.is_file():
        raise SweepError(f"{where}={path!r}: file not found ({p})")
    try:
        data = _load(str(p), p.stat().st_mtime_ns)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SweepError(f"{where}={path!r}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or data.get("version") != TUNED_VERSION:
        raise SweepError(f"{where}={path!r}: not a tuned.json of version {TUNED_VERSION}")
    key = VALUE_KEYS[what]
    swept = data.get("swept", ["lr"])
    if what not in swept:
        raise SweepError(f"{where}={path!r}: {what} was not swept by that tuning sweep (swept: "
                         f"{swept}); set sweep.tune.batch_points > 1 there to tune it")
    sizes = data.get("sizes")
    if not isinstance(sizes, list) or not sizes:
        raise SweepError(f"{where}={path!r}: has no 'sizes' list")
    for i, row in enumerate(sizes):
        n, value = (row.get("N"), row.get(key)) if isinstance(row, dict) else (None, None)
        if isinstance(row, dict) and row.get("loss", 0) is None and value is None:
            continue  # every run of this size diverged: no optimum to use
        if not _positive(n) or not _positive(value):
            raise SweepError(f"{where}={path!r}: sizes[{i}] needs positive 'N' and {key!r} "
                             f"(got {row!r}); was {what} tuned?")
    fit = (data.get("fits") or {}).get(what)
    if fit is not None and (not _positive(fit.get("c")) or not _finite(fit.get("e"))):
        raise SweepError(f"{where}={path!r}: fits.{what} needs positive 'c' and finite 'e', "
                         f"got {fit!r}")
    return data


def _positive(x: Any) -> bool:
    return _finite(x) and x > 0


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def tuned_value(rule: ml_collections.ConfigDict, what: str, n: int) -> float:
    """Returns the tuned LR (or batch size) for non-embedding size `n` from the rule's file."""
    data = load_tuned(rule, what)
    if rule.tuned_source == "optimum":
        for row in data["sizes"]:
            if int(row["N"]) == int(n) and row.get(VALUE_KEYS[what]) is not None:
                return float(row[VALUE_KEYS[what]])
    fit = (data.get("fits") or {}).get(what)
    if fit is None:
        tuned = sorted(int(r["N"]) for r in data["sizes"])
        raise SweepError(f"sweep.{what}.tuned_file={rule.tuned_file!r} has no fitted {what} "
                         f"law (fewer than 2 sizes tuned) and N={n} is not a tuned size {tuned}")
    return float(fit["c"] * float(n) ** fit["e"])


# --------------------------------------------------------------------- results and extension


def results_table(root: pathlib.Path, runs: list[Run], metric: str = "val/loss") -> pd.DataFrame:
    """Returns one row per tuning run: N, N_target, lr, lr_step, batch, b2, seed, loss (nats).

    A completed run's loss is its final `metric` value; a diverged run's is +inf. Raises
    SweepError if a run is unfinished for another reason or lacks the final value.
    """
    rows = []
    for run in runs:
        run_dir = root / run.dir
        status = manifest_lib.run_status(run_dir)
        if status["status"] == "completed":
            last = manifest_lib.last_metrics(run_dir, name="eval.jsonl", metric=metric)
            if last is None or int(last.get("step", -1)) != run.steps:
                raise SweepError(f"tuning: run {run.name} has no {metric} at its final step "
                                 f"{run.steps} in eval.jsonl")
            loss = float(last["value"])
        elif status["status"] == "failed" and str(status.get("error") or "").startswith(
                "FloatingPointError"):
            loss = math.inf
        else:
            raise SweepError(f"tuning: run {run.name} is {status['status']}; the optimum needs "
                             "every run completed (or diverged)")
        rows.append({"run": run.name, "N": run.n, "N_target": run.axes["N_target"],
                     "lr": run.lr, "lr_step": int(run.axes["lr_step"]), "batch": run.batch,
                     "b2": float(run.config.optim.b2), "seed": int(run.axes["seed"]),
                     "loss": loss, "status": status["status"]})
    return pd.DataFrame(rows)


def extend_grid(optima: pd.DataFrame, ranges: dict[float, tuple[int, int]], points: int,
                max_extend: int) -> tuple[dict[float, tuple[int, int]], list[str]]:
    """Returns (new LR-step ranges by target N, flags of sizes stuck at an edge).

    `optima`: `analysis.tuning.size_optima` rows with an N_target column. A size whose optimum is
    at the low (high) LR edge gets one more step below (above), unless it is already
    `max_extend` steps beyond the initial grid; then it is flagged.
    """
    init_lo, init_hi = initial_range(points)
    new = dict(ranges)
    flags = []
    for _, row in optima.iterrows():
        target = float(row["N_target"])
        lo, hi = ranges.get(target, (init_lo, init_hi))
        edges = set(filter(None, str(row["edge"]).split(",")))
        if "lr_low" in edges:
            if lo > init_lo - max_extend:
                lo -= 1
            else:
                flags.append(f"N={int(row['N'])}: LR optimum {row['lr']:.4g} is at the low edge "
                             f"of the grid after extending it by max_extend={max_extend}")
        if "lr_high" in edges:
            if hi < init_hi + max_extend:
                hi += 1
            else:
                flags.append(f"N={int(row['N'])}: LR optimum {row['lr']:.4g} is at the high edge "
                             f"of the grid after extending it by max_extend={max_extend}")
        for edge in sorted(edges - {"lr_low", "lr_high"}):
            flags.append(f"N={int(row['N'])}: optimum at the {edge} edge of the swept values "
                         "(only the LR grid is extended)")
        new[target] = (lo, hi)
    return new, flags


def diverged_sizes(table: pd.DataFrame) -> list[float]:
    """Returns the sizes N of a results table at which every run diverged (loss +inf)."""
    finite = table.assign(ok=table["loss"].map(math.isfinite)).groupby("N")["ok"].any()
    return [float(n) for n, ok in finite.items() if not ok]


def optima_with_targets(table: pd.DataFrame) -> pd.DataFrame:
    """Returns `analysis.tuning.size_optima` of a results table with each size's N_target added.

    A size whose every run diverged gets a row at its lowest LR with loss +inf, lr_opt NaN and
    edge 'lr_low' (its optimum is below the grid).
    """
    from analysis import tuning as analysis_tuning

    lost = diverged_sizes(table)
    kept = table[~table["N"].astype(float).isin(lost)]
    optima = analysis_tuning.size_optima(kept.drop(columns=["run", "status", "N_target"])) \
        if len(kept) else pd.DataFrame()
    rows = []
    for n in lost:
        sub = table[table["N"].astype(float) == n].sort_values("lr_step")
        rows.append({"N": n, "lr": float(sub["lr"].iloc[0]), "lr_step": int(sub["lr_step"].iloc[0]),
                     "lr_opt": math.nan, "loss": math.inf, "edge": "lr_low",
                     "loss_std": math.nan, "n_seeds": int(sub["seed"].nunique())})
    optima = pd.concat([optima, pd.DataFrame(rows)], ignore_index=True).sort_values("N")
    targets = table.groupby("N")["N_target"].first()
    optima["N_target"] = [float(targets[n]) for n in optima["N"]]
    return optima.reset_index(drop=True)


def write_tuned(root: pathlib.Path, sweep: ml_collections.ConfigDict, table: pd.DataFrame,
                ranges: dict[float, tuple[int, int]], flags: list[str]) -> dict[str, Any]:
    """Fits the optima, writes root/<tune.out> (tuned.json); returns what it wrote.

    Sizes at which every run diverged are listed (loss +inf, flagged) but left out of the fits.
    """
    from analysis import tuning as analysis_tuning

    t = sweep.tune
    lost = diverged_sizes(table)
    data_table = table[~table["N"].astype(float).isin(lost)].drop(
        columns=["run", "status", "N_target"])
    optima = optima_with_targets(table)
    flags = flags + [f"N={int(n)}: every run diverged; left out of the fits" for n in lost]
    fits: dict[str, Any] = {}
    if data_table["N"].nunique() >= 2:
        fits["lr"] = analysis_tuning.fit_optimum_law(data_table, "lr_opt",
                                                     bootstrap=int(t.bootstrap))
        if int(t.batch_points) > 1:
            fits["batch"] = analysis_tuning.fit_optimum_law(data_table, "batch",
                                                            bootstrap=int(t.bootstrap))
    else:
        flags = flags + ["fewer than 2 sizes with a finite optimum: no LR*(N) law fitted"]
    init = initial_range(int(t.lr_points))
    sizes = []
    for row in optima.to_dict("records"):
        lo, hi = ranges.get(float(row["N_target"]), init)
        sizes.append({**{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                         for k, v in row.items()},
                      "N": int(row["N"]), "lr_steps": [lo, hi],
                      "extended": [init[0] - lo, hi - init[1]]})
    out = {"version": TUNED_VERSION, "sweep": sweep.name, "metric": t.metric,
           "lr_factor": float(t.lr_factor), "batch_factor": float(t.batch_factor),
           "lr_rule": sweep.lr.rule, "sizes": sizes, "fits": fits, "flags": flags,
           "swept": ["lr"] + (["batch"] if int(t.batch_points) > 1 else [])
           + (["b2"] if len(t.b2) else []),
           "data": table.replace({math.inf: None}).to_dict("records")}
    manifest_lib.write_json_atomic(root / str(t.out), out)
    for flag in flags:
        log.warning("tuning: %s", flag)
    return out


def summary(tuned: dict[str, Any], root: str | os.PathLike) -> str:
    """Returns the lines `scaling sweep` prints after a tuning sweep: optima, the law, flags."""
    lines = [f"tuned.json written in {root}:"]
    for row in tuned["sizes"]:
        edge = f"  [edge: {row['edge']}]" if row.get("edge") else ""
        if row.get("lr_opt") is None:
            lines.append(f"  N={row['N']}: every run diverged{edge}")
            continue
        lines.append(f"  N={row['N']}: lr*={row['lr_opt']:.4g} (grid {row['lr']:.4g}), "
                     f"loss {row['loss']:.4f}{edge}")
    fit = tuned["fits"].get("lr")
    if fit:
        lines.append(f"  LR*(N) = {fit['c']:.4g} * N^{fit['e']:.3f}  (e {fit['level']:.0%} CI "
                     f"[{fit['ci_e'][0]:.3f}, {fit['ci_e'][1]:.3f}])")
    lines += [f"  flag: {flag}" for flag in tuned["flags"]]
    return "\n".join(lines)
