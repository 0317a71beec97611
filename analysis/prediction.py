"""Prediction intervals for extrapolated values from a bootstrapped fit.

A new observation at X is the law at the true parameters plus noise. Its interval combines the
two sources: the fit's bootstrap parameter draws give the spread of the law's value at X, and
each draw is paired with residuals resampled from the full fit (target space, centred and
inflated by sqrt(n / (n − P)) for the P fitted parameters, Davison & Hinkley 1997, §6.3.3). The
interval is the pair of percentiles of these draws, mapped back to the units of y.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.fit import FitResult

__all__ = ["prediction_interval"]


def prediction_interval(fit: FitResult, X: Any, level: float = 0.9, *, draws: int = 4000,
                        seed: int = 0) -> pd.DataFrame:
    """Returns, per row of X, the fitted prediction and a `level` prediction interval (units of y).

    X: (m, k) inputs in the law's input order (or a mapping name -> column). Columns: the inputs,
    "pred" (the full-data fit), "low"/"high" (percentiles of bootstrap law value + residual noise)
    and "conf_low"/"conf_high" (the same without noise: the confidence band of the law itself).
    draws: total (parameter draw, residual) pairs. Needs a fit with successful bootstrap replicates.
    """
    if not 0 < level < 1:
        raise ValueError(f"prediction_interval: level must be in (0, 1), got {level}")
    law = fit.law
    if isinstance(X, pd.DataFrame):
        X = {k: X[k] for k in law.inputs}
    if isinstance(X, dict):
        missing = [k for k in law.inputs if k not in X]
        if missing:
            raise ValueError(f"prediction_interval: X lacks input column(s) {missing} of law {law.name}")
        X = np.column_stack([np.asarray(X[k], dtype=float) for k in law.inputs])
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    if X.shape[1] != len(law.inputs):
        raise ValueError(f"prediction_interval: X needs {len(law.inputs)} columns {law.inputs}, got {X.shape}")
    if fit.boot is None:
        raise ValueError("prediction_interval: the fit has no bootstrap draws (fit with bootstrap > 0)")
    boot = fit.boot[np.all(np.isfinite(fit.boot), axis=1)]
    if len(boot) < 10:
        raise ValueError(f"prediction_interval: {len(boot)} successful bootstrap replicates (need ≥ 10)")
    n, n_par = fit.n_points, len(law.raw_names)
    resid = law.transform(fit.y) - law.transform(fit.predict(fit.X))  # data − fit, target space
    resid = (resid - resid.mean()) * math.sqrt(n / max(n - n_par, 1))
    with np.errstate(all="ignore"):
        t_BM = law.transform(law.predict_many(boot, X))  # (B, m)
    rng = np.random.default_rng(seed)
    per = max(1, math.ceil(draws / len(boot)))
    noise = rng.choice(resid, size=(len(boot), per))  # (B, per)
    draws_DM = (t_BM[:, None, :] + noise[:, :, None]).reshape(-1, X.shape[0])
    lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
    out = pd.DataFrame({k: X[:, j] for j, k in enumerate(law.inputs)})
    out["pred"] = fit.predict(X)
    out["low"] = law.inverse(np.nanpercentile(draws_DM, lo_q, axis=0))
    out["high"] = law.inverse(np.nanpercentile(draws_DM, hi_q, axis=0))
    out["conf_low"] = law.inverse(np.nanpercentile(t_BM, lo_q, axis=0))
    out["conf_high"] = law.inverse(np.nanpercentile(t_BM, hi_q, axis=0))
    return out
