"""Functional forms of scaling laws (pure functions over NumPy or JAX arrays).

Conventions: N = parameters, D = training tokens, C = training FLOPs (C = 6·N·D unless a caller
says otherwise; the compute-optimal forms also take C = k·N^gamma·D), L = loss in nats per token.
Every function accepts NumPy arrays (returns NumPy) or JAX arrays/tracers (returns JAX), so the
same form is used for plotting and inside fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = Any

__all__ = [
    "power_law", "power_law_n", "power_law_d", "power_law_c", "kaplan_n", "kaplan_nd",
    "chinchilla", "data_constrained", "sparsity", "bnsl", "sigmoid", "ChinchillaParams", "ComputeOptimal", "compute_optimal",
    "allocation_exponents", "allocation_g", "n_opt", "d_opt", "tokens_per_parameter",
]


def _xp(*args: ArrayLike):
    """Returns jax.numpy if any argument is a JAX array or tracer, else numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in args) else np


def power_law(x: ArrayLike, E: ArrayLike, A: ArrayLike, alpha: ArrayLike) -> ArrayLike:
    """Returns L(x) = E + A·x^(−alpha) (loss units, x in its own units: params, tokens or FLOPs)."""
    xp = _xp(x, E, A, alpha)
    return E + A * xp.power(xp.asarray(x, dtype=float) if xp is np else x, -alpha)


def power_law_n(N: ArrayLike, E: ArrayLike, A: ArrayLike, alpha: ArrayLike) -> ArrayLike:
    """Returns L(N) = E + A·N^(−alpha) in loss units (nats/token), N in parameters."""
    return power_law(N, E, A, alpha)


def power_law_d(D: ArrayLike, E: ArrayLike, B: ArrayLike, beta: ArrayLike) -> ArrayLike:
    """Returns L(D) = E + B·D^(−beta) in loss units (nats/token), D in tokens."""
    return power_law(D, E, B, beta)


def power_law_c(C: ArrayLike, E: ArrayLike, A: ArrayLike, alpha: ArrayLike) -> ArrayLike:
    """Returns L(C) = E + A·C^(−alpha) in loss units (nats/token), C in FLOPs."""
    return power_law(C, E, A, alpha)


def kaplan_n(N: ArrayLike, N_c: ArrayLike, alpha_N: ArrayLike) -> ArrayLike:
    """Returns Kaplan et al. (2020) L(N) = (N_c/N)^alpha_N in nats/token, N in parameters."""
    xp = _xp(N, N_c, alpha_N)
    return xp.power(N_c / xp.asarray(N, dtype=float) if xp is np else N_c / N, alpha_N)


def kaplan_nd(N: ArrayLike, D: ArrayLike, N_c: ArrayLike, D_c: ArrayLike, alpha_N: ArrayLike,
              alpha_D: ArrayLike) -> ArrayLike:
    """Returns Kaplan L(N,D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D in nats/token."""
    xp = _xp(N, D, N_c, D_c, alpha_N, alpha_D)
    if xp is np:
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    return xp.power(xp.power(N_c / N, alpha_N / alpha_D) + D_c / D, alpha_D)


def chinchilla(N: ArrayLike, D: ArrayLike, E: ArrayLike, A: ArrayLike, B: ArrayLike,
               alpha: ArrayLike, beta: ArrayLike) -> ArrayLike:
    """Returns Hoffmann et al. (2022) L(N,D) = E + A/N^alpha + B/D^beta in nats/token."""
    xp = _xp(N, D, E, A, B, alpha, beta)
    if xp is np:
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    return E + A * xp.power(N, -alpha) + B * xp.power(D, -beta)


