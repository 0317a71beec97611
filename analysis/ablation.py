"""Ablation sweeps: fit each arm, tabulate parameters with CIs and each arm's difference from baseline.

Every arm is fitted with the same law (default: Chinchilla approach 3). The difference of a
parameter between an arm and the baseline gets a bootstrap CI. When the arm and the baseline were
run at the same set of configurations (same inputs, e.g. the same (N, D) grid), the bootstrap is
paired: one resample of configurations (multinomial counts) is applied to both arms, which removes
the shared design noise. Otherwise the two arms are resampled independently.
Emergence points (sigmoid x0, log10 units) per arm are added when an emergence table is given.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.emergence import fit_emergence
from analysis.catalog import get_law
from analysis.fit import FitResult, fit_law

__all__ = ["fit_arms", "ablation_table"]


def _config_keys(df: pd.DataFrame, cols: Sequence[str]) -> list[tuple]:
    return [tuple(np.round(np.log(np.asarray(r, dtype=float)), 9)) for r in df[list(cols)].to_numpy()]


def fit_arms(df: pd.DataFrame, arm_col: str = "arm", *, law: str = "chinchilla",
             x_cols: Sequence[str] | None = None, y_col: str = "loss", bootstrap: int = 200,
             seed: int = 0, baseline: Any = None, level: float = 0.95) -> dict[Any, FitResult]:
    """Returns {arm: FitResult}; arms sharing the baseline's configurations get paired resamples."""
    lw = get_law(law)
    x_cols = list(x_cols or lw.inputs)
    arms = list(pd.unique(df[arm_col]))
    if baseline is None:
        baseline = arms[0]
    base = df[df[arm_col] == baseline].reset_index(drop=True)
    base_keys = _config_keys(base, x_cols)
    rng = np.random.default_rng(seed)
    n_b = len(base)
    shared_w = rng.multinomial(n_b, np.full(n_b, 1.0 / n_b), size=bootstrap).astype(float) if bootstrap else None
    fits: dict[Any, FitResult] = {}
    for arm in arms:
        sub = df[df[arm_col] == arm].reset_index(drop=True)
        keys = _config_keys(sub, x_cols)
        bw = None
        if bootstrap and sorted(keys) == sorted(base_keys) and len(set(keys)) == len(keys):
            pos = {k: i for i, k in enumerate(base_keys)}
            bw = shared_w[:, [pos[k] for k in keys]]
        fits[arm] = fit_law(lw, sub[x_cols].to_numpy(float), sub[y_col].to_numpy(float),
                            bootstrap=0 if bw is not None else bootstrap, bootstrap_weights=bw,
                            seed=seed + 1 + arms.index(arm), level=level)
        fits[arm].paired = bw is not None  # type: ignore[attr-defined]
    return fits


def ablation_table(df: pd.DataFrame, arm_col: str = "arm", *, baseline: Any = None,
                   law: str = "chinchilla", x_cols: Sequence[str] | None = None, y_col: str = "loss",
                   bootstrap: int = 200, seed: int = 0, level: float = 0.95,
                   emergence: pd.DataFrame | None = None, emergence_x: str = "C",
                   emergence_y: str = "value") -> pd.DataFrame:
    """Returns a long table: arm, param, estimate, CI, diff from baseline with CI, paired flag.

    emergence: optional DataFrame with columns arm_col, emergence_x, emergence_y; its sigmoid x0
    (log10 units) per arm is added as parameter "x0".
    """
    arms = list(pd.unique(df[arm_col]))
    baseline = arms[0] if baseline is None else baseline
    fits = fit_arms(df, arm_col, law=law, x_cols=x_cols, y_col=y_col, bootstrap=bootstrap, seed=seed,
                    baseline=baseline, level=level)
    lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
    rows = []
    base = fits[baseline]
    for arm, f in fits.items():
        for j, name in enumerate(f.law.param_names):
            lo, hi = f.ci.get(name, (math.nan, math.nan))
            row = {"arm": arm, "param": name, "estimate": f.params[name], "ci_low": lo, "ci_high": hi,
                   "diff": f.params[name] - base.params[name], "diff_low": math.nan,
                   "diff_high": math.nan, "paired": bool(getattr(f, "paired", False))}
            if arm != baseline and f.boot is not None and base.boot is not None:
                if row["paired"] and getattr(base, "paired", False):
                    d = f.boot[:, j] - base.boot[:, j]
                else:
                    m = min(len(f.boot), len(base.boot))
                    d = f.boot[:m, j] - base.boot[:m, j]
                    row["paired"] = False
                d = d[np.isfinite(d)]
                if len(d):
                    row["diff_low"], row["diff_high"] = float(np.percentile(d, lo_q)), float(np.percentile(d, hi_q))
            elif arm == baseline:
                row["diff_low"] = row["diff_high"] = 0.0
            rows.append(row)
    if emergence is not None and len(emergence):
        em = {}
        for arm, g in emergence.groupby(arm_col, sort=False):
            em[arm] = fit_emergence(g[emergence_x].to_numpy(float), g[emergence_y].to_numpy(float),
                                    bootstrap=bootstrap, seed=seed)
        if baseline in em:
            b = em[baseline]
            for arm, r in em.items():
                # an emergence point exists only where the sigmoid beats flat/linear by BIC; with
                # no transition in this arm or the baseline there is no difference to report
                both = bool(r.transition and b.transition)
                row = {"arm": arm, "param": "x0", "estimate": r.x0, "ci_low": r.x0_ci[0],
                       "ci_high": r.x0_ci[1], "diff": r.x0 - b.x0 if both else math.nan,
                       "diff_low": math.nan, "diff_high": math.nan, "paired": False,
                       "transition": bool(r.transition)}
                if arm == baseline:
                    row["diff"] = row["diff_low"] = row["diff_high"] = 0.0
                elif both and r.fit.boot is not None and b.fit.boot is not None:
                    j = r.fit.law.param_names.index("x0")
                    m = min(len(r.fit.boot), len(b.fit.boot))
                    d = r.fit.boot[:m, j] - b.fit.boot[:m, j]
                    d = d[np.isfinite(d)]
                    if len(d):
                        row["diff_low"], row["diff_high"] = (float(np.percentile(d, lo_q)),
                                                             float(np.percentile(d, hi_q)))
                rows.append(row)
    return pd.DataFrame(rows)
