"""The `Law` type: a functional form with the parameterization and start grid a fit needs.

A law is fitted in a raw, unconstrained parameterization (e.g. ln A instead of A) on residuals in a
"target space" (ln y for losses, ln(1+y) for BNSL, y itself for sigmoids); `to_natural` and
`from_natural` map raw rows to the reported parameters and back. The catalogue of laws is in
`analysis.loss_laws`, `analysis.stage_laws` and, by name, `analysis.catalog`; fitting is
`analysis.fit`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Law", "lse", "lae", "predict_target", "predict_target_many"]


@dataclass(frozen=True, eq=False)
class Law:
    """A functional form with its fitting parameterization (raw, unconstrained) and start grid."""

    name: str
    inputs: tuple[str, ...]  # input columns, e.g. ("N", "D")
    raw_names: tuple[str, ...]  # optimized parameters
    param_names: tuple[str, ...]  # reported (natural) parameters
    target: str  # residual space: "log" (ln y), "log1p" (ln(1+y)) or "identity"
    delta: float  # default Huber delta in target space (inf: squared error)
    predict_t: Callable[[jax.Array, jax.Array], jax.Array]  # (raw (P,), X (n,k)) -> target-space y
    to_natural: Callable[[np.ndarray], np.ndarray]  # raw (..., P) -> natural (..., Q)
    from_natural: Callable[[np.ndarray], np.ndarray]  # natural (..., Q) -> raw (..., P)
    init: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (X, y) -> starts (S, P)
    formula: str = ""
    # optional: target-space prediction = LSE over terms raw[c] − raw[slope]·ln X[:, col]
    # (slope None: constant raw[c]); enables the hand-written gradient
    lse_terms: tuple | None = None
    # optional: (n, k) inputs -> (n,) bool, the rows the form accepts (default: every input > 0)
    domain: Callable[[np.ndarray], np.ndarray] | None = None

    def valid_inputs(self, X: np.ndarray) -> np.ndarray:
        """Returns the (n,) mask of input rows inside the law's domain (default: all inputs > 0)."""
        return self.domain(X) if self.domain is not None else np.all(X > 0, axis=1)

    def transform(self, y: np.ndarray) -> np.ndarray:
        """Returns y in the law's target space (dimensionless)."""
        y = np.asarray(y, dtype=float)
        if self.target == "log":
            return np.log(y)
        if self.target == "log1p":
            return np.log1p(y)
        return y

    def inverse(self, t: np.ndarray) -> np.ndarray:
        """Returns target-space values mapped back to the units of y."""
        t = np.asarray(t, dtype=float)
        if self.target == "log":
            return np.exp(t)
        if self.target == "log1p":
            return np.expm1(t)
        return t

    def predict(self, params: Mapping[str, float] | np.ndarray, X: np.ndarray) -> np.ndarray:
        """Returns the law's prediction of y (units of y) at inputs X (n, len(inputs))."""
        nat = np.array([params[k] for k in self.param_names]) if isinstance(params, Mapping) \
            else np.asarray(params, dtype=float)
        raw = self.from_natural(nat)
        return self.inverse(predict_target(self, raw, self._inputs(X)))

    def predict_many(self, params_SP: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Returns (S, n) predictions (units of y) of S natural-parameter rows at inputs X.

        One vectorised call: a bootstrap's 200-1000 rows cost about what one `predict` costs."""
        nat_SP = np.atleast_2d(np.asarray(params_SP, dtype=float))
        raw_SP = np.stack([self.from_natural(row) for row in nat_SP])
        return self.inverse(predict_target_many(self, raw_SP, self._inputs(X)))

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=float))
        if X.shape[1] != len(self.inputs) and X.shape[0] == len(self.inputs):
            X = X.T
        return X


def lse(*terms: jax.Array) -> jax.Array:
    """Returns ln Σ_j e^{terms_j}, elementwise over the terms' common shape."""
    return jax.nn.logsumexp(jnp.stack(terms, axis=0), axis=0)


def lae(a: jax.Array, b: jax.Array) -> jax.Array:
    """Returns ln(e^a + e^b), written with elementary ops (cheap to differentiate and compile)."""
    m = jnp.maximum(a, b)
    return m + jnp.log1p(jnp.exp(-jnp.abs(a - b)))


def predict_target(law: Law, raw_P: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Returns (n,) target-space predictions of one raw parameter row at the inputs X (n, k), float64."""
    with jax.enable_x64(True):
        return np.asarray(_jit_predict(law.predict_t)(jnp.asarray(raw_P, dtype=jnp.float64),
                                                      jnp.asarray(X)))


def predict_target_many(law: Law, raw_SP: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Returns (S, n) target-space predictions of every raw parameter row at the inputs X, float64."""
    with jax.enable_x64(True), np.errstate(all="ignore"):
        pred = _jit_predict_many(law.predict_t)(jnp.asarray(raw_SP, dtype=jnp.float64),
                                                jnp.asarray(X))
        return np.asarray(pred)


# Compiled predictions, one program per law and input shape. Run eagerly, a law's few jnp ops
# are dispatched (and, at each new shape, compiled) one by one: ~0.5 s per new shape, which made
# predictions a quarter of a study's analysis.
@functools.lru_cache(maxsize=None)
def _jit_predict(predict_t: Callable) -> Callable:
    return jax.jit(predict_t)


@functools.lru_cache(maxsize=None)
def _jit_predict_many(predict_t: Callable) -> Callable:
    return jax.jit(jax.vmap(predict_t, in_axes=(0, None)))
