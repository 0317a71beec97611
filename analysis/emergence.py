"""Emergence: sigmoid transitions, model comparison, late declines, discrete vs continuous metrics.

`fit_emergence` fits y = floor + (ceil − floor)·σ(k·(log10 x − x0)) (least squares) against
log compute / params / steps and compares it with a flat (y = c) and a linear-in-log10 x model by
BIC with a Gaussian likelihood, BIC = n·ln(RSS/n) + p·ln n (p = 1, 2, 4). A transition is declared
only when the sigmoid's BIC is lower than both alternatives by at least `bic_margin` (default 2,
"positive" evidence in Kass & Raftery's scale) and at least `min_side_points` (3) measurements lie
on each side of the midpoint x0 (a "step" fitted to the first or last points is noise or an edge
effect); otherwise the result says "no transition" and why. An
F-test p-value of sigmoid vs linear (nested: the linear model is a limit of the sigmoid) is also
reported. The emergence point is x0 (in log10 units of x), i.e. x = 10^x0.

Discrete vs continuous (Schaeffer et al. 2023): a power law on the per-token cross-entropy of the
answer, CE(N) = E + A·N^(−alpha) with CE = −(answer log-prob per token), predicts the exact match
of an answer of ℓ tokens as p^ℓ = exp(−ℓ·CE(N)); compare with the measured exact match.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.fit import FitResult, fit_law, get_law

__all__ = ["ModelComparison", "EmergenceResult", "compare_models", "detect_late_decline",
           "fit_emergence", "DiscreteContinuousResult", "discrete_vs_continuous", "subtask_curves",
           "learned_subtasks"]


@dataclass
class ModelComparison:
    """RSS, parameter count, AIC and BIC (Gaussian likelihood) of flat, linear and sigmoid models."""

    table: pd.DataFrame  # index: model; columns rss, n_params, aic, bic
    f_pvalue: float  # F-test sigmoid (4 params) vs linear-in-log10 x (2 params)


def _ic(rss: float, n: int, p: int) -> tuple[float, float]:
    rss = max(rss, 1e-300)
    ll_term = n * math.log(rss / n)
    return ll_term + 2 * p, ll_term + p * math.log(n)


def compare_models(x: Any, y: Any, sigmoid_fit: FitResult) -> ModelComparison:
    """Returns RSS/AIC/BIC of flat, linear-in-log10(x) and the fitted sigmoid, and the F-test p-value."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(y)
    lx = np.log10(x)
    rss_flat = float(np.sum((y - y.mean()) ** 2))
    A = np.column_stack([np.ones(n), lx])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    rss_lin = float(np.sum((y - A @ coef) ** 2))
    rss_sig = float(np.sum((sigmoid_fit.predict(x[:, None]) - y) ** 2))
    rows = {}
    for name, rss, p in (("flat", rss_flat, 1), ("linear", rss_lin, 2), ("sigmoid", rss_sig, 4)):
        aic, bic = _ic(rss, n, p)
        rows[name] = {"rss": rss, "n_params": p, "aic": aic, "bic": bic}
    df_num, df_den = 2, n - 4
    if df_den > 0 and rss_sig > 0:
        F = ((rss_lin - rss_sig) / df_num) / (rss_sig / df_den)
        p_val = float(stats.f.sf(F, df_num, df_den)) if F > 0 else 1.0
    else:
        p_val = math.nan
    return ModelComparison(table=pd.DataFrame(rows).T, f_pvalue=p_val)


def detect_late_decline(x: Any, y: Any, *, rel_tol: float = 0.1, abs_tol: float = 0.0) -> dict[str, Any]:
    """Returns {"late_decline": bool, "peak_x", "peak_y", "last_y", "drop"}: does y fall after its peak?

    With points sorted by x, a late decline is flagged when the peak is not the last point and the
    last value is below the peak by more than max(abs_tol, rel_tol·(max y − min y)).
    `fit_emergence` passes abs_tol = 3 × the sigmoid's RMS residual, so noise alone is not flagged.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    i = int(np.argmax(y))
    span = float(y.max() - y.min())
    drop = float(y[i] - y[-1])
    flag = i < len(y) - 1 and drop > max(abs_tol, rel_tol * span) and span > 0
    return {"late_decline": bool(flag), "peak_x": float(x[i]), "peak_y": float(y[i]),
            "last_y": float(y[-1]), "drop": drop}


@dataclass
class EmergenceResult:
    """Sigmoid fit with CIs, emergence point, model comparison verdict and late-decline flag."""

    fit: FitResult
    comparison: ModelComparison
    transition: bool
    verdict: str  # "transition" or "no transition (...)"
    x0: float  # emergence point, log10 units of x
    x0_ci: tuple[float, float]
    x_emergence: float  # 10**x0, in the units of x
    x0_in_range: bool
    decline: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serializable summary."""
        return {"transition": self.transition, "verdict": self.verdict, "x0_log10": self.x0,
                "x0_ci": list(self.x0_ci), "x_emergence": self.x_emergence,
                "x0_in_range": self.x0_in_range, "params": self.fit.params,
                "ci": {k: list(v) for k, v in self.fit.ci.items()},
                "bic": self.comparison.table["bic"].to_dict(), "f_pvalue": self.comparison.f_pvalue,
                **self.decline}


