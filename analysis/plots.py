"""Publication-grade figures (matplotlib, Agg): log axes, labelled units, colour by size, CI bands."""

from __future__ import annotations

import functools
import math
import pathlib
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

from analysis.fit import FitResult  # noqa: E402

__all__ = ["save_figure", "prediction_band", "plot_loss_vs_compute", "plot_isoflop", "plot_law_fit",
           "plot_emergence", "plot_discrete_continuous", "plot_subtasks", "plot_forest"]

STYLE = {"font.size": 9, "axes.labelsize": 9, "axes.titlesize": 10, "legend.fontsize": 7,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": 150, "savefig.dpi": 200,
         "axes.grid": True, "grid.alpha": 0.25, "axes.spines.top": False, "axes.spines.right": False}
CMAP = "viridis"


def _styled(fn):
    """Runs a plotting function inside the module's rc style (no global rcParams change)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def _fig(ncols: int = 1, width: float = 4.2, height: float = 3.2):
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]


def _tidy_log_axis(axis, lo: float, hi: float) -> None:
    """Readable log-axis ticks: plain 1-2-5 labels within a short range, no crowded minor labels."""
    if lo > 0 and hi / lo < 30:
        subs = tuple(float(k) for k in range(1, 10)) if hi / lo < 3 else (1.0, 2.0, 5.0)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


@_styled
def save_figure(fig: plt.Figure, stem: str | pathlib.Path) -> list[pathlib.Path]:
    """Returns the paths of the PNG and PDF written for fig at stem (closes the figure)."""
    stem = pathlib.Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:
        if ax.get_xscale() == "log":
            _tidy_log_axis(ax.xaxis, *sorted(ax.get_xlim()))
        if ax.get_yscale() == "log":
            _tidy_log_axis(ax.yaxis, *sorted(ax.get_ylim()))
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, bbox_inches="tight")
    plt.close(fig)
    return paths


def prediction_band(fit: FitResult, X: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
    """Returns (low, high) pointwise bootstrap bands of the fit's prediction at X (units of y), or None."""
    if fit.boot is None or len(fit.boot) == 0:
        return None
    rows = fit.boot[np.all(np.isfinite(fit.boot), axis=1)]
    if len(rows) == 0:
        return None
    with np.errstate(all="ignore"):
        P = fit.law.predict_many(rows, X)
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    return np.nanpercentile(P, lo, axis=0), np.nanpercentile(P, hi, axis=0)


def _size_norm(N: Sequence[float]) -> LogNorm:
    N = np.asarray(N, dtype=float)
    N = N[np.isfinite(N) & (N > 0)]
    lo, hi = (N.min(), N.max()) if len(N) else (1.0, 10.0)
    return LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)


def _size_colorbar(fig, ax, norm, label: str = "parameters N") -> None:
    sm = plt.cm.ScalarMappable(norm=norm, cmap=CMAP)
    sm.set_array([])
    fig.colorbar(sm, ax=ax, label=label, pad=0.02)


@_styled
def plot_loss_vs_compute(curves: pd.DataFrame, frontier: pd.DataFrame | None = None,
                         power_fit: FitResult | None = None, *, n_label: str = "parameters N",
                         c_label: str = "training compute C (FLOPs)") -> plt.Figure:
    """Returns loss vs compute per run (colour = N), the lowest-loss frontier, and an optional L(C) fit.

    curves: columns run_id, C (FLOPs), value (loss, nats/token), N (parameters); n_label, c_label
    name the N and C conventions on the axes.
    """
    fig, (ax,) = _fig(width=5.0, height=3.6)
    norm = _size_norm(curves["N"])
    cmap = plt.get_cmap(CMAP)
    for _, g in curves.groupby("run_id"):
        g = g.sort_values("C")
        ax.plot(g["C"], g["value"], color=cmap(norm(g["N"].iloc[0])), lw=0.9, alpha=0.8)
    if frontier is not None and len(frontier):
        ax.plot(frontier["C"], frontier["loss"], "k.", ms=4, label="frontier (lowest loss per FLOP bin)")
    if power_fit is not None:
        cg = np.geomspace(curves["C"].min(), curves["C"].max(), 200)
        ax.plot(cg, power_fit.predict(cg[:, None]), "r--", lw=1.2,
                label=f"L(C) = E + A·C^−α, α = {power_fit.params['alpha']:.3f}")
        band = prediction_band(power_fit, cg[:, None])
        if band is not None:
            ax.fill_between(cg, band[0], band[1], color="r", alpha=0.15, lw=0, label="95% CI")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(c_label)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss vs compute")
    _size_colorbar(fig, ax, norm, n_label)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", frameon=False)
    return fig


