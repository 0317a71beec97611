"""Extrapolation backtest: fit a law on the runs below a size/compute cut, predict the larger ones.

With bootstrap refits (``bootstrap=K``) every held-out row also gets a prediction interval
(`analysis.prediction.prediction_interval`), and the metrics say how many of the held-out values
it covers. `rollout` is the usual check of a scaling study: fit on all but the largest runs and
predict the largest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.catalog import get_law
from analysis.fit import FitResult, fit_law
from analysis.prediction import prediction_interval

__all__ = ["BacktestResult", "backtest", "rollout"]


@dataclass
class BacktestResult:
    """Fit on the small runs and its errors on the held-out large runs."""

    fit: FitResult
    cut_col: str
    cut: float
    # held-out rows: inputs, y, pred, rel_err ((pred − y)/y), log_err (ln pred − ln y); with a
    # bootstrap also low, high (prediction interval, units of y) and covered (low ≤ y ≤ high)
    table: pd.DataFrame
    # mape (fraction), rmse_log, max_abs_rel, mean_rel (bias), n_train, n_test; with a bootstrap
    # also coverage (fraction of held-out rows inside their interval) and level (nominal)
    metrics: dict[str, float]


def backtest(df: pd.DataFrame, *, law: str = "chinchilla", cut_col: str = "C", cut: float | None = None,
             quantile: float = 0.75, x_cols: Sequence[str] | None = None, y_col: str = "loss",
             level: float = 0.9, groups: str | None = None, **fit_kw: Any) -> BacktestResult:
    """Returns the backtest of `law`: fit rows with cut_col ≤ cut (default: its quantile), predict the rest.

    level: nominal coverage of the prediction intervals (when fit_kw asks for a bootstrap);
    groups: a column of run ids for a cluster bootstrap (checkpoints of one run move together).
    """
    for c in [cut_col, y_col] + ([groups] if groups else []) + list(x_cols or []):
        if c not in df.columns:
            raise ValueError(f"backtest: column {c!r} not in the table; columns: {list(df.columns)}")
    lw = get_law(law)
    x_cols = list(x_cols or lw.inputs)
    vals = df[cut_col].to_numpy(float)
    if cut is None:
        cut = float(np.quantile(vals, quantile))
    train, test = df[vals <= cut], df[vals > cut]
    if len(test) == 0:
        raise ValueError(f"backtest: no rows above {cut_col} = {cut:g}")
    if groups is not None:
        fit_kw = {**fit_kw, "groups": train[groups].to_numpy()}
    fit = fit_law(lw, train[x_cols].to_numpy(float), train[y_col].to_numpy(float), **fit_kw)
    y = test[y_col].to_numpy(float)
    pred = fit.predict(test[x_cols].to_numpy(float))
    table = test[list(dict.fromkeys(x_cols + [cut_col]))].copy()
    table["y"], table["pred"] = y, pred
    table["rel_err"] = (pred - y) / y
    with np.errstate(invalid="ignore", divide="ignore"):
        table["log_err"] = np.log(pred) - np.log(y)
    rel = table["rel_err"].to_numpy()
    metrics = {"mape": float(np.mean(np.abs(rel))), "rmse_log": float(np.sqrt(np.nanmean(table["log_err"] ** 2))),
               "max_abs_rel": float(np.max(np.abs(rel))), "mean_rel": float(np.mean(rel)),
               "n_train": float(len(train)), "n_test": float(len(test))}
    if fit.n_bootstrap >= 10:
        pi = prediction_interval(fit, test[x_cols].to_numpy(float), level=level)
        table["low"], table["high"] = pi["low"].to_numpy(), pi["high"].to_numpy()
        table["covered"] = (table["low"] <= y) & (y <= table["high"])
        metrics["coverage"], metrics["level"] = float(table["covered"].mean()), float(level)
    if not all(math.isfinite(v) for v in metrics.values()):
        metrics = {k: (v if math.isfinite(v) else math.nan) for k, v in metrics.items()}
    return BacktestResult(fit=fit, cut_col=cut_col, cut=float(cut), table=table.reset_index(drop=True),
                          metrics=metrics)


def rollout(df: pd.DataFrame, *, law: str = "chinchilla", by: str = "N", bootstrap: int = 200,
            level: float = 0.9, **kw: Any) -> BacktestResult:
    """Returns the backtest that fits every row with `by` below its largest value and predicts the largest.

    by: the size column (e.g. N params or C FLOPs); the held-out rows are the runs at its largest
    distinct value. Metrics include coverage of the `level` prediction intervals (bootstrap refits).
    """
    if by not in df.columns:
        raise ValueError(f"rollout: column {by!r} not in the table; columns: {list(df.columns)}")
    sizes = np.unique(df[by].to_numpy(float))
    if len(sizes) < 2:
        raise ValueError(f"rollout: {by} has {len(sizes)} distinct value(s); need at least 2")
    return backtest(df, law=law, cut_col=by, cut=float(sizes[-2]), bootstrap=bootstrap, level=level, **kw)
