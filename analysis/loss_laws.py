"""Fitting parameterizations of pre-training loss laws: Chinchilla, data-constrained, power, Kaplan, BNSL.

Each is a `Law` (raw parameters, natural parameters, target space, Huber delta, start grid) that
`analysis.fit.fit_law` minimizes; the plain functional forms are in `analysis.laws`.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax.numpy as jnp
import numpy as np

from analysis.law_spec import Law, lae, lse

__all__ = ["CHINCHILLA", "DATA_CONSTRAINED", "KAPLAN_N", "KAPLAN_ND", "hoffmann_grid", "power_law",
           "bnsl_law"]


# --- Chinchilla (approach 3) --------------------------------------------------------------------

def _chin_pred(th, X):
    a, b, e, al, be = th[0], th[1], th[2], th[3], th[4]
    lnN, lnD = jnp.log(X[:, 0]), jnp.log(X[:, 1])
    return lse(a - al * lnN, b - be * lnD, jnp.broadcast_to(e, lnN.shape))


def _chin_nat(r):
    r = np.asarray(r, dtype=float)
    return np.stack([np.exp(r[..., 2]), np.exp(r[..., 0]), np.exp(r[..., 1]), r[..., 3], r[..., 4]], -1)


def _chin_raw(n):
    n = np.asarray(n, dtype=float)
    return np.stack([np.log(n[..., 1]), np.log(n[..., 2]), np.log(n[..., 0]), n[..., 3], n[..., 4]], -1)


def hoffmann_grid() -> np.ndarray:
    """Returns Hoffmann et al.'s 4,500 starts as rows (a, b, e, alpha, beta) (raw, dimensionless)."""
    alphas = np.arange(0.0, 2.01, 0.5)
    es = np.arange(-1.0, 1.01, 0.5)
    abs_ = np.arange(0.0, 25.01, 5.0)
    return np.array([(a, b, e, al, be) for a in abs_ for b in abs_ for e in es
                     for al in alphas for be in alphas], dtype=float)


CHINCHILLA = Law(
    name="chinchilla", inputs=("N", "D"), raw_names=("a", "b", "e", "alpha", "beta"),
    param_names=("E", "A", "B", "alpha", "beta"), target="log", delta=1e-3,
    predict_t=_chin_pred, to_natural=_chin_nat, from_natural=_chin_raw,
    init=lambda X, y: hoffmann_grid(), formula="L = E + A/N^alpha + B/D^beta",
    lse_terms=((0, 3, 0), (1, 4, 1), (2, None, None)),
)


# --- data-constrained (Muennighoff et al. 2023) -------------------------------------------------

def _dc_pred(th, X):
    """Returns ln L(N, D, U) of `laws.data_constrained` from raw (a, b, e, ln α, ln β, ln R_D*, ln R_N*)."""
    a, b, e = th[0], th[1], th[2]
    al, be, rd, rn = jnp.exp(th[3]), jnp.exp(th[4]), jnp.exp(th[5]), jnp.exp(th[6])
    lnN, lnD, lnU = jnp.log(X[:, 0]), jnp.log(X[:, 1]), jnp.log(X[:, 2])
    lnG = (th[3] + a - th[4] - b) / (al + be)
    lnUN = jnp.minimum(lnN, (be / al) * (lnU + lnG) + lnG)  # min(N, N_opt(U))
    R_N = jnp.expm1(lnN - lnUN)
    R_D = jnp.maximum(jnp.expm1(lnD - lnU), 0.0)
    lnNeff = lnUN + jnp.log1p(-rn * jnp.expm1(-R_N / rn))
    lnDeff = lnU + jnp.log1p(-rd * jnp.expm1(-R_D / rd))
    return lse(a - al * lnNeff, b - be * lnDeff, jnp.broadcast_to(e, lnN.shape))


def _dc_nat(r):
    r = np.asarray(r, dtype=float)
    return np.stack([np.exp(r[..., 2]), np.exp(r[..., 0]), np.exp(r[..., 1]), np.exp(r[..., 3]),
                     np.exp(r[..., 4]), np.exp(r[..., 5]), np.exp(r[..., 6])], -1)


def _dc_raw(n):
    n = np.asarray(n, dtype=float)
    return np.stack([np.log(n[..., 1]), np.log(n[..., 2]), np.log(n[..., 0]), np.log(n[..., 3]),
                     np.log(n[..., 4]), np.log(n[..., 5]), np.log(n[..., 6])], -1)


def _dc_init(X, y):
    """Returns starts (a, b, e, ln α, ln β, ln R_D*, ln R_N*): a coarse Hoffmann-like grid, 900 rows.

    On the authors' law, 45% of a 2,700-start grid (e, α, β three times finer) reached the global
    optimum, so this coarser grid keeps a wide margin at a third of the cost.
    """
    return np.array([(a, b, e, math.log(al), math.log(be), math.log(rd), math.log(rn))
                     for a in (0.0, 5.0, 10.0, 15.0, 20.0) for b in (0.0, 5.0, 10.0, 15.0, 20.0)
                     for e in (-1.0, 0.0, 1.0) for al in (0.2, 0.5) for be in (0.2, 0.5)
                     for rd, rn in ((5.0, 2.0), (15.0, 5.0), (40.0, 15.0))])