@_styled
def plot_isoflop(points: pd.DataFrame, result: Any, *, n_label: str = "parameters N",
                 c_label: str = "compute C (FLOPs)") -> plt.Figure:
    """Returns IsoFLOP curves (loss vs N per budget, minima marked) and N*(C) with its fit and CI band.

    points: columns C (FLOPs), N (parameters), loss (nats/token), and optionally budget (the
    IsoFLOP budget each point was grouped into, FLOPs; else C within 2 % groups them);
    result: isoflop.IsoFlopResult.
    """
    fig, (ax, ax2) = _fig(ncols=2, width=4.4, height=3.4)
    opt = result.optima
    norm = LogNorm(vmin=opt["C"].min(), vmax=max(opt["C"].max(), opt["C"].min() * 1.01))
    cmap = plt.get_cmap("plasma")
    from analysis.isoflop import group_budgets
    if "budget" in points.columns:
        labels = points["budget"].to_numpy(float)
    else:
        labels = group_budgets(points["C"].to_numpy(float))
    for lab in np.unique(labels):
        g = points[labels == lab].sort_values("N")
        c = float(lab) if "budget" in points.columns else float(np.exp(np.mean(np.log(g["C"]))))
        col = cmap(norm(c))
        ax.plot(g["N"], g["loss"], "o", ms=3, color=col)
        key = min(result.curves, key=lambda k: abs(math.log(k / c))) if result.curves else None
        if key is not None and abs(math.log(key / c)) < 0.05:
            ng, lg = result.curves[key]
            ax.plot(ng, lg, "-", lw=0.9, color=col)
    kept = opt[opt["kept"]]
    ax.plot(kept["N_star"], kept["loss_star"], "k*", ms=6, label="minimum per budget")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(n_label)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"IsoFLOP curves ({result.method})")
    ax.legend(frameon=False)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    fig.colorbar(sm, ax=ax, label="budget C (FLOPs)", pad=0.02)
    cg = np.geomspace(kept["C"].min(), kept["C"].max(), 100)
    nf = result.n_fit
    ax2.plot(kept["C"], kept["N_star"], "ko", ms=4, label="N*(C)")
    ax2.plot(cg, nf.predict(cg), "C0-", label=f"N* ∝ C^a, a = {nf.a:.3f} [{nf.ci_a[0]:.3f}, {nf.ci_a[1]:.3f}]")
    if np.all(np.isfinite(nf.ci_a)):
        lc0 = float(np.exp(np.mean(np.log(kept["C"]))))
        base = nf.predict(lc0)
        lo = base * (cg / lc0) ** nf.ci_a[0]
        hi = base * (cg / lc0) ** nf.ci_a[1]
        ax2.fill_between(cg, np.minimum(lo, hi), np.maximum(lo, hi), color="C0", alpha=0.15, lw=0,
                         label="95% CI of a (pivot at mean ln C)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel(c_label)
    ax2.set_ylabel(f"compute-optimal N* ({n_label})")
    ax2.set_title("Compute-optimal model size")
    ax2.legend(frameon=False)
    return fig


@_styled
def plot_law_fit(fit: FitResult, size_col: int = 0) -> plt.Figure:
    """Returns measured vs fitted values (colour = first input) and target-space residuals of a law fit."""
    fig, (ax, ax2) = _fig(ncols=2, width=4.4, height=3.4)
    X, y = fit.X, fit.y
    pred = fit.predict(X)
    names = {"N": "parameters N", "D": "tokens D", "C": "compute C (FLOPs)", "x": "x"}
    if X.shape[1] >= 2:
        norm = _size_norm(X[:, 0])
        sc = ax.scatter(X[:, 1], y, c=X[:, 0], cmap=CMAP, norm=norm, s=12, label="measured")
        order = np.lexsort((X[:, 1], X[:, 0]))
        for n in np.unique(X[:, 0]):
            m = X[order, 0] == n
            if m.sum() > 1:
                ax.plot(X[order][m, 1], pred[order][m], "-", color=plt.get_cmap(CMAP)(norm(n)), lw=0.8)
        ax.set_xlabel(names.get(fit.law.inputs[1], fit.law.inputs[1]))
        fig.colorbar(sc, ax=ax, label=names.get(fit.law.inputs[0], fit.law.inputs[0]), pad=0.02)
    else:
        ax.plot(X[:, 0], y, "ko", ms=3, label="measured")
        xg = np.geomspace(X[:, 0].min(), X[:, 0].max(), 200)
        ax.plot(xg, fit.predict(xg[:, None]), "C0-", label="fit")
        band = prediction_band(fit, xg[:, None])
        if band is not None:
            ax.fill_between(xg, band[0], band[1], color="C0", alpha=0.2, lw=0, label="95% CI")
        ax.set_xlabel(names.get(fit.law.inputs[0], fit.law.inputs[0]))
    ax.set_xscale("log")
    if fit.law.target == "log":
        ax.set_yscale("log")
    ax.set_ylabel("loss (nats/token)" if fit.law.target == "log" else "y")
    ax.set_title(fit.law.formula, fontsize=8)
    ax.legend(frameon=False)
    res = fit.law.transform(pred) - fit.law.transform(y)
    ax2.axhline(0, color="k", lw=0.8)
    ax2.scatter(X[:, -1] if X.shape[1] > 1 else X[:, 0], res, c=X[:, 0], cmap=CMAP,
                norm=_size_norm(X[:, 0]), s=10)
    ax2.set_xscale("log")
    ax2.set_xlabel(names.get(fit.law.inputs[-1], fit.law.inputs[-1]))
    ylab = {"log": "residual ln(pred) − ln(measured)", "log1p": "residual of ln(1+y)", "identity": "residual"}
    ax2.set_ylabel(ylab[fit.law.target])
    ax2.set_title(f"Residuals (RMS {fit.rms:.2e})")
    return fig


@_styled
def plot_emergence(curves: Sequence[tuple[str, np.ndarray, np.ndarray, Any]], xlabel: str,
                   ylabel: str = "exact match (fraction)") -> plt.Figure:
    """Returns metric vs x curves with sigmoid fits, CI bands and emergence points (x0).

    curves: (label, x, y, EmergenceResult or None) per task/series.
    """
    fig, (ax,) = _fig(width=5.0, height=3.6)
    for i, (label, x, y, res) in enumerate(curves):
        col = f"C{i % 10}"
        order = np.argsort(x)
        ax.plot(np.asarray(x)[order], np.asarray(y)[order], "o", ms=3, color=col, label=label)
        if res is not None:
            xg = np.geomspace(np.min(x), np.max(x), 200)
            ax.plot(xg, res.fit.predict(xg[:, None]), "-", lw=1.0, color=col)
            band = prediction_band(res.fit, xg[:, None])
            if band is not None:
                ax.fill_between(xg, band[0], band[1], color=col, alpha=0.15, lw=0)
            if res.transition and res.x0_in_range:
                ax.axvline(res.x_emergence, color=col, ls=":", lw=1.0)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Emergence (dotted: sigmoid midpoint x0)")
    ax.legend(frameon=False)
    return fig


@_styled
def plot_discrete_continuous(res: Any, label: str = "") -> plt.Figure:
    """Returns per-token cross-entropy with its power law, and measured vs predicted exact match p^ℓ."""
    fig, (ax, ax2) = _fig(ncols=2, width=4.2, height=3.2)
    t = res.table
    ng = np.geomspace(t["N"].min(), t["N"].max(), 200)
    ax.plot(t["N"], t["ce"], "ko", ms=3, label="measured")
    ax.plot(ng, res.fit.predict(ng[:, None]), "C0-", label="CE = E + A·N^−α")
    band = prediction_band(res.fit, ng[:, None])
    if band is not None:
        ax.fill_between(ng, band[0], band[1], color="C0", alpha=0.2, lw=0, label="95% CI")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("answer cross-entropy (nats/token)")
    ax.set_title(f"Continuous metric {label}".strip())
    ax.legend(frameon=False)
    ax2.plot(t["N"], t["em"], "ko", ms=3, label="measured exact match")
    ax2.plot(ng, np.exp(-res.answer_len * res.fit.predict(ng[:, None])), "C1-",
             label=f"predicted p^ℓ (ℓ = {res.answer_len:g})")
    ax2.set_xscale("log")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("parameters N")
    ax2.set_ylabel("exact match (fraction)")
    ax2.set_title(f"Discrete metric (RMS error {res.rmse_em:.3f})")
    ax2.legend(frameon=False)
    return fig


@_styled
def plot_subtasks(wide: pd.DataFrame, x_col: str = "D", learned: pd.DataFrame | None = None,
                  threshold: float = 0.9) -> plt.Figure:
    """Returns per-subtask metric curves vs x (colour = subtask index) and learned-subtask counts vs N."""
    fig, (ax, ax2) = _fig(ncols=2, width=4.4, height=3.4)
    cols = sorted(c for c in wide.columns if isinstance(c, (int, np.integer)))
    cmap = plt.get_cmap("turbo")
    last = wide.sort_values("step").groupby("run_id").tail(1) if "step" in wide.columns else wide
    big = wide[wide["run_id"] == last.sort_values("N")["run_id"].iloc[-1]] if "run_id" in wide.columns else wide
    big = big.sort_values(x_col)
    for j, c in enumerate(cols):
        ax.plot(big[x_col], big[c], "-", color=cmap(j / max(1, len(cols) - 1)), lw=0.9,
                label=f"subtask {c}" if len(cols) <= 8 else None)
    ax.axhline(threshold, color="k", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel({"D": "tokens D", "C": "compute C (FLOPs)", "step": "step"}.get(x_col, x_col))
    ax.set_ylabel("subtask exact match (fraction)")
    ax.set_title("Per-subtask curves (largest model)")
    if len(cols) <= 8:
        ax.legend(frameon=False)
    if learned is not None and len(learned):
        fin = learned.sort_values("step").groupby("run_id").tail(1) if "step" in learned.columns else learned
        ax2.plot(fin["N"], fin["n_learned"], "ko", ms=4)
        ax2.set_xscale("log")
        ax2.set_xlabel("parameters N")
        ax2.set_ylabel(f"subtasks learned (metric ≥ {threshold:g})")
        ax2.set_title("Learned subtasks at the end of training")
    return fig


@_styled
def plot_forest(table: pd.DataFrame) -> plt.Figure:
    """Returns a forest plot: each arm's difference from baseline per parameter, with CIs."""
    params = list(pd.unique(table["param"]))
    fig, axes = _fig(ncols=len(params), width=2.4, height=max(2.2, 1.2 + 0.35 * table["arm"].nunique()))
    arms = list(pd.unique(table["arm"]))
    for ax, p in zip(axes, params):
        sub = table[table["param"] == p].set_index("arm").reindex(arms)
        yy = np.arange(len(arms))[::-1]
        err = np.vstack([sub["diff"] - sub["diff_low"], sub["diff_high"] - sub["diff"]])
        err = np.where(np.isfinite(err), np.abs(err), 0.0)
        ax.errorbar(sub["diff"], yy, xerr=err, fmt="o", ms=3, color="k", capsize=2)
        ax.axvline(0, color="C3", lw=0.8)
        ax.set_yticks(yy)
        ax.set_yticklabels(arms if p == params[0] else [""] * len(arms))
        ax.set_title(f"Δ{p}")
        ax.set_xlabel("difference from baseline")
    return fig
