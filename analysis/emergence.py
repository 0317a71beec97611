"""Emergence: monotone sigmoid transitions, model comparison, late declines, discrete vs continuous.

`fit_emergence` fits a monotone sigmoid y = floor + (ceil − floor)·σ(±k·(log10 x − x0)) (least
squares; ceil > floor and k > 0 by construction; "+" for an increasing metric, the default, "−" for
a decreasing one) against log compute / params / steps and compares it with a flat (y = c) and a
linear-in-log10 x model by BIC with a Gaussian likelihood, BIC = n·ln(RSS/n) + p·ln n (p = 1, 2, 4).
A transition is declared only when all of these hold, otherwise the verdict is "no transition
(reasons)":
- the sigmoid's BIC is below both alternatives' by at least `bic_margin` (default 2, "positive"
  evidence on Kass & Raftery's scale);
- at least `min_side_points` (3) measurements lie on each side of the midpoint x0 (a "step" fitted
  to the first or last points is noise or an edge effect);
- the rise of the fitted curve across the measured range exceeds `noise_margin` (3) × the residual
  standard deviation sqrt(RSS/(n − 4)) (a few points of wiggle is not a transition);
- when the task's chance level is given, the level the fitted curve reaches at the largest x clears
  chance by `chance_margin` (default 0.05, in the metric's units) in the direction of improvement;
  with bootstrap CIs the lower end of that level's CI (upper end for a decreasing metric) must.
An F-test p-value of sigmoid vs linear is also reported. The emergence point is x0 (in log10 units
of x), i.e. x = 10^x0.

Late decline (`detect_late_decline`): after its best value the metric gets worse (falls, for an
increasing metric) by more than noise, judged on trailing means of `window` points.

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

from analysis import laws
from analysis.catalog import get_law
from analysis.fit import FitResult, fit_law

__all__ = ["DIRECTIONS", "ModelComparison", "EmergenceResult", "compare_models", "detect_late_decline",
           "noise_sd", "fit_emergence", "DiscreteContinuousResult", "discrete_vs_continuous", "subtask_curves",
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


DIRECTIONS = ("increasing", "decreasing")


def noise_sd(x: Any, y: Any) -> float:
    """Returns a trend-robust noise SD of y (units of y): 1.4826·MAD of successive differences / √2."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    d = np.diff(y[np.argsort(x, kind="stable")])
    if len(d) < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def detect_late_decline(x: Any, y: Any, *, rel_tol: float = 0.1, abs_tol: float = 0.0,
                        direction: str = "increasing", window: int = 3) -> dict[str, Any]:
    """Returns {"late_decline": bool, "peak_x", "peak_y", "last_y", "drop"}: does y get worse after its best?

    Points are sorted by x and smoothed by trailing means of `window` points (fewer at the start),
    so one noisy point neither makes nor hides a decline. For an increasing metric the best value is
    the peak of the smoothed curve and drop = peak − last smoothed value; a late decline is flagged
    when the peak is not the last point and drop > max(abs_tol, rel_tol·(max − min of the smoothed
    curve)). For a decreasing metric the same is done on −y (drop is then the rise after the minimum,
    positive). `fit_emergence` passes abs_tol = noise_margin × the noise SD (`noise_sd`) × √(2/window),
    the SD of a difference of two independent window means.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if window < 1:
        raise ValueError(f"window must be ≥ 1, got {window}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    sign = 1.0 if direction == "increasing" else -1.0
    c = np.concatenate([[0.0], np.cumsum(sign * y)])
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    smooth = (c[idx] - c[lo]) / (idx - lo)  # trailing mean ending at each point
    i = int(np.argmax(smooth))
    span = float(smooth.max() - smooth.min())
    drop = float(smooth[i] - smooth[-1])
    flag = i < len(y) - 1 and span > 0 and drop > max(abs_tol, rel_tol * span)
    return {"late_decline": bool(flag), "peak_x": float(x[i]), "peak_y": float(sign * smooth[i]),
            "last_y": float(sign * smooth[-1]), "drop": drop}


@dataclass
class EmergenceResult:
    """Monotone sigmoid fit with CIs, emergence point, verdict with reasons and late-decline flag."""

    fit: FitResult
    comparison: ModelComparison
    transition: bool
    verdict: str  # "transition" or "no transition (reason; reason ...)"
    x0: float  # emergence point, log10 units of x
    x0_ci: tuple[float, float]
    x_emergence: float  # 10**x0, in the units of x
    x0_in_range: bool
    decline: dict[str, Any] = field(default_factory=dict)
    direction: str = "increasing"
    reasons: list[str] = field(default_factory=list)  # why not a transition (empty if one)
    residual_sd: float = math.nan  # sqrt(RSS/(n − 4)) of the sigmoid, units of y
    rise: float = math.nan  # |fitted y(max x) − fitted y(min x)|, units of y
    rise_ci: tuple[float, float] = (math.nan, math.nan)
    level_end: float = math.nan  # fitted y at the largest x, units of y
    level_end_ci: tuple[float, float] = (math.nan, math.nan)
    chance: float | None = None  # the task's chance level, units of y (None: not given)
    chance_margin: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serializable summary."""
        return {"transition": self.transition, "verdict": self.verdict, "reasons": list(self.reasons),
                "direction": self.direction, "x0_log10": self.x0, "x0_ci": list(self.x0_ci),
                "x_emergence": self.x_emergence, "x0_in_range": self.x0_in_range,
                "params": self.fit.params, "ci": {k: list(v) for k, v in self.fit.ci.items()},
                "level": self.fit.level, "n_points": self.fit.n_points,
                "residual_sd": self.residual_sd, "rise": self.rise, "rise_ci": list(self.rise_ci),
                "level_end": self.level_end, "level_end_ci": list(self.level_end_ci),
                "chance": self.chance, "chance_margin": self.chance_margin,
                "bic": self.comparison.table["bic"].to_dict(), "f_pvalue": self.comparison.f_pvalue,
                **self.decline}


