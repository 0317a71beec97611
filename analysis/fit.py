"""Fitting scaling laws: multi-start L-BFGS on a robust loss, vectorized over starts and bootstraps.

Approach 3 of Hoffmann et al. (2022) (`fit_chinchilla`): minimize Σ_i Huber_δ(LSE(a − α ln N_i,
b − β ln D_i, e) − ln L_i) with δ = 1e-3 (A = e^a, B = e^b, E = e^e), by L-BFGS with exact JAX
gradients from every point of their grid α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1},
a, b ∈ {0, 5, …, 25} (4,500 starts, one batched jit call); the best final objective wins.

Every other law (`analysis.catalog.LAWS`) is fitted the same way: a robust loss on residuals in a "target space"
(ln y for losses, ln(1+y) for BNSL as in Caballero et al., y itself for sigmoids), a data-scaled
grid of starts, batched L-BFGS, best start wins.

Bootstrap: a resample of the points (or, with ``groups``, of whole runs) is a vector of per-point
counts, so K resamples are K weighted objectives, all minimized in one batched call
(`analysis.resample`). Each refit starts from every distinct minimum of the full fit's grid that
could win a resample (``bootstrap_search="basins"``), or from the whole start grid
(``"grid"``, the reference it is tested against). A replicate fails when its best refit did not
converge or its resample has fewer distinct inputs than parameters + 1; failures are counted and
excluded from the CIs, which are percentile intervals.

Points are put in a canonical order (sorted by inputs, then target) before fitting, so fits —
bootstrap draws included — do not depend on the order in which points are given.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis import laws as L
from analysis._optim import batched_lbfgs
from analysis.catalog import LAWS, get_law
from analysis.errors import InsufficientData
from analysis.law_spec import Law, predict_target, predict_target_many
from analysis.loss_laws import CHINCHILLA, KAPLAN_N, KAPLAN_ND, bnsl_law
from analysis.resample import (competitive_minima, distinct_minima, distinct_per_resample, group_codes,
                               percentile_ci, resample_weights)
from analysis.stage_laws import SIGMOID

__all__ = [
    "FitResult", "huber", "objective_value", "fit_law", "fit_chinchilla", "fit_power_law", "fit_kaplan",
    "fit_bnsl", "fit_sigmoid", "chinchilla_params", "compute_optimal_ci", "fit_flops_per_token",
]


# ----------------------------------------------------------------------------- loss


def huber(r: Any, delta: float) -> Any:
    """Returns the Huber loss of residuals r (0.5·r² inside ±delta, delta·(|r| − delta/2) outside)."""
    xp = jnp if isinstance(r, jax.Array) else np
    if math.isinf(delta):
        return 0.5 * r * r
    a = xp.abs(r)
    return xp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


# ----------------------------------------------------------------------------- objective


class _Objective:
    """Scaled fit objective f(raw, (X, t, w)) = Σ w·Huber_δ(r)/(δ·Σw) (Σ w·r²/2/Σw if δ = inf).

    For laws whose target-space prediction is a log-sum-exp of terms linear in the raw parameters
    (``lse_terms``) the gradient is written out by hand (about 2-3x faster than autodiff here).
    """

    def __init__(self, predict_t: Callable, delta: float, lse_terms: tuple | None, n_params: int):
        self.predict_t, self.delta, self.lse_terms, self.n_params = predict_t, delta, lse_terms, n_params
        self.scale = 1.0 if math.isinf(delta) else 1.0 / delta
        self.value_and_grad = self._manual_vg if lse_terms else jax.value_and_grad(self)

    def __call__(self, th: jax.Array, data: tuple) -> jax.Array:
        X, t, w = data
        r = self.predict_t(th, X) - t
        return self.scale * jnp.sum(w * huber(r, self.delta)) / jnp.sum(w)

    def _manual_vg(self, th: jax.Array, data: tuple) -> tuple[jax.Array, jax.Array]:
        X, t, w = data
        lx = jnp.log(X)
        us = [th[c] - th[sl] * lx[:, col] if sl is not None else jnp.broadcast_to(th[c], t.shape)
              for c, sl, col in self.lse_terms]
        m = us[0]
        for u in us[1:]:
            m = jnp.maximum(m, u)
        es = [jnp.exp(u - m) for u in us]
        tot = es[0]
        for e in es[1:]:
            tot = tot + e
        r = m + jnp.log(tot) - t
        if math.isinf(self.delta):
            h, hp = 0.5 * r * r, r
        else:
            a = jnp.abs(r)
            h = jnp.where(a <= self.delta, 0.5 * r * r, self.delta * (a - 0.5 * self.delta))
            hp = jnp.clip(r, -self.delta, self.delta)
        k = self.scale / jnp.sum(w)
        coef = k * w * hp / tot
        grads = [jnp.zeros((), th.dtype)] * self.n_params
        for (c, sl, col), e in zip(self.lse_terms, es):
            gj = coef * e
            grads[c] = grads[c] + jnp.sum(gj)
            if sl is not None:
                grads[sl] = grads[sl] - jnp.sum(gj * lx[:, col])
        return k * jnp.sum(w * h), jnp.stack(grads)


@functools.lru_cache(maxsize=None)
def _objective_cached(predict_t: Callable, delta: float, lse_terms: tuple | None,
                      n_params: int) -> _Objective:
    return _Objective(predict_t, delta, lse_terms, n_params)


def _objective(law: "Law", delta: float) -> _Objective:
    """Returns the (cached, so compiled kernels are reused) objective of a law for a delta."""
    return _objective_cached(law.predict_t, float(delta), law.lse_terms, len(law.raw_names))


def objective_value(law: Law, raw: np.ndarray, X: np.ndarray, y: np.ndarray,
                    delta: float | None = None, weights: np.ndarray | None = None) -> float:
    """Returns Σ_i w_i·Huber_δ(r_i) for target-space residuals r_i (the reported fit objective)."""
    delta = law.delta if delta is None else delta
    X = np.atleast_2d(np.asarray(X, dtype=float))
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    pred = predict_target(law, raw, X)
    return float(np.sum(w * huber(pred - law.transform(y), delta)))


# ----------------------------------------------------------------------------- results


@dataclass
class FitResult:
    """A fitted law: best parameters, objective, and bootstrap percentile CIs."""

    law: Law
    params: dict[str, float]  # natural parameters
    raw: np.ndarray  # optimized (raw) parameters
    objective: float  # Σ Huber_δ (or Σ ½r²) of target-space residuals at the optimum
    rms: float  # RMS of target-space residuals (e.g. RMS of ln L)
    n_points: int
    delta: float
    n_starts: int
    n_converged: int  # starts stopped by the gradient / relative-change test (not maxiter or a failed search)
    n_iterations: int  # objective evaluations summed over starts
    start_objectives: np.ndarray  # final objective of every start (same units as objective)
    converged: bool = True  # the best start met the convergence test
    n_distinct: int = 0  # distinct input rows
    # (K, Q) natural parameters of the bootstrap refits, in resample order; NaN rows: failed replicates
    boot: np.ndarray | None = None
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    level: float = 0.95
    X: np.ndarray | None = None  # inputs (canonical order)
    y: np.ndarray | None = None
    n_bootstrap_requested: int = 0  # resamples drawn
    n_bootstrap: int = 0  # successful replicates (the ones the CIs use)
    n_bootstrap_failed: int = 0  # requested − successful: unconverged refits or degenerate resamples
    n_bootstrap_degenerate: int = 0  # of the failed: resamples with < parameters + 1 distinct inputs
    bootstrap_search: str = ""  # "basins" or "grid" (see fit_law)
    n_bootstrap_starts: int = 0  # starts of every bootstrap refit
    n_groups: int | None = None  # clusters resampled (None: rows)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Returns the fitted law's prediction (units of y) at inputs X (n, len(inputs))."""
        return self.law.predict(self.params, X)

    def residuals(self) -> np.ndarray:
        """Returns target-space residuals (prediction − data) at the fitted points."""
        return self.law.transform(self.predict(self.X)) - self.law.transform(self.y)

    def summary(self) -> pd.DataFrame:
        """Returns one row per parameter: estimate, CI low/high (percentile bootstrap), replicate counts."""
        rows = []
        for k, v in self.params.items():
            lo, hi = self.ci.get(k, (math.nan, math.nan))
            rows.append({"param": k, "estimate": v, "ci_low": lo, "ci_high": hi,
                         "n_bootstrap": self.n_bootstrap, "n_bootstrap_failed": self.n_bootstrap_failed})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serializable description (law, params, CIs, objective, counts)."""
        return {
            "law": self.law.name, "formula": self.law.formula, "params": dict(self.params),
            "ci": {k: list(v) for k, v in self.ci.items()}, "level": self.level,
            "objective": self.objective, "rms_residual": self.rms, "n_points": self.n_points,
            "delta": None if math.isinf(self.delta) else self.delta, "target": self.law.target,
            "n_starts": self.n_starts, "n_converged": self.n_converged, "converged": self.converged,
            "n_distinct": self.n_distinct, "n_bootstrap_requested": self.n_bootstrap_requested,
            "n_bootstrap": self.n_bootstrap, "n_bootstrap_failed": self.n_bootstrap_failed,
            "n_bootstrap_degenerate": self.n_bootstrap_degenerate,
            "bootstrap_search": self.bootstrap_search, "n_bootstrap_starts": self.n_bootstrap_starts,
            "n_groups": self.n_groups,
        }


def _canonical(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    keys = [y] + [X[:, j] for j in range(X.shape[1] - 1, -1, -1)]
    return np.lexsort(keys)


def _as_X(X: Any, law: Law) -> np.ndarray:
    if isinstance(X, Mapping):
        X = np.column_stack([np.asarray(X[k], dtype=float) for k in law.inputs])
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    if X.shape[1] != len(law.inputs):
        raise ValueError(f"{law.name}: X needs {len(law.inputs)} columns {law.inputs}, got {X.shape}")
    return X


def fit_law(law: Law | str, X: Any, y: Any, *, delta: float | None = None,
            init: np.ndarray | None = None, bootstrap: int = 0, bootstrap_starts: int = 32,
            seed: int = 0, level: float = 0.95, maxiter: int = 3000,
            bootstrap_weights: np.ndarray | None = None, groups: Any = None,
            bootstrap_search: str = "basins", basin_z: float = 6.0) -> FitResult:
    """Returns the best multi-start fit of a law to (X, y), with bootstrap percentile CIs if asked.

    X: (n, k) inputs in the law's input order (or a mapping name -> column); y: (n,) values.
    delta: Huber delta in target space (default: the law's; math.inf = least squares).
    init: (S, P) raw starts replacing the law's grid (e.g. one row for a naive single-start fit).
    bootstrap: number K of resamples (points drawn with replacement, as multinomial weights).
    groups: (n,) labels (or (n, k) label tuples, e.g. run id and seed): the bootstrap resamples
      whole groups, so rows of one run (its checkpoints) move together.
    bootstrap_weights: (K, n) resample counts in the caller's point order (e.g. shared by several
      fits for a paired bootstrap); overrides ``bootstrap`` and ``groups``.
    bootstrap_search: "basins" (default): every refit starts from each distinct minimum the full
      grid reached that can win a resample (mean disadvantage ≤ basin_z standard deviations over
      resamples), at most ``bootstrap_starts`` of them, best first; "grid": every refit starts from
      the whole start grid (exact, len(grid) times the work).
    """
    law = get_law(law) if isinstance(law, str) else law
    if bootstrap_search not in ("basins", "grid"):
        raise ValueError(f"bootstrap_search: expected 'basins' or 'grid', got {bootstrap_search!r}")
    X = _as_X(X, law)
    y = np.asarray(y, dtype=float).ravel()
    if len(y) != len(X):
        raise ValueError(f"{law.name}: {len(X)} input rows but {len(y)} values")
    codes = None if groups is None or bootstrap_weights is not None else group_codes(groups, len(y))
    ok = np.all(np.isfinite(X), axis=1) & np.isfinite(y)
    if law.target == "log":
        ok &= y > 0
    ok &= law.valid_inputs(X)  # every form takes logarithms of its (positive) inputs
    X, y = X[ok], y[ok]
    if bootstrap_weights is not None:
        bw = np.atleast_2d(np.asarray(bootstrap_weights, dtype=float))
        if bw.shape[1] != len(ok):
            raise ValueError(f"bootstrap_weights has {bw.shape[1]} columns for {len(ok)} points")
        bw = bw[:, ok]
    n, n_par = len(y), len(law.raw_names)
    n_distinct = len(np.unique(X, axis=0)) if n else 0
    if n_distinct < n_par + 1:
        raise InsufficientData(f"{law.name}: {n_distinct} distinct input points ({n} usable rows) for "
                         f"{n_par} parameters; a fit needs at least {n_par + 1} distinct points")
    order = _canonical(X, y)
    X, y = X[order], y[order]
    if codes is not None:
        codes = np.unique(codes[ok][order], return_inverse=True)[1].ravel()
        if codes.max() < 1 and bootstrap > 0:
            raise ValueError(f"{law.name}: groups: a cluster bootstrap needs at least 2 groups, got 1")
    if bootstrap_weights is not None:
        bw = bw[:, order]
        bootstrap = len(bw)
    t = law.transform(y)
    delta = law.delta if delta is None else float(delta)
    fun = _objective(law, delta)
    starts = np.atleast_2d(law.init(X, y) if init is None else np.asarray(init, dtype=float))
    res = batched_lbfgs(fun, starts, X, t, None, maxiter=maxiter)
    f_all = np.where(np.isfinite(res.f), res.f, np.inf)
    best = int(np.argmin(f_all))
    if not np.isfinite(f_all[best]):
        raise RuntimeError(f"{law.name}: every start diverged")
    raw = res.x[best]
    nat = law.to_natural(raw)
    resid = np.asarray(law.transform(law.predict(nat, X))) - t
    scale = 1.0 if math.isinf(delta) else delta
    out = FitResult(
        law=law, params={k: float(v) for k, v in zip(law.param_names, nat)}, raw=raw,
        objective=objective_value(law, raw, X, y, delta), rms=float(np.sqrt(np.mean(resid ** 2))),
        n_points=n, delta=delta, n_starts=len(starts), n_converged=int(np.sum(res.converged)),
        n_iterations=int(np.sum(res.iterations)), start_objectives=f_all * scale * n,
        converged=bool(res.converged[best]), n_distinct=n_distinct, level=level, X=X, y=y,
    )
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        W = bw if bootstrap_weights is not None else resample_weights(n, bootstrap, rng, codes)  # (K, n)
        if bootstrap_search == "grid":
            seeds = starts
        else:
            pred_SN = predict_target_many(law, res.x, X)
            cand = competitive_minima(np.asarray(huber(pred_SN - t, delta)), f_all, codes, basin_z)
            # one basin: predictions within 1e-3 of the residual RMS everywhere (or 1e-9 if exact)
            tol = 1e-3 * out.rms + 1e-9
            seeds = res.x[distinct_minima(pred_SN, f_all, bootstrap_starts, candidates=cand, rtol=0.0,
                                          atol=tol)]
        m = len(seeds)
        x0 = np.tile(seeds, (bootstrap, 1))  # lane = k*m + j
        bres = batched_lbfgs(fun, x0, X, t, np.repeat(W, m, axis=0), maxiter=maxiter)
        bf = np.where(np.isfinite(bres.f), bres.f, np.inf).reshape(bootstrap, m)
        pick = np.argmin(bf, axis=1)
        rows = np.arange(bootstrap)
        braw = bres.x.reshape(bootstrap, m, -1)[rows, pick]
        degenerate = distinct_per_resample(W, X) < n_par + 1
        failed = ~np.isfinite(bf[rows, pick]) | ~bres.converged.reshape(bootstrap, m)[rows, pick] | degenerate
        # Every informative resample weighing the points alike, e.g. n = parameters + 1 points,
        # where only a resample holding each point once is not degenerate: their refits all
        # reproduce the point estimate, a zero-width interval that says nothing. No CI. Judged
        # first on the resamples themselves (whether or not the optimizer reported convergence at
        # a start that already is the optimum), then on the refits that survived.
        for informative in (~degenerate, ~failed):
            if informative.any() and len(np.unique(W[informative], axis=0)) < 2:
                degenerate |= informative
                failed |= degenerate
        boot = law.to_natural(braw)
        boot[failed] = np.nan
        out.boot = boot
        out.ci = dict(zip(law.param_names, percentile_ci(boot, level)))
        out.n_bootstrap_requested, out.n_bootstrap = bootstrap, int(np.sum(~failed))
        out.n_bootstrap_failed, out.n_bootstrap_degenerate = int(np.sum(failed)), int(np.sum(degenerate))
        out.bootstrap_search, out.n_bootstrap_starts = bootstrap_search, m
        out.n_groups = None if codes is None else int(codes.max()) + 1
    return out


# ----------------------------------------------------------------------------- wrappers


def fit_chinchilla(N: Any, D: Any, loss: Any, *, delta: float = 1e-3, bootstrap: int = 0,
                   bootstrap_starts: int = 32, seed: int = 0, level: float = 0.95,
                   init: np.ndarray | None = None, **kw: Any) -> FitResult:
    """Returns the Hoffmann approach-3 fit of L(N,D) = E + A/N^α + B/D^β (Huber on ln L, 4,500 starts).

    Other keywords (groups, bootstrap_search, ...) go to `fit_law`.
    """
    X = np.column_stack([np.asarray(N, dtype=float), np.asarray(D, dtype=float)])
    return fit_law(CHINCHILLA, X, loss, delta=delta, init=init, bootstrap=bootstrap,
                   bootstrap_starts=bootstrap_starts, seed=seed, level=level, **kw)


def fit_power_law(x: Any, loss: Any, *, axis: str = "N", **kw: Any) -> FitResult:
    """Returns the fit of L = E + A·x^(−alpha) for x = N (params), D (tokens) or C (FLOPs)."""
    return fit_law(LAWS[f"power-{axis.lower()}"], np.asarray(x, dtype=float)[:, None], loss, **kw)


def fit_kaplan(N: Any, loss: Any, D: Any | None = None, **kw: Any) -> FitResult:
    """Returns the Kaplan L(N) fit, or L(N,D) when D (tokens) is given (Huber on ln L)."""
    if D is None:
        return fit_law(KAPLAN_N, np.asarray(N, dtype=float)[:, None], loss, **kw)
    return fit_law(KAPLAN_ND, np.column_stack([N, D]).astype(float), loss, **kw)


def fit_bnsl(x: Any, y: Any, n_breaks: int = 1, **kw: Any) -> FitResult:
    """Returns the BNSL fit (least squares on ln(1+y), Caballero et al.'s loss) with n_breaks breaks."""
    return fit_law(bnsl_law(n_breaks), np.asarray(x, dtype=float)[:, None], y, **kw)


def fit_sigmoid(x: Any, y: Any, **kw: Any) -> FitResult:
    """Returns the least-squares sigmoid fit y = floor + (ceil−floor)·σ(k·(log10 x − x0))."""
    return fit_law(SIGMOID, np.asarray(x, dtype=float)[:, None], y, **kw)


def chinchilla_params(fit: FitResult) -> L.ChinchillaParams:
    """Returns the ChinchillaParams (E nats/token, A, B, alpha, beta) of a Chinchilla fit."""
    p = fit.params
    return L.ChinchillaParams(E=p["E"], A=p["A"], B=p["B"], alpha=p["alpha"], beta=p["beta"])


def fit_flops_per_token(N: Any, C: Any, D: Any) -> tuple[float, float]:
    """Returns (k, gamma) of training FLOPs per token C/D ≈ k·N^gamma (k in FLOPs per token per N^gamma).

    Least squares of ln(C/D) on ln N over the points with finite, positive N, C and D. N must be the
    parameter count the loss law is fitted on (e.g. non-embedding parameters), so that the pair can
    be passed as ``flops_per_token`` to `compute_optimal_ci`. With a single distinct N the exponent
    is fixed at gamma = 1 and k is the least-squares (geometric-mean) value of C/(D·N).
    """
    from analysis.errors import InsufficientData  # local: this edit stays inside the function

    N, C, D = (np.asarray(v, dtype=float).ravel() for v in (N, C, D))
    if not len(N) == len(C) == len(D):
        raise ValueError(f"fit_flops_per_token: N, C, D have lengths {len(N)}, {len(C)}, {len(D)}")
    with np.errstate(all="ignore"):
        f = C / D
    ok = np.isfinite(N) & np.isfinite(f) & (N > 0) & (f > 0)
    if not ok.any():
        raise InsufficientData("fit_flops_per_token: no point with finite, positive N, C and D")
    ln_n, ln_f = np.log(N[ok]), np.log(f[ok])
    if len(np.unique(N[ok])) < 2:
        return float(np.exp(np.mean(ln_f - ln_n))), 1.0
    gamma, ln_k = np.polyfit(ln_n, ln_f, 1)
    return float(np.exp(ln_k)), float(gamma)


def compute_optimal_ci(fit: FitResult, C: Sequence[float] | np.ndarray, level: float = 0.95, *,
                       flops_per_token: tuple[float, float] | str) -> pd.DataFrame:
    """Returns N_opt (params), D_opt (tokens), D/N at budgets C (FLOPs) with bootstrap CIs.

    flops_per_token (required: no convention is assumed): (k, gamma) of FLOPs per token ≈ k·N^gamma
    (see `fit_flops_per_token`, with the same N the fit uses), making the budget constraint
    C = k·N^gamma·D; or the string "6ND" for Chinchilla's C = 6ND. Closed form (`laws.n_opt`):
    N_opt = G·(C/k)^a, D_opt = C/(k·N_opt^gamma), with a = beta/(alpha + gamma·beta) (column "a",
    its CI "a_low"/"a_high") and b = alpha/(alpha + gamma·beta) the exponent of D_opt. CIs of
    tokens per parameter (D_opt/N_opt of each bootstrap refit) are "tpp_low"/"tpp_high".
    """
    C = np.atleast_1d(np.asarray(C, dtype=float))
    if isinstance(flops_per_token, str):
        if flops_per_token != "6ND":
            raise ValueError(f"flops_per_token must be (k, gamma) or '6ND', got {flops_per_token!r}")
        k, gamma = 6.0, 1.0
    else:
        k, gamma = (float(v) for v in flops_per_token)
    co = L.compute_optimal(chinchilla_params(fit), C, flops_per_param_token=k, flops_exponent=gamma)
    df = pd.DataFrame({"C": C, "N_opt": co.N_opt, "D_opt": co.D_opt,
                       "tokens_per_param": co.tokens_per_parameter, "a": co.a, "b": co.b, "G": co.G})
    if fit.boot is not None and len(fit.boot):
        b = fit.boot[np.all(np.isfinite(fit.boot), axis=1)]
        E, A, B, al, be = (b[:, i] for i in range(5))
        with np.errstate(all="ignore"):
            nb = np.stack([L.n_opt(C, A[i], B[i], al[i], be[i], k, gamma) for i in range(len(b))])
            db = np.stack([L.d_opt(C, A[i], B[i], al[i], be[i], k, gamma) for i in range(len(b))])
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        df["N_opt_low"], df["N_opt_high"] = np.nanpercentile(nb, lo, 0), np.nanpercentile(nb, hi, 0)
        df["D_opt_low"], df["D_opt_high"] = np.nanpercentile(db, lo, 0), np.nanpercentile(db, hi, 0)
        tb = db / nb
        df["tpp_low"], df["tpp_high"] = np.nanpercentile(tb, lo, 0), np.nanpercentile(tb, hi, 0)
        ab = L.allocation_exponents(al, be, gamma)[0]
        df["a_low"], df["a_high"] = np.nanpercentile(ab, lo), np.nanpercentile(ab, hi)
    else:
        for col in ("N_opt", "D_opt", "tpp", "a"):
            df[f"{col}_low"], df[f"{col}_high"] = np.nan, np.nan
    return df