def data_constrained(N: ArrayLike, D: ArrayLike, U: ArrayLike, E: ArrayLike, A: ArrayLike,
                     B: ArrayLike, alpha: ArrayLike, beta: ArrayLike, R_D_star: ArrayLike,
                     R_N_star: ArrayLike) -> ArrayLike:
    """Returns Muennighoff et al. (2023) L(N, D, U) in nats/token (N params, D tokens, U unique tokens).

    L = E + A/N'^alpha + B/D'^beta with the effective data D' = U + U·R_D*·(1 − e^(−R_D/R_D*)),
    R_D = max(D/U − 1, 0) repetitions, and the effective parameters N' = U_N + U_N·R_N*·(1 −
    e^(−R_N/R_N*)), U_N = min(N, N_opt(U)), R_N = max(N/U_N − 1, 0), where N_opt(D) =
    (D·G)^(beta/alpha)·G, G = (alpha·A/(beta·B))^(1/(alpha + beta)), is the compute-optimal size for
    D tokens. With D ≤ U and N ≤ N_opt(U) it is Chinchilla's E + A/N^alpha + B/D^beta.
    """
    xp = _xp(N, D, U, E, A, B, alpha, beta, R_D_star, R_N_star)
    if xp is np:
        N, D, U = (np.asarray(v, dtype=float) for v in (N, D, U))
    R_D = xp.maximum(D / U - 1.0, 0.0)
    D_eff = U + U * R_D_star * (1.0 - xp.exp(-R_D / R_D_star))
    G = xp.power(alpha * A / (beta * B), 1.0 / (alpha + beta))
    U_N = xp.minimum(N, xp.power(U * G, beta / alpha) * G)
    R_N = xp.maximum(N / U_N - 1.0, 0.0)
    N_eff = U_N + U_N * R_N_star * (1.0 - xp.exp(-R_N / R_N_star))
    return E + A * xp.power(N_eff, -alpha) + B * xp.power(D_eff, -beta)


def sparsity(S: ArrayLike, N: ArrayLike, D: ArrayLike, a: ArrayLike, b: ArrayLike, c: ArrayLike,
             d: ArrayLike, e: ArrayLike, f: ArrayLike, g: ArrayLike) -> ArrayLike:
    """Returns Frantar et al. (2023) L(S, N, D) = (a·(1−S)^b + c)·N^(−d) + e·D^(−f) + g, loss units.

    S: sparsity in [0, 1) (fraction of zero weights), N: non-zero parameters, D: training tokens
    (or examples); the dense law (S = 0) is Chinchilla's with A = a + c.
    """
    xp = _xp(S, N, D, a, b, c, d, e, f, g)
    if xp is np:
        S, N, D = (np.asarray(v, dtype=float) for v in (S, N, D))
    return (a * xp.power(1.0 - S, b) + c) * xp.power(N, -d) + e * xp.power(D, -f) + g


def bnsl(x: ArrayLike, a: ArrayLike, b: ArrayLike, c0: ArrayLike, c: Sequence[ArrayLike] = (),
         d: Sequence[ArrayLike] = (), f: Sequence[ArrayLike] = ()) -> ArrayLike:
    """Returns the broken neural scaling law (Caballero et al. 2022) y(x), in the units of y.

    y = a + b·x^(−c0)·Π_i (1 + (x/d_i)^(1/f_i))^(−c_i·f_i), with one (c_i, d_i, f_i) per break.
    Evaluated as exp(−c_i·f_i·softplus((ln x − ln d_i)/f_i)) so sharp breaks do not overflow.
    """
    if not (len(c) == len(d) == len(f)):
        raise ValueError(f"bnsl: c, d and f need one entry per break, got {len(c)}, {len(d)}, {len(f)}")
    xp = _xp(x, a, b, c0, *c, *d, *f)
    lx = xp.log(xp.asarray(x, dtype=float) if xp is np else x)
    log_term = -c0 * lx
    for ci, di, fi in zip(c, d, f):
        z = (lx - xp.log(di)) / fi
        softplus = xp.logaddexp(0.0, z)
        log_term = log_term - ci * fi * softplus
    return a + b * xp.exp(log_term)


