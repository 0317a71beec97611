"""Compression laws: sparsity scaling (Frantar et al. 2023) and quantization degradation ΔL(N, D, bits).

- `fit_sparsity`: L(S, N, D) = (a·(1−S)^b + c)·N^(−d) + e·D^(−f) + g, N the non-zero parameters,
  fitted as the authors do (Huber loss, many starts; on ln L with δ = 1e-3 for language models, on
  L with δ = 0.01 for their ViT data) through `analysis.fit.fit_law`.
- `fit_quant_degradation`: the loss a post-training quantization adds, ΔL = L_quantized − L_float,
  as ΔL = C·N^(−γ_N)·D^(γ_D)·e^(−k·bits) (the form of Kumar et al. 2024, "Scaling Laws for
  Precision"), Huber on ln ΔL; it reports whether ΔL grows with D at fixed N (γ_D > 0 with its
  bootstrap CI above zero) and, model-free, the sign of the ΔL-vs-D slope within each (N, bits).
- `paired_difference`: a mean difference over seeds with a bootstrap CI (e.g. distillation gain).

Inputs are plain arrays (one entry per run or checkpoint); nothing here reads the training code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis.errors import InsufficientData
from analysis.catalog import get_law
from analysis.fit import FitResult, fit_law
from analysis.law_spec import Law

__all__ = ["fit_sparsity", "QUANT_DEGRADATION", "QuantDegradation", "fit_quant_degradation",
           "degradation_table", "compression_table", "paired_difference"]

# axes `scaling compress` writes into a compressed run's run.json (spelled out here because
# analysis/ never imports the training code)
COMPRESSION_AXES = ("source_run", "source_step", "quant_bits", "group_size", "sparsity", "prune_pattern")


def _check_sparsity(S: np.ndarray) -> None:
    """Raises ValueError unless every sparsity lies in [0, 1)."""
    bad = ~np.isfinite(S) | (S < 0) | (S >= 1)
    if bad.any():
        raise ValueError(f"sparsity S must lie in [0, 1); got {S[bad][0]!r} ({int(bad.sum())} bad values)")


def fit_sparsity(S: Any, N: Any, D: Any, loss: Any, *, residuals: str = "log", **kw: Any) -> FitResult:
    """Returns the fit of Frantar et al.'s L(S, N, D) (loss units; N non-zero parameters, D tokens).

    residuals: "log" (Huber δ = 1e-3 on ln L, the authors' language-model fit, law "sparsity") or
    "linear" (Huber δ = 0.01 on L, their ViT fit, law "sparsity-linear"). Other keywords
    (bootstrap, groups, seed, ...) go to `fit_law`.
    """
    if residuals not in ("log", "linear"):
        raise ValueError(f"residuals: expected 'log' or 'linear', got {residuals!r}")
    S, N, D = (np.asarray(v, dtype=float).ravel() for v in (S, N, D))
    _check_sparsity(S)
    law = get_law("sparsity" if residuals == "log" else "sparsity-linear")
    return fit_law(law, np.column_stack([S, N, D]), loss, **kw)


# ----------------------------------------------------------------------------- quantization


def _qd_pred(th, X):
    """Returns ln ΔL = ln C − γ_N·ln N + γ_D·ln D − k·bits from raw (ln C, γ_N, γ_D, k)."""
    return th[0] - th[1] * jnp.log(X[:, 0]) + th[2] * jnp.log(X[:, 1]) - th[3] * X[:, 2]


def _qd_nat(r):
    r = np.array(r, dtype=float)
    r[..., 0] = np.exp(r[..., 0])
    return r


def _qd_raw(n):
    n = np.array(n, dtype=float)
    n[..., 0] = np.log(n[..., 0])
    return n


def _qd_init(X, y):
    """Returns one start per k in {0.2, 0.7, 1.5}: ln C through the median ΔL (the fit is convex)."""
    ly = float(np.median(np.log(y)))
    b = float(np.median(X[:, 2]))
    return np.array([(ly + k * b, 0.0, 0.0, k) for k in (0.2, 0.7, 1.5)])


QUANT_DEGRADATION = Law(
    name="quant-degradation", inputs=("N", "D", "bits"), raw_names=("ln_C", "gamma_N", "gamma_D", "k"),
    param_names=("C", "gamma_N", "gamma_D", "k"), target="log", delta=0.1, predict_t=_qd_pred,
    to_natural=_qd_nat, from_natural=_qd_raw, init=_qd_init,
    formula="dL = C * N^-gamma_N * D^gamma_D * exp(-k * bits)",
)


@dataclass
class QuantDegradation:
    """A ΔL(N, D, bits) fit and the verdict on whether ΔL grows with D at fixed N."""

    fit: FitResult
    grows_with_D: str  # "yes" (γ_D CI above 0), "no" (CI below 0) or "inconclusive"
    gamma_D: float  # fitted exponent of D (dimensionless)
    gamma_D_ci: tuple[float, float]  # bootstrap percentile CI (NaN without bootstrap)
    slopes: pd.DataFrame  # per (N, bits): d ln ΔL / d ln D (least squares), points used
    n_dropped: int  # points with ΔL ≤ 0 (no degradation measurable on a log scale)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serializable summary (fit, verdict, per-group slopes)."""
        return {"fit": self.fit.to_dict(), "grows_with_D": self.grows_with_D, "gamma_D": self.gamma_D,
                "gamma_D_ci": list(self.gamma_D_ci), "n_dropped": self.n_dropped,
                "slopes": self.slopes.to_dict(orient="records")}


def fit_quant_degradation(N: Any, D: Any, bits: Any, delta_loss: Any, *, bootstrap: int = 200,
                          groups: Any = None, seed: int = 0, level: float = 0.95) -> QuantDegradation:
    """Returns the fit of ΔL = C·N^(−γ_N)·D^(γ_D)·e^(−k·bits) (ΔL nats/token) with the D verdict.

    N: parameters, D: training tokens of the float model, bits: the quantized weights' bits,
    delta_loss: quantized minus float validation loss at the same checkpoint. Points with ΔL ≤ 0
    carry no measurable degradation on a log scale and are dropped (counted in ``n_dropped``).
    groups: labels for a cluster bootstrap (e.g. the source run, so its bit widths move together).
    """
    N, D, bits, dl = (np.asarray(v, dtype=float).ravel() for v in (N, D, bits, delta_loss))
    if not len(N) == len(D) == len(bits) == len(dl):
        raise ValueError(f"fit_quant_degradation: N, D, bits, delta_loss have lengths "
                         f"{len(N)}, {len(D)}, {len(bits)}, {len(dl)}")
    finite = np.isfinite(N) & np.isfinite(D) & np.isfinite(bits) & np.isfinite(dl)
    keep = finite & (dl > 0)
    n_dropped = int(np.sum(finite & ~keep))
    X = np.column_stack([N, D, bits])
    g = None if groups is None else np.asarray(groups)[keep]
    fit = fit_law(QUANT_DEGRADATION, X[keep], dl[keep], bootstrap=bootstrap, groups=g, seed=seed,
                  level=level)
    gD = fit.params["gamma_D"]
    lo, hi = fit.ci.get("gamma_D", (math.nan, math.nan))
    verdict = "yes" if lo > 0 else "no" if hi < 0 else "inconclusive"
    rows = []
    frame = pd.DataFrame({"N": N[keep], "D": D[keep], "bits": bits[keep], "dl": dl[keep]})
    for (n, b), sub in frame.groupby(["N", "bits"], sort=True):
        if sub["D"].nunique() < 2:
            continue
        slope = float(np.polyfit(np.log(sub["D"]), np.log(sub["dl"]), 1)[0])
        rows.append({"N": n, "bits": b, "slope_lnD": slope, "n_points": len(sub)})
    return QuantDegradation(fit=fit, grows_with_D=verdict, gamma_D=gD, gamma_D_ci=(lo, hi),
                            slopes=pd.DataFrame(rows, columns=["N", "bits", "slope_lnD", "n_points"]),
                            n_dropped=n_dropped)


def degradation_table(compressed: pd.DataFrame, reference: pd.DataFrame, *,
                      keys: tuple[str, ...] = ("source_run", "step")) -> pd.DataFrame:
    """Returns compressed rows joined with their float reference, adding ``delta_loss`` (nats/token).

    compressed: one row per compressed checkpoint with the ``keys`` columns and ``loss``;
    reference: one row per float checkpoint with the same keys and ``loss``. A compressed row
    without a reference is an error naming its keys.
    """
    ref = reference.set_index(list(keys))["loss"]
    if ref.index.duplicated().any():
        raise ValueError(f"reference has several losses for one {keys}: "
                         f"{ref.index[ref.index.duplicated()][0]!r}")
    idx = pd.MultiIndex.from_frame(compressed[list(keys)]) if len(keys) > 1 else compressed[keys[0]]
    missing = ~idx.isin(ref.index)
    if missing.any():
        raise ValueError(f"no float reference loss for {dict(zip(keys, idx[missing][0]))}")
    out = compressed.copy()
    out["loss_float"] = ref.loc[idx].to_numpy()
    out["delta_loss"] = out["loss"] - out["loss_float"]
    return out


def compression_table(runs: pd.DataFrame, metric: str = "val/loss") -> pd.DataFrame:
    """Returns one row per compressed checkpoint with its float reference and ``delta_loss``.

    runs: the long frame of `analysis.runs.load_runs` over the compressed runs and their sources.
    Columns: run_id, source_run, step, N (non-embedding), D (tokens), the compression axes,
    loss (the metric, nats/token for losses), loss_float (the source run's value at the same
    step) and delta_loss. A compressed run whose source is not loaded is an error naming it.
    """
    ev = runs[(runs["source"] == "eval") & (runs["metric"] == metric)]
    if "source_run" not in ev.columns or not ev["source_run"].notna().any():
        raise InsufficientData(f"no compressed run has a {metric!r} evaluation")
    comp = ev[ev["source_run"].notna()]
    ref = ev[ev["source_run"].isna()][["run_id", "step", "value"]].rename(
        columns={"run_id": "source_run", "value": "loss"})
    cols = ["run_id", "source_run", "step", "N_nonembed", "D"] + [
        c for c in COMPRESSION_AXES[2:] if c in comp.columns]
    out = comp[cols + ["value"]].rename(columns={"value": "loss", "N_nonembed": "N"})
    out = degradation_table(out.reset_index(drop=True), ref.reset_index(drop=True))
    return out


def paired_difference(treated: Any, control: Any, *, bootstrap: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict[str, float]:
    """Returns the mean of control − treated (e.g. loss alone − loss with teacher, nats) with a CI.

    treated[i] and control[i] share seed i (paired); the CI is the percentile bootstrap over seeds.
    """
    t, c = np.asarray(treated, dtype=float).ravel(), np.asarray(control, dtype=float).ravel()
    if len(t) != len(c):
        raise ValueError(f"paired_difference: {len(t)} treated but {len(c)} control values")
    if len(t) < 2:
        raise InsufficientData(f"paired_difference: {len(t)} seed(s); a CI needs at least 2")
    d = c - t
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(bootstrap, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "n_seeds": len(d)}
