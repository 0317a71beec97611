"""Compute-optimal scaling from training runs: Hoffmann et al. approaches 1 and 2.

Approach 1 (`approach1`): the loss frontier over all checkpoints of all runs — for log-spaced FLOP
bins, the lowest loss reached at that compute — gives (C, N, D) on the frontier, and
ln N_opt = ln k + a·ln C, ln D_opt = ln k_D + b·ln C are fitted by least squares. CIs: bootstrap
over runs (a resample redraws whole runs, since checkpoints of one run are correlated).

Approach 2 (`approach2`, IsoFLOP): runs are grouped by their sweep's budget axis (`budget`, e.g. the
run.json axis "C_budget"); runs without it fall back to grouping measured C within rel_tol. For each
budget C, the minimum of ln(loss) over ln N — by an
Akima spline (scipy.interpolate.Akima1DInterpolator) on a fine grid, or by a parabola — is N*(C);
budgets whose minimum sits at an end of the grid are dropped; ln N* = ln k + a·ln C is fitted by
least squares (as Porian et al. 2024). CIs: bootstrap resampling the models within each budget
(default) or the kept budgets themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.interpolate import Akima1DInterpolator

from analysis.errors import InsufficientData

__all__ = ["LogLogFit", "fit_loglog", "group_budgets", "budget_groups", "isoflop_optima", "IsoFlopResult", "approach2",
           "loss_frontier", "Approach1Result", "approach1"]


@dataclass
class LogLogFit:
    """ln y = ln k + a·ln C fitted by least squares, with bootstrap percentile CIs."""

    a: float  # exponent (dimensionless)
    k: float  # coefficient (units of y per FLOP^a)
    ci_a: tuple[float, float] = (math.nan, math.nan)
    ci_k: tuple[float, float] = (math.nan, math.nan)
    n: int = 0
    r2: float = math.nan
    boot_a: np.ndarray | None = None
    level: float = 0.95

    def predict(self, C: Any) -> np.ndarray:
        """Returns k·C^a (units of y) at budgets C (FLOPs)."""
        return self.k * np.power(np.asarray(C, dtype=float), self.a)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serializable dict of the fit."""
        return {"a": self.a, "k": self.k, "ci_a": list(self.ci_a), "ci_k": list(self.ci_k),
                "n": self.n, "r2": self.r2, "level": self.level}


