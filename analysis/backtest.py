"""Extrapolation backtest: fit a law on the runs below a size/compute cut, predict the larger ones."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.fit import FitResult, fit_law, get_law

__all__ = ["BacktestResult", "backtest"]


@dataclass
class BacktestResult:
    """Fit on the small runs and its errors on the held-out large runs."""

    fit: FitResult
    cut_col: str
    cut: float
    table: pd.DataFrame  # held-out rows: inputs, y, pred, rel_err ((pred − y)/y), log_err (ln pred − ln y)
    metrics: dict[str, float]  # mape (fraction), rmse_log, max_abs_rel, mean_rel (bias), n_train, n_test


def backtest(df: pd.DataFrame, *, law: str = "chinchilla", cut_col: str = "C", cut: float | None = None,
             quantile: float = 0.75, x_cols: Sequence[str] | None = None, y_col: str = "loss",
             **fit_kw: Any) -> BacktestResult:
    """Returns the backtest of `law`: fit rows with cut_col ≤ cut (default: its quantile), predict the rest."""
    lw = get_law(law)
    x_cols = list(x_cols or lw.inputs)
    vals = df[cut_col].to_numpy(float)
    if cut is None:
        cut = float(np.quantile(vals, quantile))
    train, test = df[vals <= cut], df[vals > cut]
    if len(test) == 0:
        raise ValueError(f"backtest: no rows above {cut_col} = {cut:g}")
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
    if not all(math.isfinite(v) for v in metrics.values()):
        metrics = {k: (v if math.isfinite(v) else math.nan) for k, v in metrics.items()}
    return BacktestResult(fit=fit, cut_col=cut_col, cut=float(cut), table=table.reset_index(drop=True),
                          metrics=metrics)
