"""Bootstrap resampling for the fitters: row or cluster resamples as weights, and basin screening.

A resample of the points is a vector of per-point counts (weights), so K resamples are K weighted
objectives that one batched L-BFGS call minimizes together (`analysis.fit.fit_law`). This is why
the resampling is written here rather than delegated to `scipy.stats.bootstrap`, which calls a
statistic once per resample: the refits would then run one at a time instead of in one kernel.

Cluster bootstrap: when rows carry a group label (a run id, a seed), whole groups are drawn with
replacement and every row of a drawn group gets the group's count, so the checkpoints of one run
move together instead of being treated as independent points.

Basin screening (the "basins" bootstrap search): every start of the full fit ends in some local
minimum θ_b. Under resample weights w the objective difference to the best minimum θ* is
Δ_w = Σ_i w_i (h_i(θ_b) − h_i(θ*)), with mean Σ_i Δ_i and, for multinomial row counts, variance
n·Var(Δ_i) (groups: G·Var of the group sums). A minimum whose mean disadvantage exceeds z_max
standard deviations essentially never wins a resample; every other minimum is a start of every
bootstrap refit, so the refits search the same basins the full grid found. Minima are told apart
by their predictions at the data points (the resampled objective sees the parameters only through
them): minima on one flat valley of parameter space, with the same predictions, are one basin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["group_codes", "resample_weights", "distinct_per_resample", "competitive_minima",
           "distinct_minima", "percentile_ci"]


def group_codes(groups: Any, n: int) -> np.ndarray:
    """Returns (n,) integer group codes 0..G-1 for per-row labels (n,) or label tuples (n, k)."""
    g = np.asarray(groups, dtype=object)
    if g.ndim == 0 or len(g) != n:
        raise ValueError(f"groups: expected one label per row ({n} rows), got shape {g.shape}")
    if g.ndim == 2:
        labels = pd.Series([tuple(r) for r in g], dtype=object)
    elif g.ndim == 1:
        labels = pd.Series(list(g), dtype=object)
    else:
        raise ValueError(f"groups: expected shape ({n},) or ({n}, k), got {g.shape}")
    if labels.isna().any():
        raise ValueError(f"groups: {int(labels.isna().sum())} rows have no group label")
    return pd.factorize(labels)[0].astype(np.int64)


def resample_weights(n: int, k: int, rng: np.random.Generator, codes: np.ndarray | None = None
                     ) -> np.ndarray:
    """Returns (k, n) bootstrap counts: rows drawn with replacement, or whole groups when codes given."""
    if codes is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=k).astype(float)
    n_groups = int(codes.max()) + 1
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=k)  # (k, G)
    return counts[:, codes].astype(float)


def distinct_per_resample(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Returns (k,) the number of distinct input rows of X that carry positive weight in each resample."""
    _, inv = np.unique(X, axis=0, return_inverse=True)
    inv = np.asarray(inv).ravel()
    onehot = np.zeros((X.shape[0], int(inv.max()) + 1))
    onehot[np.arange(X.shape[0]), inv] = 1.0
    return np.count_nonzero((W > 0).astype(float) @ onehot, axis=1)


def competitive_minima(h_SN: np.ndarray, f_S: np.ndarray, codes: np.ndarray | None = None,
                       z_max: float = 6.0) -> np.ndarray:
    """Returns indices of the minima (rows of per-point losses h_SN) that can win a resample, best first.

    f_S: full-data objective of each minimum (inf: failed start); codes: group codes of a cluster
    bootstrap. A minimum is kept when its mean disadvantage against the best is at most z_max
    standard deviations of that disadvantage over resamples (see the module docstring).
    """
    ok = np.isfinite(f_S) & np.all(np.isfinite(h_SN), axis=1)
    if not ok.any():
        return np.zeros(0, dtype=np.int64)
    best = int(np.argmin(np.where(ok, f_S, np.inf)))
    delta_SN = h_SN - h_SN[best]
    if codes is not None:
        n_groups = int(codes.max()) + 1
        sums = np.zeros((len(f_S), n_groups))
        np.add.at(sums.T, codes, np.where(ok[:, None], delta_SN, 0.0).T)
        delta_SN, m = sums, n_groups
    else:
        m = delta_SN.shape[1]
    with np.errstate(invalid="ignore"):
        mean = np.sum(delta_SN, axis=1)
        sd = np.sqrt(m * np.var(delta_SN, axis=1))
        keep = ok & (mean <= z_max * sd + 1e-12 * (1.0 + np.abs(np.sum(h_SN[best]))))
    keep[best] = True
    idx = np.nonzero(keep)[0]
    return idx[np.argsort(f_S[idx], kind="stable")]


def distinct_minima(v_SF: np.ndarray, f_S: np.ndarray, k: int | None = None,
                    candidates: np.ndarray | None = None, rtol: float = 1e-3, atol: float = 0.0
                    ) -> np.ndarray:
    """Returns indices of up to k minima with finite objective, best first, pairwise distinct.

    v_SF: a feature row per minimum (its parameters, or its predictions at the data points). Two
    minima are the same when every feature differs by at most atol + rtol·(1 + |v|).
    candidates: indices to choose from, in order of preference (default: all, best first).
    """
    order = np.argsort(np.where(np.isfinite(f_S), f_S, np.inf), kind="stable") if candidates is None \
        else np.asarray(candidates, dtype=np.int64)
    chosen: list[int] = []
    for i in order:
        if not np.isfinite(f_S[i]):
            continue
        if not chosen or np.min(np.max(np.abs(v_SF[i] - v_SF[chosen]) - rtol * (1 + np.abs(v_SF[chosen])),
                                       axis=1)) > atol:
            chosen.append(int(i))
        if k is not None and len(chosen) == k:
            break
    return np.array(chosen, dtype=np.int64)


def percentile_ci(samples_KQ: np.ndarray, level: float) -> list[tuple[float, float]]:
    """Returns per-column (low, high) percentile intervals of the finite samples (NaN if none)."""
    lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
    out = []
    for j in range(samples_KQ.shape[1]):
        s = samples_KQ[:, j]
        s = s[np.isfinite(s)]
        out.append((float(np.percentile(s, lo_q)), float(np.percentile(s, hi_q))) if len(s) else
                   (float("nan"), float("nan")))
    return out