def fit_emergence(x: Any, y: Any, *, bootstrap: int = 200, seed: int = 0, level: float = 0.95,
                  bic_margin: float = 2.0, decline_rel_tol: float = 0.1,
                  min_side_points: int = 3) -> EmergenceResult:
    """Returns the sigmoid-vs-flat/linear analysis of y against x (x: FLOPs, params or steps)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    fit = fit_law("sigmoid", x[:, None], y, bootstrap=bootstrap, seed=seed, level=level)
    cmp_ = compare_models(x, y, fit)
    bic = cmp_.table["bic"]
    better = bic["sigmoid"] < min(bic["flat"], bic["linear"]) - bic_margin
    lx = np.log10(x)
    x0 = fit.params["x0"]
    in_range = bool(lx.min() <= x0 <= lx.max())
    n_below, n_above = int(np.sum(lx < x0)), int(np.sum(lx > x0))
    inside = min(n_below, n_above) >= min_side_points
    if better and inside:
        verdict = "transition"
    elif not better:
        which = "flat" if bic["flat"] <= bic["linear"] else "linear"
        verdict = (f"no transition (sigmoid BIC {bic['sigmoid']:.1f} not below {which} BIC "
                   f"{bic[which]:.1f} by {bic_margin})")
    else:
        verdict = (f"no transition (midpoint has {n_below} points below and {n_above} above; "
                   f"need {min_side_points} on each side)")
    better = better and inside
    return EmergenceResult(
        fit=fit, comparison=cmp_, transition=bool(better), verdict=verdict, x0=x0,
        x0_ci=fit.ci.get("x0", (math.nan, math.nan)), x_emergence=10 ** x0, x0_in_range=in_range,
        decline=detect_late_decline(x, y, rel_tol=decline_rel_tol, abs_tol=3.0 * fit.rms),
    )


@dataclass
class DiscreteContinuousResult:
    """Power law on per-token cross-entropy and the exact match p^ℓ it predicts vs measured."""

    fit: FitResult  # CE(N) = E + A·N^(−alpha), nats/token
    table: pd.DataFrame  # N, ce, ce_pred, em, em_pred (exp(−ℓ·ce_pred)), em_from_ce (exp(−ℓ·ce))
    rmse_em: float  # RMS(em_pred − em), exact-match units (fraction)
    answer_len: float


def discrete_vs_continuous(N: Any, logprob_per_token: Any, exact_match: Any, answer_len: float, *,
                           bootstrap: int = 200, seed: int = 0) -> DiscreteContinuousResult:
    """Returns the Schaeffer et al. check: CE power law in N and its predicted exact match p^ℓ vs measured."""
    N = np.asarray(N, dtype=float)
    ce = -np.asarray(logprob_per_token, dtype=float)
    em = np.asarray(exact_match, dtype=float)
    fit = fit_law(get_law("power-n"), N[:, None], ce, bootstrap=bootstrap, seed=seed)
    ce_pred = fit.predict(N[:, None])
    em_pred = np.exp(-answer_len * ce_pred)
    table = pd.DataFrame({"N": N, "ce": ce, "ce_pred": ce_pred, "em": em, "em_pred": em_pred,
                          "em_from_ce": np.exp(-answer_len * ce)}).sort_values("N")
    rmse = float(np.sqrt(np.mean((em_pred - em) ** 2)))
    return DiscreteContinuousResult(fit=fit, table=table.reset_index(drop=True), rmse_em=rmse,
                                    answer_len=float(answer_len))


_SUBTASK = re.compile(r"^(?P<task>.+)/subtask_(?P<i>\d+)/(?P<metric>[^/]+)$")


def subtask_curves(df: pd.DataFrame, task: str | None = None, metric: str = "exact_match") -> pd.DataFrame:
    """Returns a wide table: one row per run × step (with N, D, C), one column per subtask index.

    df is the long DataFrame of `analysis.runs.load_runs` (metric names "<task>/subtask_<i>/<metric>").
    """
    m = df["metric"].astype(str).str.extract(_SUBTASK.pattern)
    sel = m["metric"].eq(metric) & m["i"].notna()
    if task is not None:
        sel &= m["task"].eq(task)
    sub = df[sel].copy()
    if sub.empty:
        return pd.DataFrame()
    sub["subtask"] = m.loc[sel, "i"].astype(int)
    keys = [k for k in ("run_id", "step", "N", "D", "C") if k in sub.columns]
    wide = sub.pivot_table(index=keys, columns="subtask", values="value", aggfunc="mean")
    wide.columns = [int(c) for c in wide.columns]
    return wide.reset_index()


def learned_subtasks(df: pd.DataFrame, task: str | None = None, metric: str = "exact_match",
                     threshold: float = 0.9) -> pd.DataFrame:
    """Returns per run × step the number of subtasks whose metric ≥ threshold (default 0.9), with N, D, C."""
    wide = subtask_curves(df, task, metric)
    if wide.empty:
        return wide
    cols = [c for c in wide.columns if isinstance(c, (int, np.integer))]
    out = wide.drop(columns=cols).copy()
    out["n_learned"] = (wide[cols] >= threshold).sum(axis=1)
    out["n_subtasks"] = len(cols)
    out["threshold"] = threshold
    return out
