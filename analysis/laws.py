"""Functional forms of scaling laws (pure functions over NumPy or JAX arrays).

Conventions: N = parameters, D = training tokens, C = training FLOPs (C = 6·N·D unless a caller
says otherwise), L = loss in nats per token. Every function accepts NumPy arrays (returns NumPy)
or JAX arrays/tracers (returns JAX), so the same form is used for plotting and inside fits.
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
    "chinchilla", "bnsl", "sigmoid", "ChinchillaParams", "ComputeOptimal", "compute_optimal",
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
    """Compute-optimal allocation at a budget C (FLOPs): exponents, G, N_opt, D_opt, D/N."""

    a: float  # N_opt ∝ C^a, a = beta/(alpha+beta)
    b: float  # D_opt ∝ C^b, b = alpha/(alpha+beta)
    G: float  # (alpha·A/(beta·B))^(1/(alpha+beta))
    C: ArrayLike  # FLOPs
    N_opt: ArrayLike  # parameters
    D_opt: ArrayLike  # tokens
    tokens_per_parameter: ArrayLike  # D_opt / N_opt
    loss: ArrayLike  # L(N_opt, D_opt), nats/token


def allocation_exponents(alpha: float, beta: float) -> tuple[float, float]:
    """Returns (a, b) = (beta/(alpha+beta), alpha/(alpha+beta)), dimensionless exponents of C."""
    return beta / (alpha + beta), alpha / (alpha + beta)


def allocation_g(A: float, B: float, alpha: float, beta: float) -> float:
    """Returns G = (alpha·A/(beta·B))^(1/(alpha+beta)), in parameters per (FLOPs/6)^a."""
    return (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))


def n_opt(C: ArrayLike, A: float, B: float, alpha: float, beta: float,
          flops_per_param_token: float = 6.0) -> ArrayLike:
    """Returns N_opt(C) = G·(C/6)^(beta/(alpha+beta)) in parameters (C in FLOPs, C = 6ND)."""
    a, _ = allocation_exponents(alpha, beta)
    return allocation_g(A, B, alpha, beta) * np.power(np.asarray(C, dtype=float) / flops_per_param_token, a)


def d_opt(C: ArrayLike, A: float, B: float, alpha: float, beta: float,
          flops_per_param_token: float = 6.0) -> ArrayLike:
    """Returns D_opt(C) = G^(−1)·(C/6)^(alpha/(alpha+beta)) in tokens (C in FLOPs, C = 6ND)."""
    _, b = allocation_exponents(alpha, beta)
    return np.power(np.asarray(C, dtype=float) / flops_per_param_token, b) / allocation_g(A, B, alpha, beta)


def tokens_per_parameter(C: ArrayLike, A: float, B: float, alpha: float, beta: float) -> ArrayLike:
    """Returns D_opt(C)/N_opt(C), in tokens per parameter."""
    return d_opt(C, A, B, alpha, beta) / n_opt(C, A, B, alpha, beta)


def compute_optimal(params: ChinchillaParams, C: ArrayLike,
                    flops_per_param_token: float = 6.0) -> ComputeOptimal:
    """Returns the compute-optimal allocation (N_opt params, D_opt tokens) at budgets C in FLOPs."""
    p = params
    a, b = allocation_exponents(p.alpha, p.beta)
    G = allocation_g(p.A, p.B, p.alpha, p.beta)
    n = n_opt(C, p.A, p.B, p.alpha, p.beta, flops_per_param_token)
    d = d_opt(C, p.A, p.B, p.alpha, p.beta, flops_per_param_token)
    return ComputeOptimal(a=a, b=b, G=G, C=C, N_opt=n, D_opt=d, tokens_per_parameter=d / n,
                          loss=chinchilla(n, d, p.E, p.A, p.B, p.alpha, p.beta))