DATA_CONSTRAINED = Law(
    name="data-constrained", inputs=("N", "D", "U"),
    raw_names=("a", "b", "e", "ln_alpha", "ln_beta", "ln_R_D_star", "ln_R_N_star"),
    param_names=("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star"), target="log", delta=1e-3,
    predict_t=_dc_pred, to_natural=_dc_nat, from_natural=_dc_raw, init=_dc_init,
    formula="L = E + A/N'^alpha + B/D'^beta, D' = U + U*R_D*(1-exp(-R_D/R_D*)), R_D = max(D/U-1, 0), "
            "N' = U_N + U_N*R_N*(1-exp(-R_N/R_N*)), U_N = min(N, N_opt(U)), R_N = max(N/U_N-1, 0)",
)


# --- power law E + A x^-alpha -------------------------------------------------------------------

def _pow_pred(th, X):
    a, e, al = th[0], th[1], th[2]
    lx = jnp.log(X[:, 0])
    return lse(a - al * lx, jnp.broadcast_to(e, lx.shape))


def _pow_nat(r):
    r = np.asarray(r, dtype=float)
    return np.stack([np.exp(r[..., 1]), np.exp(r[..., 0]), r[..., 2]], -1)


def _pow_raw(n):
    n = np.asarray(n, dtype=float)
    return np.stack([np.log(n[..., 1]), np.log(n[..., 0]), n[..., 2]], -1)


def _pow_init(X, y):
    lx_med = float(np.median(np.log(X[:, 0])))
    y_med, y_min = float(np.median(y)), float(np.min(y))
    starts = []
    for al in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0):
        for frac in (0.01, 0.25, 0.5, 0.75, 0.9, 0.97):
            E = frac * y_min
            A_med = max(y_med - E, 0.05 * y_med)
            for off in (-1.0, 0.0, 1.0):
                starts.append((math.log(A_med) + al * lx_med + off, math.log(E), al))
    return np.array(starts)


def power_law(name: str, col: str, pnames: tuple[str, str, str]) -> Law:
    """Returns the Law L = E + A·x^(−alpha) in the input column col (Huber on ln L, delta 1e-3)."""
    return Law(name=name, inputs=(col,), raw_names=("a", "e", pnames[2]), param_names=pnames,
               target="log", delta=1e-3, predict_t=_pow_pred, to_natural=_pow_nat,
               from_natural=_pow_raw, init=_pow_init, lse_terms=((0, 2, 0), (1, None, None)),
               formula=f"L = {pnames[0]} + {pnames[1]}*{col}^-{pnames[2]}")


# --- Kaplan ------------------------------------------------------------------------------------

def _kn_pred(th, X):
    return th[1] * (th[0] - jnp.log(X[:, 0]))


def _kn_nat(r):
    r = np.asarray(r, dtype=float)
    return np.stack([np.exp(r[..., 0]), r[..., 1]], -1)


def _kn_raw(n):
    n = np.asarray(n, dtype=float)
    return np.stack([np.log(n[..., 0]), n[..., 1]], -1)


def _kn_init(X, y):
    lx_med, ly_med = float(np.median(np.log(X[:, 0]))), float(np.median(np.log(y)))
    return np.array([(ly_med / al + lx_med + off, al) for al in (0.01, 0.03, 0.07, 0.15, 0.3, 0.6, 1.0)
                     for off in (-2.0, 0.0, 2.0)])


def _knd_pred(th, X):
    lnNc, lnDc, aN, aD = th[0], th[1], th[2], th[3]
    return aD * lse((aN / aD) * (lnNc - jnp.log(X[:, 0])), lnDc - jnp.log(X[:, 1]))


def _knd_nat(r):
    r = np.asarray(r, dtype=float)
    return np.stack([np.exp(r[..., 0]), np.exp(r[..., 1]), r[..., 2], r[..., 3]], -1)


def _knd_raw(n):
    n = np.asarray(n, dtype=float)
    return np.stack([np.log(n[..., 0]), np.log(n[..., 1]), n[..., 2], n[..., 3]], -1)


def _knd_init(X, y):
    lN, lD = float(np.median(np.log(X[:, 0]))), float(np.median(np.log(X[:, 1])))
    ly = float(np.median(np.log(y)))
    starts = []
    for aN in (0.03, 0.07, 0.15, 0.3, 0.6):
        for aD in (0.03, 0.07, 0.15, 0.3, 0.6):
            lu = ly / aD  # ln of L^(1/alpha_D)
            for frac in (0.1, 0.5, 0.9):
                starts.append((lN + (aD / aN) * (lu + math.log(frac)), lD + lu + math.log(1 - frac), aN, aD))
    return np.array(starts)


