"""Effective data transferred (Hernandez et al. 2021): D_T(N, D_F) = k·D_F^alpha·N^beta.

A model of size N fine-tuned on D_F examples reaches loss L_ft. A model of the same size trained
from scratch on the same task needs D_E(L_ft) examples to reach that loss, read off its fitted
data curve L(D) = E + B·D^-beta_s (law `power-d`, one per N). The data that pre-training was
worth is D_T = D_E(L_ft) − D_F. The law is the plane log D_T = log k + alpha·log D_F + beta·log N,
fitted by least squares over the fine-tuned runs with D_T > 0.

A fine-tuned loss below a size's fitted floor E is better than any from-scratch data size (D_E
infinite); such runs, and runs with D_T <= 0 (no positive transfer), are counted and left out of
the plane. CIs are percentile bootstrap intervals from one resample of all runs that is shared by
the from-scratch fits and the plane (runs drawn with replacement, or whole clusters such as seeds
with `groups`), so the uncertainty of the scratch curves carries into D_T.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import InsufficientData
from analysis.fit import fit_law
from analysis.resample import group_codes, percentile_ci, resample_weights

PARAMS = ("k", "alpha", "beta")
SCRATCH_LAW = "power-d"  # L(D) = E + B·D^-beta


def scratch_data_needed(loss: np.ndarray, E: Any, B: Any, beta: Any) -> np.ndarray:
    """Returns D_E(L) = (B / (L − E))^(1/beta), the from-scratch data (examples or tokens) that
    reaches `loss` (nats) on the curve E + B·D^-beta; +inf where L <= E."""
    loss = np.asarray(loss, dtype=float)
    gap = loss - np.asarray(E, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(gap > 0, (np.asarray(B, float) / np.where(gap > 0, gap, 1.0))
                     ** (1.0 / np.asarray(beta, float)), np.inf)
    return d


def fit_plane(D_F: np.ndarray, N: np.ndarray, D_T: np.ndarray,
              weights: np.ndarray | None = None) -> np.ndarray:
    """Returns (k, alpha, beta) of log D_T = log k + alpha·log D_F + beta·log N by (weighted)
    least squares; NaNs if fewer than 4 distinct (D_F, N) points carry weight or the design is
    singular (one N or one D_F)."""
    w = np.ones(len(D_T)) if weights is None else np.asarray(weights, float)
    ok = np.isfinite(D_T) & (D_T > 0) & (w > 0)
    X = np.column_stack([np.ones(ok.sum()), np.log(D_F[ok]), np.log(N[ok])])
    if len({(a, b) for a, b in zip(D_F[ok], N[ok])}) < 4:
        return np.full(3, np.nan)
    sw = np.sqrt(w[ok])
    coef, _, rank, _ = np.linalg.lstsq(X * sw[:, None], np.log(D_T[ok]) * sw, rcond=None)
    if rank < 3:
        return np.full(3, np.nan)
    return np.array([math.exp(coef[0]), coef[1], coef[2]])


@dataclasses.dataclass
class TransferFit:
    """The fitted transfer law with CIs, the per-run D_T table and the scratch curves per N."""

    params: dict[str, float]  # k (data units), alpha, beta
    ci: dict[str, tuple[float, float]]
    level: float
    points: pd.DataFrame  # fine-tuned runs: N, D_F, loss, D_E, D_T, used
    scratch: dict[float, dict[str, float]]  # N -> {E, B, beta} of its from-scratch curve
    n_bootstrap: int = 0  # successful replicates
    n_bootstrap_failed: int = 0
    n_groups: int | None = None

    def predict(self, D_F: Any, N: Any) -> np.ndarray:
        """Returns k·D_F^alpha·N^beta (data units) at the given fine-tuning data sizes and N."""
        p = self.params
        return p["k"] * np.asarray(D_F, float) ** p["alpha"] * np.asarray(N, float) ** p["beta"]

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serializable description (params, CIs, counts, scratch curves)."""
        used = self.points["used"]
        return {"law": "transfer", "formula": "D_T = k * D_F^alpha * N^beta",
                "params": dict(self.params), "ci": {k: list(v) for k, v in self.ci.items()},
                "level": self.level, "n_points": int(used.sum()),
                "n_below_floor": int(np.isinf(self.points["D_E"]).sum()),
                "n_no_transfer": int((np.isfinite(self.points["D_E"])
                                      & (self.points["D_T"] <= 0)).sum()),
                "n_bootstrap": self.n_bootstrap, "n_bootstrap_failed": self.n_bootstrap_failed,
                "n_groups": self.n_groups,
                "scratch": {str(n): v for n, v in self.scratch.items()}}


