"""Batched L-BFGS in JAX: many independent minimizations (starts x bootstrap resamples) in one jit.

Every lane minimizes ``fun(x, data)`` from its own start. Lanes run in lock-step; a lane that has
converged is frozen (its updates are masked out) until every lane is done or ``maxiter`` is hit.
The line search is a batched backtracking (Armijo) search; the curvature pairs that do not satisfy
``s.y > 0`` are skipped, so the inverse-Hessian approximation stays positive definite.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Objective = Callable[[jax.Array, Any], jax.Array]


class LbfgsResult(NamedTuple):
    """Final state of every lane."""

    x: np.ndarray  # (B, P) minimizers
    f: np.ndarray  # (B,) objective values at x
    grad_norm: np.ndarray  # (B,) max-norm of the gradient at x
    converged: np.ndarray  # (B,) bool: stopped by a tolerance (not by maxiter / failed search)
    iterations: int  # iterations run for the whole batch


def _two_loop(g: jax.Array, s_hist: jax.Array, y_hist: jax.Array, rho: jax.Array,
              gamma: jax.Array) -> jax.Array:
    """Returns the L-BFGS search direction -H g for a batch (oldest pair first in the history)."""
    m = s_hist.shape[1]
    q = g
    alphas = []
    for i in reversed(range(m)):
        a = rho[:, i] * jnp.sum(s_hist[:, i] * q, axis=-1)
        q = q - a[:, None] * y_hist[:, i]
        alphas.append(a)
    r = gamma[:, None] * q
    for i in range(m):
        a = alphas[m - 1 - i]
        b = rho[:, i] * jnp.sum(y_hist[:, i] * r, axis=-1)
        r = r + s_hist[:, i] * (a - b)[:, None]
    return -r


@functools.partial(jax.jit, static_argnames=("fun", "data_axis", "maxiter", "history", "max_ls"))
def _lbfgs_jit(fun: Objective, x0: jax.Array, data: Any, data_axis: Any, maxiter: int,
               history: int, max_ls: int, gtol: float, ftol: float):
    vg = jax.vmap(jax.value_and_grad(fun), in_axes=(0, data_axis))
    batch, dim = x0.shape
    dtype = x0.dtype

    def safe_vg(x):
        f, g = vg(x, data)
        bad = ~jnp.isfinite(f) | ~jnp.all(jnp.isfinite(g), axis=-1)
        f = jnp.where(bad, jnp.inf, f)
        g = jnp.where(bad[:, None], 0.0, g)
        return f, g

    f0, g0 = safe_vg(x0)
    done0 = ~jnp.isfinite(f0) | (jnp.max(jnp.abs(g0), axis=-1) <= gtol)
    conv0 = jnp.max(jnp.abs(g0), axis=-1) <= gtol
    state0 = dict(
        k=jnp.asarray(0), x=x0, f=f0, g=g0,
        s=jnp.zeros((batch, history, dim), dtype), y=jnp.zeros((batch, history, dim), dtype),
        rho=jnp.zeros((batch, history), dtype),
        gamma=1.0 / jnp.maximum(1.0, jnp.max(jnp.abs(g0), axis=-1)),
        done=done0, conv=conv0,
    )

    def cond(st):
        return (st["k"] < maxiter) & ~jnp.all(st["done"])

    def body(st):
        x, f, g, done = st["x"], st["f"], st["g"], st["done"]
        d = _two_loop(g, st["s"], st["y"], st["rho"], st["gamma"])
        gd = jnp.sum(g * d, axis=-1)
        not_descent = ~(gd < 0) | ~jnp.all(jnp.isfinite(d), axis=-1)
        d = jnp.where(not_descent[:, None], -g * st["gamma"][:, None], d)
        gd = jnp.sum(g * d, axis=-1)

        def ls_cond(ls):
            return (ls["i"] < max_ls) & ~jnp.all(ls["ok"])

        def ls_body(ls):
            t = jnp.where(ls["ok"], ls["t"], 0.5 * ls["t"])
            xn = x + t[:, None] * d
            fn, gn = safe_vg(xn)
            ok_new = fn <= f + 1e-4 * t * gd
            take = ~ls["ok"]
            return dict(
                i=ls["i"] + 1,
                t=t,
                ok=ls["ok"] | ok_new,
                fn=jnp.where(take, fn, ls["fn"]),
                gn=jnp.where(take[:, None], gn, ls["gn"]),
            )

        xn1 = x + d
        fn1, gn1 = safe_vg(xn1)
        ls0 = dict(i=jnp.asarray(1), t=jnp.ones((batch,), dtype),
                   ok=done | (fn1 <= f + 1e-4 * gd), fn=fn1, gn=gn1)
        ls = jax.lax.while_loop(ls_cond, ls_body, ls0)
        accepted = ls["ok"] & ~done
        t = ls["t"]
        s_new = t[:, None] * d
        x_new = jnp.where(accepted[:, None], x + s_new, x)
        f_new = jnp.where(accepted, ls["fn"], f)
        g_new = jnp.where(accepted[:, None], ls["gn"], g)
        y_new = g_new - g
        sy = jnp.sum(s_new * y_new, axis=-1)
        yy = jnp.sum(y_new * y_new, axis=-1)
        update = accepted & (sy > 1e-12 * jnp.sqrt(yy * jnp.sum(s_new * s_new, axis=-1)) + 1e-300)
        s_hist = jnp.where(update[:, None, None],
                           jnp.concatenate([st["s"][:, 1:], s_new[:, None]], axis=1), st["s"])
        y_hist = jnp.where(update[:, None, None],
                           jnp.concatenate([st["y"][:, 1:], y_new[:, None]], axis=1), st["y"])
        rho = jnp.where(update[:, None],
                        jnp.concatenate([st["rho"][:, 1:], (1.0 / jnp.where(update, sy, 1.0))[:, None]],
                                        axis=1), st["rho"])
        gamma = jnp.where(update, sy / jnp.where(update, yy, 1.0), st["gamma"])
        small_g = jnp.max(jnp.abs(g_new), axis=-1) <= gtol
        small_f = (f - f_new) <= ftol * jnp.maximum(jnp.maximum(jnp.abs(f), jnp.abs(f_new)), 1.0)
        failed = ~ls["ok"] & ~done
        conv = st["conv"] | (~done & accepted & (small_g | small_f))
        return dict(k=st["k"] + 1, x=x_new, f=f_new, g=g_new, s=s_hist, y=y_hist, rho=rho,
                    gamma=gamma, done=done | small_g | (accepted & small_f) | failed, conv=conv)

    st = jax.lax.while_loop(cond, body, state0)
    return st["x"], st["f"], jnp.max(jnp.abs(st["g"]), axis=-1), st["conv"], st["k"]


def batched_lbfgs(fun: Objective, x0: np.ndarray, data: Any, *, data_axis: Any = None,
                  maxiter: int = 500, history: int = 10, max_ls: int = 30, gtol: float = 1e-9,
                  ftol: float = 1e-13) -> LbfgsResult:
    """Returns the minimizers of ``fun(x, data)`` from every row of ``x0`` (float64, one jit call).

    ``fun`` must be a hashable, stable callable (a module-level function), so compiled kernels are
    reused. ``data_axis`` is the ``vmap`` in_axes spec for ``data`` (None: shared by all lanes).
    """
    with jax.enable_x64(True):
        x0j = jnp.asarray(np.asarray(x0, dtype=np.float64))
        dataj = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, dtype=np.float64)), data)
        x, f, gn, conv, k = _lbfgs_jit(fun, x0j, dataj, data_axis, int(maxiter), int(history),
                                       int(max_ls), float(gtol), float(ftol))
        return LbfgsResult(np.asarray(x), np.asarray(f), np.asarray(gn), np.asarray(conv), int(k))