def sigmoid(x: ArrayLike, floor: ArrayLike, ceil: ArrayLike, k: ArrayLike, x0: ArrayLike) -> ArrayLike:
    """Returns floor + (ceil − floor)·σ(k·(log10 x − x0)) in the metric's units (x0 in log10 units)."""
    xp = _xp(x, floor, ceil, k, x0)
    lx = xp.log10(xp.asarray(x, dtype=float) if xp is np else x)
    z = k * (lx - x0)
    sig = 0.5 * (1.0 + xp.tanh(0.5 * z))
    return floor + (ceil - floor) * sig


@dataclass(frozen=True)
class ChinchillaParams:
    """Parameters of L(N,D) = E + A/N^alpha + B/D^beta (E in nats/token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float


@dataclass(frozen=True)
class ComputeOptimal:
    """Compute-optimal allocation at a budget C (FLOPs): exponents, G, N_opt, D_opt, D/N.

    The budget constraint is C = k·N^gamma·D (FLOPs per token k·N^gamma; Chinchilla's: k = 6, gamma = 1).
    """

    a: float  # N_opt ∝ C^a, a = beta/(alpha + gamma·beta)
    b: float  # D_opt ∝ C^b, b = alpha/(alpha + gamma·beta)  (gamma·a + b = 1)
    G: float  # (alpha·A/(gamma·beta·B))^(1/(alpha + gamma·beta))
    C: ArrayLike  # FLOPs
    N_opt: ArrayLike  # parameters
    D_opt: ArrayLike  # tokens
    tokens_per_parameter: ArrayLike  # D_opt / N_opt
    loss: ArrayLike  # L(N_opt, D_opt), nats/token
    flops_per_param_token: float = 6.0  # k of the constraint, FLOPs per token per parameter^gamma
    flops_exponent: float = 1.0  # gamma of the constraint, dimensionless


def _check_flops_exponent(flops_exponent: float) -> None:
    """Raises ValueError unless FLOPs per token grow with N (gamma > 0), the case with a finite optimum."""
    if not flops_exponent > 0:
        raise ValueError(f"flops_exponent must be > 0 (FLOPs per token = k·N^gamma), got {flops_exponent}")


def _has_optimum(A: ArrayLike, B: ArrayLike, alpha: ArrayLike, beta: ArrayLike) -> np.ndarray:
    """Returns where L = E + A/N^alpha + B/D^beta has an interior compute optimum (all positive)."""
    return ((np.asarray(alpha) > 0) & (np.asarray(beta) > 0)
            & (np.asarray(A) > 0) & (np.asarray(B) > 0))


def _scalar_or_array(x: np.ndarray) -> Any:
    return float(x) if np.ndim(x) == 0 else x


def allocation_exponents(alpha: ArrayLike, beta: ArrayLike, flops_exponent: float = 1.0) -> tuple[Any, Any]:
    """Returns (a, b) = (beta, alpha)/(alpha + gamma·beta), dimensionless exponents of C ∝ N^gamma·D.

    NaN where alpha or beta is not positive: then loss does not fall with both N and D and there
    is no compute-optimal allocation (a fit can land there when the data do not identify it).
    """
    alpha, beta = np.asarray(alpha, dtype=float), np.asarray(beta, dtype=float)
    ok = (alpha > 0) & (beta > 0)
    with np.errstate(all="ignore"):
        s = np.where(ok, alpha + flops_exponent * beta, np.nan)
        return _scalar_or_array(beta / s), _scalar_or_array(alpha / s)


def allocation_g(A: ArrayLike, B: ArrayLike, alpha: ArrayLike, beta: ArrayLike,
                 flops_exponent: float = 1.0) -> Any:
    """Returns G = (alpha·A/(gamma·beta·B))^(1/(alpha + gamma·beta)), in parameters per (C/k)^a.

    NaN (never complex) where the law has no interior optimum (A, B, alpha or beta not positive).
    """
    A, B, alpha, beta = (np.asarray(x, dtype=float) for x in (A, B, alpha, beta))
    ok = _has_optimum(A, B, alpha, beta)
    with np.errstate(all="ignore"):
        ratio = np.where(ok, alpha * A / (flops_exponent * beta * B), np.nan)
        return _scalar_or_array(np.power(ratio, 1.0 / (alpha + flops_exponent * beta)))


def n_opt(C: ArrayLike, A: float, B: float, alpha: float, beta: float,
          flops_per_param_token: float = 6.0, flops_exponent: float = 1.0) -> ArrayLike:
    """Returns N_opt(C) = G·(C/k)^(beta/(alpha + gamma·beta)) in parameters (C = k·N^gamma·D, FLOPs).

    Minimizes A/N^alpha + B/D^beta along D = C/(k·N^gamma), i.e. A/N^alpha + B·(k·N^gamma/C)^beta,
    whose only stationary point (a minimum for gamma > 0) solves alpha·A/N^alpha = gamma·beta·B/D^beta;
    k = flops_per_param_token, gamma = flops_exponent (k = 6, gamma = 1: Chinchilla's C = 6ND).
    """
    _check_flops_exponent(flops_exponent)
    a, _ = allocation_exponents(alpha, beta, flops_exponent)
    return allocation_g(A, B, alpha, beta, flops_exponent) * np.power(
        np.asarray(C, dtype=float) / flops_per_param_token, a)


def d_opt(C: ArrayLike, A: float, B: float, alpha: float, beta: float,
          flops_per_param_token: float = 6.0, flops_exponent: float = 1.0) -> ArrayLike:
    """Returns D_opt(C) = C/(k·N_opt^gamma) = G^(−gamma)·(C/k)^(alpha/(alpha + gamma·beta)) in tokens."""
    _check_flops_exponent(flops_exponent)
    _, b = allocation_exponents(alpha, beta, flops_exponent)
    G = allocation_g(A, B, alpha, beta, flops_exponent)
    return np.power(np.asarray(C, dtype=float) / flops_per_param_token, b) / G ** flops_exponent


def tokens_per_parameter(C: ArrayLike, A: float, B: float, alpha: float, beta: float,
                         flops_per_param_token: float = 6.0, flops_exponent: float = 1.0) -> ArrayLike:
    """Returns D_opt(C)/N_opt(C), in tokens per parameter (C in FLOPs, C = k·N^gamma·D)."""
    return (d_opt(C, A, B, alpha, beta, flops_per_param_token, flops_exponent)
            / n_opt(C, A, B, alpha, beta, flops_per_param_token, flops_exponent))


def compute_optimal(params: ChinchillaParams, C: ArrayLike, flops_per_param_token: float = 6.0,
                    flops_exponent: float = 1.0) -> ComputeOptimal:
    """Returns the compute-optimal allocation (N_opt params, D_opt tokens) at budgets C in FLOPs.

    The constraint is C = k·N^gamma·D with k = flops_per_param_token, gamma = flops_exponent (FLOPs
    per token k·N^gamma, e.g. fitted to a model family with `analysis.fit.fit_flops_per_token`);
    the defaults give Chinchilla's C = 6ND.
    """
    p = params
    a, b = allocation_exponents(p.alpha, p.beta, flops_exponent)
    G = allocation_g(p.A, p.B, p.alpha, p.beta, flops_exponent)
    n = n_opt(C, p.A, p.B, p.alpha, p.beta, flops_per_param_token, flops_exponent)
    d = d_opt(C, p.A, p.B, p.alpha, p.beta, flops_per_param_token, flops_exponent)
    return ComputeOptimal(a=a, b=b, G=G, C=C, N_opt=n, D_opt=d, tokens_per_parameter=d / n,
                          loss=chinchilla(n, d, p.E, p.A, p.B, p.alpha, p.beta),
                          flops_per_param_token=flops_per_param_token, flops_exponent=flops_exponent)