def _check(frame: pd.DataFrame, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; has {list(frame.columns)}")
    out = frame.reset_index(drop=True)
    values = out[list(columns)].to_numpy(dtype=float)
    bad = ~np.all(np.isfinite(values) & (values > 0), axis=1)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} row(s) with a missing, non-finite or "
                         f"non-positive {'/'.join(columns)}")
    return out


def fit_transfer(scratch: pd.DataFrame, finetune: pd.DataFrame, *, bootstrap: int = 0,
                 groups: str | None = None, seed: int = 0, level: float = 0.95) -> TransferFit:
    """Returns the effective-data-transferred law fitted to from-scratch and fine-tuned runs.

    scratch: one row per from-scratch run, columns N, D (data size), loss (nats);
    finetune: one row per fine-tuned run, columns N, D_F, loss (same task, same units of data).
    Every N of `finetune` needs from-scratch runs at >= 4 distinct D. bootstrap: K resamples
    of the runs of both tables together; groups: a column both tables hold (e.g. 'seed') whose
    values are drawn as clusters instead of single runs.
    """
    scratch = _check(scratch, "scratch runs", ("N", "D", "loss"))
    finetune = _check(finetune, "fine-tuned runs", ("N", "D_F", "loss"))
    sizes = sorted(set(finetune["N"]))
    curves: dict[float, dict[str, float]] = {}
    fits = {}
    for n in sizes:
        rows = scratch[scratch["N"] == n]
        if rows["D"].nunique() < 4:
            raise InsufficientData(
                f"N={n:g}: the from-scratch curve needs runs at >= 4 distinct data sizes, "
                f"has {rows['D'].nunique()}")
        fits[n] = rows.index.to_numpy()
    n_s, n_f = len(scratch), len(finetune)

    W = None
    n_groups = None
    if bootstrap > 0:
        if groups is not None:
            for name, frame in (("scratch runs", scratch), ("fine-tuned runs", finetune)):
                if groups not in frame.columns:
                    raise ValueError(f"{name}: no column {groups!r} to cluster the bootstrap by")
            labels = list(scratch[groups]) + list(finetune[groups])
        else:
            labels = [("s", i) for i in range(n_s)] + [("f", i) for i in range(n_f)]
        codes = group_codes(np.array(labels, dtype=object), n_s + n_f) \
            if groups is None else group_codes(np.array(labels), n_s + n_f)
        n_groups = int(codes.max()) + 1
        W = resample_weights(n_s + n_f, bootstrap, np.random.default_rng(seed), codes)

    D_E = np.empty(n_f)
    boot_D_E = np.full((bootstrap, n_f), np.nan) if W is not None else None
    for n in sizes:
        idx = fits[n]
        rows = scratch.loc[idx]
        fit = fit_law(SCRATCH_LAW, rows["D"].to_numpy(), rows["loss"].to_numpy(),
                      bootstrap_weights=None if W is None else W[:, idx])
        curves[n] = dict(fit.params)
        ft = (finetune["N"] == n).to_numpy()
        D_E[ft] = scratch_data_needed(finetune.loc[ft, "loss"], **fit.params)
        if W is not None:
            b = fit.boot  # (K, 3): E, B, beta
            boot_D_E[:, ft] = scratch_data_needed(finetune.loc[ft, "loss"].to_numpy()[None, :],
                                                  b[:, [0]], b[:, [1]], b[:, [2]])
    D_F = finetune["D_F"].to_numpy(float)
    N = finetune["N"].to_numpy(float)
    D_T = D_E - D_F
    points = finetune.assign(D_E=D_E, D_T=D_T, used=np.isfinite(D_T) & (D_T > 0))
    est = fit_plane(D_F, N, D_T)
    if not np.all(np.isfinite(est)):
        raise InsufficientData(
            f"the transfer plane needs >= 4 distinct (D_F, N) fine-tuned runs with D_T > 0 over "
            f">= 2 sizes and >= 2 data sizes; {int(points['used'].sum())} runs qualify "
            f"({int(np.isinf(D_E).sum())} below their size's scratch floor, "
            f"{int((np.isfinite(D_T) & (D_T <= 0)).sum())} without positive transfer)")
    ci: dict[str, tuple[float, float]] = {}
    n_ok = n_failed = 0
    if W is not None:
        boot = np.array([fit_plane(D_F, N, boot_D_E[k] - D_F, W[k, n_s:])
                         for k in range(bootstrap)])
        ok = np.all(np.isfinite(boot), axis=1)
        n_ok, n_failed = int(ok.sum()), int((~ok).sum())
        ci = dict(zip(PARAMS, percentile_ci(boot[ok], level))) if n_ok else {}
    return TransferFit(params=dict(zip(PARAMS, map(float, est))), ci=ci, level=level,
                       points=points, scratch=curves, n_bootstrap=n_ok,
                       n_bootstrap_failed=n_failed, n_groups=n_groups)
