"""Fitting parameterizations of the laws of later stages: emergence (sigmoids), fine-tuning, sparsity.

Each is a `Law` that `analysis.fit.fit_law` minimizes: the sigmoid of an emergence curve (free, or
monotone by construction), the rectified fine-tuning law of Lin et al. (2024) with the power law it
is compared with, and the sparsity law of Frantar et al. (2023).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from analysis.law_spec import Law, lae, lse

__all__ = ["SIGMOID", "FINETUNE_RECTIFIED", "FINETUNE_POWER", "sparsity_law", "monotone_sigmoid"]


def _q(y: np.ndarray, q: float) -> float:
    return float(np.quantile(y, q))


# --- sigmoid (emergence) ---------------------------------------------------------------------------

def _sig_pred(th, X):
    z = th[2] * (jnp.log10(X[:, 0]) - th[3])
    return th[0] + (th[1] - th[0]) * jax.nn.sigmoid(z)


def _identity(r):
    return np.array(r, dtype=float)


def _sig_init(X, y):
    lx = np.log10(X[:, 0])
    floors = sorted({float(np.min(y)), _q(y, 0.1)})
    ceils = sorted({float(np.max(y)), _q(y, 0.9)})
    span = max(float(lx.max() - lx.min()), 1e-6)
    starts = []
    for fl in floors:
        for ce in ceils:
            for k in (0.5, 2.0, 5.0, 15.0):
                for x0 in np.linspace(lx.min(), lx.max(), 8):
                    starts.append((fl, ce, k / span * 2.0, x0))
    return np.array(starts)


SIGMOID = Law(name="sigmoid", inputs=("x",), raw_names=("floor", "ceil", "k", "x0"),
              param_names=("floor", "ceil", "k", "x0"), target="identity", delta=math.inf,
              predict_t=_sig_pred, to_natural=_identity, from_natural=_identity, init=_sig_init,
              formula="y = floor + (ceil - floor) * sigmoid(k * (log10 x - x0))")


# --- fine-tuning (Lin et al. 2024): rectified law and the plain power law it is compared with -------

def _rect_pred(th, X):
    """Returns ln L of L(D) = E + (A − E)/(1 + e^B·D^β) from raw (ln E, ln(A − E), B, β)."""
    lnD = jnp.log(X[:, 0])
    return lae(jnp.broadcast_to(th[0], lnD.shape), th[1] + jax.nn.log_sigmoid(-(th[2] + th[3] * lnD)))


def _rect_nat(r):
    r = np.asarray(r, dtype=float)
    return np.stack([np.exp(r[..., 0]) + np.exp(r[..., 1]), np.exp(r[..., 0]), r[..., 2], r[..., 3]], -1)


def _rect_raw(n):
    n = np.asarray(n, dtype=float)
    return np.stack([np.log(n[..., 1]), np.log(n[..., 0] - n[..., 1]), n[..., 2], n[..., 3]], -1)


def _rect_init(X, y):
    """Returns starts (ln E, ln(A − E), B, β): E below the smallest loss, midpoints across ln D (252 rows)."""
    lnD = np.log(X[:, 0])
    y_min, y_max = float(np.min(y)), float(np.max(y))
    starts = []
    for frac in (0.3, 0.6, 0.9):
        E = frac * y_min
        for off in (-1.0, 0.0, 1.0):
            for be in (0.2, 0.5, 1.0, 2.0):
                for mid in np.linspace(lnD.min() - 3.0, lnD.max() + 3.0, 7):
                    starts.append((math.log(E), math.log(max(y_max - E, 1e-6)) + off, -be * mid, be))
    return np.array(starts)


def _ftpow_pred(th, X):
    """Returns ln L of L(D) = (1/(B·D^β) + E)^α from raw (ln B, β, ln E, α)."""
    lnD = jnp.log(X[:, 0])
    return th[3] * lae(-th[0] - th[1] * lnD, jnp.broadcast_to(th[2], lnD.shape))


def _ftpow_nat(r):
    r = np.asarray(r, dtype=float)
    return np.stack([np.exp(r[..., 0]), r[..., 1], np.exp(r[..., 2]), r[..., 3]], -1)


def _ftpow_raw(n):
    n = np.asarray(n, dtype=float)
    return np.stack([np.log(n[..., 0]), n[..., 1], np.log(n[..., 2]), n[..., 3]], -1)


def _ftpow_init(X, y):
    """Returns starts (ln B, β, ln E, α): E^α a fraction of the smallest loss, B through the median (180 rows).

    Starts lie where the form is the power law it is meant to be (α, β > 0). With α, β < 0 the same
    formula becomes a plateau followed by a power law, i.e. another rectified law, and can fit better
    (e.g. gpt2 on FLAN: RMSD of ln L 0.0089 against 0.069), so no starts are placed there.
    """
    lnD_med = float(np.median(np.log(X[:, 0])))
    y_min, y_med = float(np.min(y)), float(np.median(y))
    starts = []
    for al in (0.1, 0.3, 0.6, 1.0, 2.0):
        for frac in (0.3, 0.6, 0.9):
            lnE = math.log(frac * y_min) / al
            rest = max(y_med ** (1.0 / al) - math.exp(lnE), 1e-6 * math.exp(lnE))
            for be in (0.05, 0.2, 0.5, 1.0):
                for off in (-1.0, 0.0, 1.0):
                    starts.append((-math.log(rest) - be * lnD_med + off, be, lnE, al))
    return np.array(starts)


FINETUNE_RECTIFIED = Law(
    name="finetune-rectified", inputs=("D",), raw_names=("ln_E", "ln_A_minus_E", "B", "beta"),
    param_names=("A", "E", "B", "beta"), target="log", delta=math.inf, predict_t=_rect_pred,
    to_natural=_rect_nat, from_natural=_rect_raw, init=_rect_init,
    formula="L = (A - E)/(1 + e^B * D^beta) + E",
)
FINETUNE_POWER = Law(
    name="finetune-power", inputs=("D",), raw_names=("ln_B", "beta", "ln_E", "alpha"),
    param_names=("B", "beta", "E", "alpha"), target="log", delta=math.inf, predict_t=_ftpow_pred,
    to_natural=_ftpow_nat, from_natural=_ftpow_raw, init=_ftpow_init,
    formula="L = (1/(B * D^beta) + E)^alpha",
)


# --- sparsity (Frantar et al. 2023): L(S, N, D) = (a(1-S)^b + c) N^-d + e D^-f + g ------------------

def _sparse_log_pred(th, X):
    """Returns ln L(S, N, D) of `laws.sparsity` from raw (ln a, b, ln c, d, ln e, f, ln g)."""
    ln_dense, lnN, lnD = jnp.log1p(-X[:, 0]), jnp.log(X[:, 1]), jnp.log(X[:, 2])
    return lse(th[0] + th[1] * ln_dense - th[3] * lnN, th[2] - th[3] * lnN, th[4] - th[5] * lnD,
                jnp.broadcast_to(th[6], lnN.shape))


def _sparse_lin_pred(th, X):
    """Returns L(S, N, D) itself (the authors' ViT fit takes residuals in L, not ln L)."""
    return jnp.exp(_sparse_log_pred(th, X))


_SPARSE_LOG = (0, 2, 4, 6)  # raw entries that are logarithms of a, c, e, g


def _sparse_nat(r):
    r = np.array(r, dtype=float)
    r[..., _SPARSE_LOG] = np.exp(r[..., _SPARSE_LOG])
    return r


def _sparse_raw(n):
    n = np.array(n, dtype=float)
    n[..., _SPARSE_LOG] = np.log(n[..., _SPARSE_LOG])
    return n


def _sparse_init(X, y):
    """Returns starts (ln a, b, ln c, d, ln e, f, ln g) scaled to the data (576 rows).

    g is a fraction of the smallest loss; the rest of the median loss is shared between the N and
    D terms at the median N and D, and the N term between its sparse (a) and dense (c) parts.
    """
    lnN, lnD = float(np.median(np.log(X[:, 1]))), float(np.median(np.log(X[:, 2])))
    y_min, y_med = float(np.min(y)), float(np.median(y))
    starts = []
    for g_frac in (0.5, 0.8, 0.95):
        g = g_frac * y_min
        rest = max(y_med - g, 1e-3 * y_med)
        for d in (0.1, 0.3, 0.6, 1.0):
            for f in (0.1, 0.3, 0.6, 1.0):
                for share in (0.25, 0.5, 0.75):
                    ln_A = math.log(share * rest) + d * lnN
                    ln_e = math.log((1.0 - share) * rest) + f * lnD
                    for a_frac in (0.3, 0.7):
                        for b in (0.5, 1.5):
                            starts.append((ln_A + math.log(a_frac), b, ln_A + math.log(1.0 - a_frac), d,
                                           ln_e, f, math.log(g)))
    return np.array(starts)


def _sparse_domain(X):
    """Returns the rows with S in [0, 1) and N, D > 0."""
    return (X[:, 0] >= 0) & (X[:, 0] < 1) & (X[:, 1] > 0) & (X[:, 2] > 0)


def sparsity_law(name: str, target: str, delta: float) -> Law:
    """Returns the sparsity Law named name, fitted with residuals in target ("log" or "identity") and delta."""
    return Law(name=name, inputs=("S", "N", "D"), raw_names=("ln_a", "b", "ln_c", "d", "ln_e", "f", "ln_g"),
               param_names=("a", "b", "c", "d", "e", "f", "g"), target=target, delta=delta,
               predict_t=_sparse_log_pred if target == "log" else _sparse_lin_pred,
               to_natural=_sparse_nat, from_natural=_sparse_raw, init=_sparse_init, domain=_sparse_domain,
               formula="L = (a*(1-S)^b + c)*N^-d + e*D^-f + g, S sparsity, N non-zero parameters")


# --- monotone sigmoid (emergence): ceil > floor and k > 0 by construction --------------------------

def _msig_pred(sign: float):
    def pred(th, X):
        z = sign * jnp.exp(th[2]) * (jnp.log10(X[:, 0]) - th[3])
        return th[0] + jnp.exp(th[1]) * jax.nn.sigmoid(z)
    return pred


_MSIG_PRED = {"increasing": _msig_pred(1.0), "decreasing": _msig_pred(-1.0)}


def _msig_nat(r):
    r = np.asarray(r, dtype=float)
    return np.stack([r[..., 0], r[..., 0] + np.exp(r[..., 1]), np.exp(r[..., 2]), r[..., 3]], -1)


def _msig_raw(n):
    n = np.asarray(n, dtype=float)
    return np.stack([n[..., 0], np.log(n[..., 1] - n[..., 0]), np.log(n[..., 2]), n[..., 3]], -1)


def _msig_init(X, y):
    """Returns starts (floor, ln(ceil − floor), ln k, x0) spread over the data's range (256 rows)."""
    lx = np.log10(X[:, 0])
    span = max(float(lx.max() - lx.min()), 1e-6)
    tiny = 1e-6 * max(float(np.max(np.abs(y))), 1e-12)
    starts = []
    for fl in sorted({float(np.min(y)), _q(y, 0.1)}):
        for ce in sorted({float(np.max(y)), _q(y, 0.9)}):
            for k in (0.5, 2.0, 5.0, 15.0):
                for x0 in np.linspace(lx.min(), lx.max(), 8):
                    starts.append((fl, math.log(max(ce - fl, tiny)), math.log(k / span * 2.0), x0))
    return np.array(starts)


def monotone_sigmoid(direction: str) -> Law:
    """Returns the sigmoid Law whose direction ("increasing" or "decreasing") holds by construction."""
    rising = direction == "increasing"
    return Law(name=f"sigmoid-{direction}", inputs=("x",), raw_names=("floor", "ln_rise", "ln_k", "x0"),
               param_names=("floor", "ceil", "k", "x0"), target="identity", delta=math.inf,
               predict_t=_MSIG_PRED[direction], to_natural=_msig_nat, from_natural=_msig_raw,
               init=_msig_init,
               formula=("y = floor + (ceil - floor) * sigmoid(" + ("" if rising else "-")
                        + "k * (log10 x - x0)), ceil > floor, k > 0"))