def _sigmoid_at(x: np.ndarray, P: np.ndarray, direction: str) -> np.ndarray:
    """Returns the monotone sigmoid at x (n,) for parameter rows P (..., 4: floor, ceil, k, x0)."""
    floor, ceil, k, x0 = (P[..., j, None] for j in range(4))
    k = k if direction == "increasing" else -k
    return laws.sigmoid(x, floor, ceil, k, x0)


def _check_emergence_args(direction: str, chance: float | None, chance_margin: float,
                          noise_margin: float) -> None:
    """Raises ValueError naming the bad argument of `fit_emergence`."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if chance is not None and not math.isfinite(chance):
        raise ValueError(f"chance must be a finite number (the metric's chance level), got {chance!r}")
    if not (math.isfinite(chance_margin) and chance_margin >= 0):
        raise ValueError(f"chance_margin must be ≥ 0, got {chance_margin!r}")
    if not (math.isfinite(noise_margin) and noise_margin >= 0):
        raise ValueError(f"noise_margin must be ≥ 0, got {noise_margin!r}")


def fit_emergence(x: Any, y: Any, *, direction: str = "increasing", chance: float | None = None,
                  chance_margin: float = 0.05, noise_margin: float = 3.0, bootstrap: int = 200,
                  seed: int = 0, level: float = 0.95, bic_margin: float = 2.0,
                  decline_rel_tol: float = 0.1, min_side_points: int = 3) -> EmergenceResult:
    """Returns the monotone-sigmoid vs flat/linear analysis of y against x (x: FLOPs, params or steps).

    y is the metric in its own units (e.g. exact match, a fraction); chance and chance_margin are in
    the same units. See the module docstring for the verdict's rules.
    """
    _check_emergence_args(direction, chance, chance_margin, noise_margin)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y need the same shape, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    fit = fit_law(f"sigmoid-{direction}", x[:, None], y, bootstrap=bootstrap, seed=seed, level=level)
    cmp_ = compare_models(x, y, fit)
    bic = cmp_.table["bic"]
    n = len(y)
    resid_sd = math.sqrt(cmp_.table.loc["sigmoid", "rss"] / (n - 4)) if n > 4 else math.nan
    lx = np.log10(x)
    x0 = fit.params["x0"]
    ends = np.array([x.min(), x.max()])
    nat = np.array([fit.params[k] for k in fit.law.param_names])
    y_ends = _sigmoid_at(ends, nat, direction)
    rise, level_end = float(abs(y_ends[1] - y_ends[0])), float(y_ends[1])
    rise_ci = level_ci = (math.nan, math.nan)
    b = (fit.boot[np.all(np.isfinite(fit.boot), axis=1)] if fit.boot is not None
         else np.zeros((0, len(nat))))
    if len(b):  # no finite replicate (all failed or degenerate): no interval
        yb = _sigmoid_at(ends, b, direction)
        lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
        rb, eb = np.abs(yb[:, 1] - yb[:, 0]), yb[:, 1]
        rise_ci = (float(np.percentile(rb, lo_q)), float(np.percentile(rb, hi_q)))
        level_ci = (float(np.percentile(eb, lo_q)), float(np.percentile(eb, hi_q)))

    reasons = []
    if not bic["sigmoid"] < min(bic["flat"], bic["linear"]) - bic_margin:
        which = "flat" if bic["flat"] <= bic["linear"] else "linear"
        reasons.append(f"sigmoid BIC {bic['sigmoid']:.1f} not below {which} BIC {bic[which]:.1f} "
                       f"by {bic_margin:g}")
    n_below, n_above = int(np.sum(lx < x0)), int(np.sum(lx > x0))
    if min(n_below, n_above) < min_side_points:
        reasons.append(f"midpoint has {n_below} points below and {n_above} above; need "
                       f"{min_side_points} on each side")
    if not rise > noise_margin * resid_sd:  # NaN residual SD (n ≤ 4): not enough points to judge
        reasons.append(f"fitted rise {rise:.3g} within noise (needs > {noise_margin:g} x residual SD "
                       f"{resid_sd:.3g})")
    if chance is not None:
        rising = direction == "increasing"
        reached = level_ci[0 if rising else 1] if math.isfinite(level_ci[0]) else level_end
        what = f"{int(round(100 * level))}% CI {'low' if rising else 'high'} end" \
            if math.isfinite(level_ci[0]) else "fitted level"
        clears = reached >= chance + chance_margin if rising else reached <= chance - chance_margin
        if not clears:
            reasons.append(f"{what} at the largest x, {reached:.3g}, does not clear chance {chance:g} "
                           f"by {chance_margin:g}")
    transition = not reasons
    verdict = "transition" if transition else f"no transition ({'; '.join(reasons)})"
    decline = detect_late_decline(x, y, rel_tol=decline_rel_tol, direction=direction,
                                  abs_tol=noise_margin * noise_sd(x, y) * math.sqrt(2.0 / 3.0))
    return EmergenceResult(
        fit=fit, comparison=cmp_, transition=transition, verdict=verdict, x0=x0,
        x0_ci=fit.ci.get("x0", (math.nan, math.nan)), x_emergence=10 ** x0,
        x0_in_range=bool(lx.min() <= x0 <= lx.max()), decline=decline, direction=direction,
        reasons=reasons, residual_sd=resid_sd, rise=rise, rise_ci=rise_ci, level_end=level_end,
        level_end_ci=level_ci, chance=chance, chance_margin=chance_margin,
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