def _wls(lc: np.ndarray, ly: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of ly on lc for each row of w; returns (slopes, intercepts)."""
    sw = w.sum(axis=-1)
    mx = (w * lc).sum(axis=-1) / sw
    my = (w * ly).sum(axis=-1) / sw
    cov = (w * (lc - mx[..., None]) * (ly - my[..., None])).sum(axis=-1)
    var = (w * (lc - mx[..., None]) ** 2).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = cov / var
    return slope, my - slope * mx


def fit_loglog(C: Any, y: Any, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> LogLogFit:
    """Returns the least-squares fit of ln y = ln k + a ln C with pairs-bootstrap CIs (vectorized)."""
    lc, ly = np.log(np.asarray(C, dtype=float)), np.log(np.asarray(y, dtype=float))
    ok = np.isfinite(lc) & np.isfinite(ly)
    lc, ly = lc[ok], ly[ok]
    n = len(lc)
    if n < 2:
        raise InsufficientData(f"fit_loglog: need at least 2 points, got {n}")
    a, b = _wls(lc, ly, np.ones(n))
    resid = ly - (a * lc + b)
    sst = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / sst if sst > 0 else math.nan
    out = LogLogFit(a=float(a), k=float(np.exp(b)), n=n, r2=r2, level=level)
    if bootstrap > 0 and n >= 3:
        rng = np.random.default_rng(seed)
        W = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(float)
        sa, sb = _wls(lc, ly, W)
        good = np.isfinite(sa)
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        out.boot_a = sa[good]
        out.ci_a = (float(np.percentile(sa[good], lo)), float(np.percentile(sa[good], hi)))
        kk = np.exp(sb[good])
        out.ci_k = (float(np.percentile(kk, lo)), float(np.percentile(kk, hi)))
    return out


def group_budgets(C: Any, rel_tol: float = 0.02) -> np.ndarray:
    """Returns an integer budget label per point: FLOP values within rel_tol of their neighbours share one."""
    lc = np.log(np.asarray(C, dtype=float))
    order = np.argsort(lc, kind="stable")
    labels = np.empty(len(lc), dtype=int)
    cur, prev = 0, None
    for i in order:
        if prev is not None and lc[i] - prev > math.log1p(rel_tol):
            cur += 1
        labels[i] = cur
        prev = lc[i]
    return labels


def budget_groups(C: Any, budget: Any | None = None, rel_tol: float = 0.02
                  ) -> list[tuple[np.ndarray, float, str]]:
    """Returns one (point indices, budget C in FLOPs, "axis" | "tolerance") per IsoFLOP budget.

    Points with a finite `budget` (the sweep's budget axis) are grouped by it exactly and the group's
    C is that budget; the rest (no axis) fall back to `group_budgets` on measured C within rel_tol,
    their C the geometric mean.
    """
    C = np.asarray(C, dtype=float)
    b = np.full(len(C), np.nan) if budget is None else np.asarray(budget, dtype=float)
    if b.shape != C.shape:
        raise ValueError(f"budget has {b.shape} values for {C.shape} points")
    groups: list[tuple[np.ndarray, float, str]] = []
    has = np.isfinite(b)
    for v in np.unique(b[has]):
        groups.append((np.nonzero(has & (b == v))[0], float(v), "axis"))
    rest = np.nonzero(~has)[0]
    if len(rest):
        labels = group_budgets(C[rest], rel_tol)
        for lab in np.unique(labels):
            idx = rest[labels == lab]
            groups.append((idx, float(np.exp(np.mean(np.log(C[idx])))), "tolerance"))
    return sorted(groups, key=lambda g: g[1])


def _budget_optimum(lnN: np.ndarray, lnL: np.ndarray, lnD: np.ndarray | None, c_b: float, method: str,
                    grid_size: int, min_points: int, flops_per_token: tuple[float, float] | None = None):
    """Returns (n_star, d_star, loss_star, reason, grid, curve) for one budget ("" reason = kept)."""
    order = np.argsort(lnN, kind="stable")
    lnN, lnL = lnN[order], lnL[order]
    ux, inv = np.unique(lnN, return_inverse=True)  # average duplicate sizes
    cnt = np.bincount(inv)
    uy = np.bincount(inv, weights=lnL) / cnt
    nan = math.nan
    if len(ux) < min_points:
        return nan, nan, nan, f"only {len(ux)} model sizes (< {min_points})", None, None
    grid = np.linspace(ux[0], ux[-1], grid_size)
    if method == "akima":
        yy = Akima1DInterpolator(ux, uy)(grid)
        i = int(np.nanargmin(yy))
        at_end = i == 0 or i == len(grid) - 1
        x_star, y_star = grid[i], yy[i]
    elif method == "parabola":
        # quadratic through the (up to) 5 sizes centred on the lowest measured loss
        j = int(np.argmin(uy))
        lo_i = max(0, min(j - 2, len(ux) - 5))
        sel = slice(lo_i, lo_i + 5)
        c2, c1, c0 = np.polyfit(ux[sel], uy[sel], 2)
        yy = np.polyval([c2, c1, c0], grid)
        x_star = -c1 / (2 * c2) if c2 > 0 else nan
        at_end = not (c2 > 0 and ux[0] < x_star < ux[-1])
        y_star = float(np.polyval([c2, c1, c0], x_star)) if not at_end else nan
    else:
        raise ValueError(f"method must be 'akima' or 'parabola', got {method!r}")
    if at_end:
        return nan, nan, nan, "minimum at an end of the sampled N range", grid, yy
    if lnD is not None:
        ud = np.bincount(inv, weights=lnD[order]) / cnt
        d_star = float(np.exp(np.interp(x_star, ux, ud)))
    elif flops_per_token is not None:
        k, gamma = flops_per_token
        d_star = c_b / (k * float(np.exp(x_star)) ** gamma)
    else:
        d_star = nan
    return float(np.exp(x_star)), d_star, float(np.exp(y_star)), "", grid, yy


def isoflop_optima(C: Any, N: Any, loss: Any, D: Any | None = None, *, method: str = "akima",
                   grid_size: int = 1000, rel_tol: float = 0.02, min_points: int = 3,
                   budget: Any | None = None, flops_per_token: tuple[float, float] | None = None
                   ) -> tuple[pd.DataFrame, dict[float, tuple[np.ndarray, np.ndarray]]]:
    """Returns per-budget optima (C FLOPs, grouping, N_star params, D_star tokens, loss_star, kept, reason) and curves.

    Budgets come from `budget_groups` (the sweep's budget axis `budget` where given, else measured C
    within rel_tol; column "grouping" says which).
    The curves dict maps each budget C to (N grid, interpolated loss) for plotting.
    method: "akima" (spline of ln loss vs ln N, argmin on a grid of grid_size points) or "parabola"
    (least-squares quadratic of ln loss in ln N through the 5 sizes centred on the lowest loss; its
    vertex, dropped if outside the sampled range).
    D_star interpolates ln D linearly in ln N when D is given, else C/(k·N_star^gamma) with
    (k, gamma) = flops_per_token, else NaN (no FLOPs-per-token convention is assumed).
    """
    if method not in ("akima", "parabola"):
        raise ValueError(f"method must be 'akima' or 'parabola', got {method!r}")
    C = np.asarray(C, dtype=float)
    lnN = np.log(np.asarray(N, dtype=float))
    lnL = np.log(np.asarray(loss, dtype=float))
    lnD = None if D is None else np.log(np.asarray(D, dtype=float))
    rows, curves = [], {}
    for idx, c_b, how in budget_groups(C, budget, rel_tol):
        n_s, d_s, l_s, reason, grid, yy = _budget_optimum(
            lnN[idx], lnL[idx], None if lnD is None else lnD[idx], c_b, method, grid_size, min_points,
            flops_per_token)
        if grid is not None:
            curves[c_b] = (np.exp(grid), np.exp(yy))
        rows.append({"C": c_b, "grouping": how, "n_points": len(np.unique(lnN[idx])), "N_star": n_s,
                     "D_star": d_s, "loss_star": l_s, "kept": reason == "", "reason": reason})
    return pd.DataFrame(rows), curves


@dataclass
class IsoFlopResult:
    """Approach 2: per-budget optima, and N*(C) ∝ C^a, D*(C) ∝ C^b fits with CIs (d_fit None without D)."""

    optima: pd.DataFrame
    n_fit: LogLogFit
    d_fit: LogLogFit | None
    curves: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    method: str = "akima"

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serializable summary (exponents, coefficients, CIs, budgets used)."""
        return {"method": self.method, "N_opt": self.n_fit.to_dict(),
                "D_opt": None if self.d_fit is None else self.d_fit.to_dict(),
                "budgets_kept": int(self.optima["kept"].sum()), "budgets_total": len(self.optima),
                "grouping": sorted(set(self.optima["grouping"]))}


def approach2(C: Any, N: Any, loss: Any, D: Any | None = None, *, method: str = "akima",
              grid_size: int = 1000, bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
              rel_tol: float = 0.02, ci_method: str = "points", budget: Any | None = None,
              flops_per_token: tuple[float, float] | None = None) -> IsoFlopResult:
    """Returns the IsoFLOP (approach 2) fit: N*(C) = k·C^a (params), D*(C) = k_D·C^b (tokens), with CIs.

    budget: each point's value of the sweep's budget axis (FLOPs; NaN where a run has none), see
    `budget_groups`. D*(C) needs D or flops_per_token = (k, gamma) (C = k·N^gamma·D); without
    either, d_fit is None.

    ci_method "points": each bootstrap replicate resamples the models within every budget (with
    replacement), redoes the per-budget minima (dropping edge minima) and the line fit, so the CIs
    include the uncertainty of each argmin; "budgets": pairs bootstrap over the kept (C, N*) optima.
    """
    optima, curves = isoflop_optima(C, N, loss, D, method=method, grid_size=grid_size, rel_tol=rel_tol,
                                    budget=budget, flops_per_token=flops_per_token)
    kept = optima[optima["kept"]]
    if len(kept) < 2:
        raise InsufficientData(f"approach2: {len(kept)} budgets with an interior minimum; need at least 2")
    with_d = D is not None or flops_per_token is not None
    if ci_method not in ("points", "budgets"):
        raise ValueError(f"ci_method must be 'points' or 'budgets', got {ci_method!r}")
    boot_budgets = bootstrap if ci_method == "budgets" else 0
    nf = fit_loglog(kept["C"], kept["N_star"], bootstrap=boot_budgets, seed=seed, level=level)
    df = fit_loglog(kept["C"], kept["D_star"], bootstrap=boot_budgets, seed=seed, level=level) if with_d else None
    if ci_method == "points" and bootstrap > 0:
        Cv, Nv, Lv = (np.asarray(v, dtype=float) for v in (C, N, loss))
        Dv = None if D is None else np.asarray(D, dtype=float)
        grouped = budget_groups(Cv, budget, rel_tol)
        groups = [g for g, _, _ in grouped]
        cbs = [c for _, c, _ in grouped]
        lnN, lnL = np.log(Nv), np.log(Lv)
        lnD = None if Dv is None else np.log(Dv)
        rng = np.random.default_rng(seed)
        sa, sb = [], []
        for _ in range(bootstrap):
            lc, ln_, ld_ = [], [], []
            for g, c_b in zip(groups, cbs):
                i = rng.choice(g, size=len(g), replace=True)
                n_s, d_s, _, reason, _, _ = _budget_optimum(
                    lnN[i], lnL[i], None if lnD is None else lnD[i], c_b, method, grid_size, 3,
                    flops_per_token)
                if not reason:
                    lc.append(math.log(c_b))
                    ln_.append(math.log(n_s))
                    ld_.append(math.log(d_s) if with_d else math.nan)
            if len(lc) >= 2:
                lc_a = np.array(lc)
                sa.append(_wls(lc_a, np.array(ln_), np.ones(len(lc)))[0])
                sb.append(_wls(lc_a, np.array(ld_), np.ones(len(lc)))[0])
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        for fit, arr in ((nf, np.asarray(sa, dtype=float)), (df, np.asarray(sb, dtype=float))):
            if fit is None:
                continue
            arr = arr[np.isfinite(arr)]
            if len(arr):
                fit.boot_a = arr
                fit.ci_a = (float(np.percentile(arr, lo)), float(np.percentile(arr, hi)))
    return IsoFlopResult(optima=optima, n_fit=nf, d_fit=df, curves=curves, method=method)


def loss_frontier(C: Any, loss: Any, N: Any | None = None, D: Any | None = None,
                  run: Any | None = None, n_bins: int = 40) -> pd.DataFrame:
    """Returns the loss frontier: per log-spaced FLOP bin, the lowest-loss point (C, loss, N, D, run).

    Only points that improve on every lower-compute frontier point are kept (monotone envelope).
    """
    C = np.asarray(C, dtype=float)
    loss = np.asarray(loss, dtype=float)
    n = len(C)
    N = np.full(n, np.nan) if N is None else np.asarray(N, dtype=float)
    D = np.full(n, np.nan) if D is None else np.asarray(D, dtype=float)
    run = np.full(n, "", dtype=object) if run is None else np.asarray(run, dtype=object)
    ok = np.isfinite(C) & np.isfinite(loss) & (C > 0)
    C, loss, N, D, run = C[ok], loss[ok], N[ok], D[ok], run[ok]
    if len(C) == 0:
        return pd.DataFrame(columns=["C", "loss", "N", "D", "run"])
    lc = np.log10(C)
    edges = np.linspace(lc.min(), lc.max() + 1e-12, n_bins + 1)
    b = np.clip(np.searchsorted(edges, lc, side="right") - 1, 0, n_bins - 1)
    rows = []
    for k in np.unique(b):
        idx = np.nonzero(b == k)[0]
        i = idx[np.argmin(loss[idx])]
        rows.append((C[i], loss[i], N[i], D[i], run[i]))
    fr = pd.DataFrame(rows, columns=["C", "loss", "N", "D", "run"]).sort_values("C")
    keep, best = [], math.inf
    for v in fr["loss"]:
        keep.append(v < best)
        best = min(best, v)
    return fr[np.array(keep)].reset_index(drop=True)


@dataclass
class Approach1Result:
    """Approach 1: loss frontier and N_opt(C) ∝ C^a, D_opt(C) ∝ C^b fitted on it, with CIs."""

    frontier: pd.DataFrame
    n_fit: LogLogFit
    d_fit: LogLogFit

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serializable summary."""
        return {"N_opt": self.n_fit.to_dict(), "D_opt": self.d_fit.to_dict(),
                "frontier_points": len(self.frontier)}


def approach1(C: Any, loss: Any, N: Any, D: Any, run: Any | None = None, *, n_bins: int = 40,
              bootstrap: int = 200, seed: int = 0, level: float = 0.95) -> Approach1Result:
    """Returns approach 1: the frontier and ln N_opt, ln D_opt vs ln C fits (CIs: bootstrap over runs).

    Pass evaluation loss at checkpoints (e.g. val/loss rows), not per-batch training loss: the
    frontier takes a minimum per FLOP bin, and a minimum over noisy batch losses is biased low.
    """
    C, loss, N, D = (np.asarray(v, dtype=float) for v in (C, loss, N, D))
    run = np.arange(len(C)).astype(str).astype(object) if run is None else np.asarray(run, dtype=object)
    fr = loss_frontier(C, loss, N, D, run, n_bins=n_bins)
    if len(fr) < 2:
        raise InsufficientData("approach1: fewer than 2 frontier points")
    nf = fit_loglog(fr["C"], fr["N"], bootstrap=0)
    df = fit_loglog(fr["C"], fr["D"], bootstrap=0)
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        runs = np.unique(run.astype(str))
        by_run = {r: np.nonzero(run.astype(str) == r)[0] for r in runs}
        sa, sb = [], []
        for _ in range(bootstrap):
            pick = rng.choice(runs, size=len(runs), replace=True)
            idx = np.concatenate([by_run[r] for r in pick])
            f2 = loss_frontier(C[idx], loss[idx], N[idx], D[idx], run[idx], n_bins=n_bins)
            if len(f2) >= 2 and f2["C"].nunique() >= 2:
                sa.append(_wls(np.log(f2["C"].to_numpy()), np.log(f2["N"].to_numpy()), np.ones(len(f2)))[0])
                sb.append(_wls(np.log(f2["C"].to_numpy()), np.log(f2["D"].to_numpy()), np.ones(len(f2)))[0])
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        sa, sb = np.asarray(sa, dtype=float), np.asarray(sb, dtype=float)
        sa, sb = sa[np.isfinite(sa)], sb[np.isfinite(sb)]
        if len(sa):
            nf.ci_a, nf.boot_a = (float(np.percentile(sa, lo)), float(np.percentile(sa, hi))), sa
        if len(sb):
            df.ci_a, df.boot_a = (float(np.percentile(sb, lo)), float(np.percentile(sb, hi))), sb
    return Approach1Result(frontier=fr, n_fit=nf, d_fit=df)