KAPLAN_N = Law(name="kaplan-n", inputs=("N",), raw_names=("lnN_c", "alpha_N"),
               param_names=("N_c", "alpha_N"), target="log", delta=1e-3, predict_t=_kn_pred,
               to_natural=_kn_nat, from_natural=_kn_raw, init=_kn_init,
               formula="L = (N_c/N)^alpha_N")
KAPLAN_ND = Law(name="kaplan-nd", inputs=("N", "D"), raw_names=("lnN_c", "lnD_c", "alpha_N", "alpha_D"),
                param_names=("N_c", "D_c", "alpha_N", "alpha_D"), target="log", delta=1e-3,
                predict_t=_knd_pred, to_natural=_knd_nat, from_natural=_knd_raw, init=_knd_init,
                formula="L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D")


# --- BNSL ----------------------------------------------------------------------------------------

def _bnsl_raw_names(n_breaks: int) -> tuple[str, ...]:
    names = ["ln_a", "ln_b", "c0"]
    for i in range(1, n_breaks + 1):
        names += [f"c{i}", f"ln_d{i}", f"ln_f{i}"]
    return tuple(names)


def _bnsl_param_names(n_breaks: int) -> tuple[str, ...]:
    names = ["a", "b", "c0"]
    for i in range(1, n_breaks + 1):
        names += [f"c{i}", f"d{i}", f"f{i}"]
    return tuple(names)




def _bnsl_pred(th, X):
    lx = jnp.log(X[:, 0])
    n_breaks = (th.shape[0] - 3) // 3
    log_term = th[1] - th[2] * lx
    for i in range(n_breaks):
        c, lnd, lnf = th[3 + 3 * i], th[4 + 3 * i], th[5 + 3 * i]
        f = jnp.exp(lnf)
        log_term = log_term - c * f * lae(0.0, (lx - lnd) / f)
    ln_y = lae(th[0], log_term)
    return lae(0.0, ln_y)  # ln(1 + y)


def _bnsl_nat(r):
    r = np.array(r, dtype=float)
    out = r.copy()
    out[..., 0], out[..., 1] = np.exp(r[..., 0]), np.exp(r[..., 1])
    for j in range(4, r.shape[-1], 3):
        out[..., j], out[..., j + 1] = np.exp(r[..., j]), np.exp(r[..., j + 1])
    return out


def _bnsl_raw(n):
    n = np.array(n, dtype=float)
    out = n.copy()
    out[..., 0], out[..., 1] = np.log(n[..., 0]), np.log(n[..., 1])
    for j in range(4, n.shape[-1], 3):
        out[..., j], out[..., j + 1] = np.log(n[..., j]), np.log(n[..., j + 1])
    return out


def _bnsl_init_factory(n_breaks: int, max_starts: int = 4000, seed: int = 0):
    def init(X, y):
        lx = np.log(X[:, 0])
        order = np.argsort(lx)
        lx0, y0 = float(lx[order[0]]), float(y[order[0]])
        y_min = float(np.min(y))
        d_grid = np.linspace(lx.min(), lx.max(), 8)[1:-1]
        per_break = list(itertools.product((0.3, 1.0, 3.0, 10.0), d_grid, np.log([0.03, 0.1, 0.3, 1.0])))
        heads = list(itertools.product(np.log(y_min * np.array([0.05, 0.3, 0.6, 0.9])), (0.0, 0.1, 0.3, 1.0)))
        combos = list(itertools.product(heads, itertools.product(per_break, repeat=n_breaks)))
        if len(combos) > max_starts:
            rng = np.random.default_rng(seed)
            combos = [combos[i] for i in sorted(rng.choice(len(combos), max_starts, replace=False))]
        starts = []
        for (ln_a, c0), breaks in combos:
            # choose b so the curve passes through the smallest-x point
            log_rest = -c0 * lx0
            row = []
            for c, lnd, lnf in breaks:
                f = math.exp(lnf)
                log_rest -= c * f * np.logaddexp(0.0, (lx0 - lnd) / f)
                row += [c, lnd, lnf]
            ln_b = math.log(max(y0 - math.exp(ln_a), 1e-3 * y0)) - log_rest
            starts.append([ln_a, ln_b, c0] + row)
        return np.array(starts, dtype=float)
    return init


@functools.lru_cache(maxsize=None)
def bnsl_law(n_breaks: int = 1) -> Law:
    """Returns the BNSL Law with n_breaks breaks (fitted on ln(1+y), squared error as the authors)."""
    return Law(name="bnsl" if n_breaks == 1 else f"bnsl{n_breaks}", inputs=("x",),
               raw_names=_bnsl_raw_names(n_breaks), param_names=_bnsl_param_names(n_breaks),
               target="log1p", delta=math.inf, predict_t=_bnsl_pred, to_natural=_bnsl_nat,
               from_natural=_bnsl_raw, init=_bnsl_init_factory(n_breaks),
               formula="y = a + b*x^-c0 * prod_i (1 + (x/d_i)^(1/f_i))^(-c_i*f_i)")
