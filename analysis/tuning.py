"""Hyperparameter tuning results: seed aggregation, per-size optima, LR*(N) fits, loss-vs-LR plots.

Input is a tuning table, one row per run: the size column `N` (non-embedding parameters), the
swept values `lr` (peak learning rate), optionally `batch` (sequences per step) and `b2` (Adam
β2), the integer grid position `lr_step` (lr = predicted · factor^lr_step), `seed`, and `loss`
(final validation loss, nats/token; +inf for a run that diverged).

* `aggregate_seeds` is the mean and spread over seeds of any value per point (reports use it).
* `size_optima` picks each size's grid point with the lowest mean loss over seeds, flags an
  optimum at an edge of the swept range, and refines the LR by the vertex of a parabola in ln LR
  through the optimum and its two neighbours (a √2 grid is coarse; the vertex is kept within the
  neighbours).
* `fit_optimum_law` fits y*(N) = c·N^e by least squares in log-log space with a two-level
  cluster bootstrap: sizes are resampled with replacement and, within each size, seeds are
  resampled with replacement (whole runs, never checkpoints of one run), and the optimum is
  recomputed for every replicate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from analysis.plots import CMAP, STYLE  # noqa: E402

__all__ = ["aggregate_seeds", "size_optima", "fit_optimum_law", "predict_law",
           "plot_lr_curves", "read_tuned", "report_section", "sizes_not_all_diverged", "POINT_COLUMNS"]

POINT_COLUMNS = ("lr", "batch", "b2")  # the swept values that make one grid point


def aggregate_seeds(df: pd.DataFrame, by: Sequence[str], value: str = "loss",
                    seed_col: str = "seed") -> pd.DataFrame:
    """Returns per group of `by`: mean, std (ddof 1), min, max of `value` and n_seeds.

    Units are those of `value`; std is NaN for one seed; a non-finite value (a diverged run)
    makes its group's mean +inf.
    """
    missing = [c for c in list(by) + [value, seed_col] if c not in df.columns]
    if missing:
        raise ValueError(f"aggregate_seeds: columns {missing} are missing "
                         f"(have {list(df.columns)})")
    vals = df[list(by) + [value, seed_col]].copy()
    vals[value] = vals[value].astype(float).where(np.isfinite(vals[value].astype(float)), np.inf)
    grouped = vals.groupby(list(by), sort=True, dropna=False)
    out = grouped[value].agg(mean="mean", min="min", max="max").reset_index()
    with np.errstate(invalid="ignore"):  # the spread of a group with a diverged run is NaN
        std = grouped[value].agg(
            lambda s: float(np.std(s.to_numpy(), ddof=1)) if len(s) > 1 else math.nan)
    out["std"] = std.to_numpy()
    out["n_seeds"] = grouped[seed_col].nunique().to_numpy()
    return out


def sizes_not_all_diverged(table: pd.DataFrame) -> pd.DataFrame:
    """Returns the rows of a tuned.json table whose size has at least one finite final loss."""
    return table[table.groupby("N")["loss"].transform(lambda s: np.isfinite(s).any())]


def read_tuned(path: str | os.PathLike) -> tuple[dict[str, Any], pd.DataFrame]:
    """Returns (the tuned.json of a tuning sweep, its table of runs; a diverged run's loss +inf)."""
    with open(path, encoding="utf-8") as f:
        tuned = json.load(f)
    if not isinstance(tuned, dict) or not isinstance(tuned.get("data"), list):
        raise ValueError(f"{path}: not a tuned.json (no 'data' list of runs)")
    table = pd.DataFrame(tuned["data"])
    if "loss" not in table.columns:
        raise ValueError(f"{path}: the runs in 'data' have no 'loss'")
    table["loss"] = table["loss"].astype(float).fillna(np.inf)
    return tuned, table


def _points(table: pd.DataFrame) -> list[str]:
    return [c for c in POINT_COLUMNS if c in table.columns]


@dataclasses.dataclass(frozen=True)
class _Grid:
    """The grid points of one size as arrays (numpy, so the bootstrap loop stays fast)."""

    lr_P: np.ndarray  # peak LR per point
    step_P: np.ndarray  # LR grid step per point
    other_PO: np.ndarray  # the other swept values (batch, b2) per point
    others: tuple[str, ...]

    def column(self, name: str) -> np.ndarray:
        """Returns the values of column `name` per point."""
        if name == "lr":
            return self.lr_P
        if name == "lr_step":
            return self.step_P
        return self.other_PO[:, self.others.index(name)]


def _size_matrix(sub: pd.DataFrame, cols: list[str]) -> tuple[_Grid, np.ndarray]:
    """Returns (grid points of one size; loss matrix seeds × points, NaN where missing)."""
    loss = sub["loss"].astype(float).where(np.isfinite(sub["loss"].astype(float)), np.inf)
    wide = sub.assign(loss=loss).pivot_table(index="seed", columns=cols + ["lr_step"],
                                             values="loss", aggfunc="mean")
    points = pd.DataFrame(list(wide.columns), columns=cols + ["lr_step"])
    others = tuple(c for c in cols if c != "lr")
    grid = _Grid(lr_P=points["lr"].to_numpy(float), step_P=points["lr_step"].to_numpy(int),
                 other_PO=points[list(others)].to_numpy(float).reshape(len(points), len(others)),
                 others=others)
    return grid, wide.to_numpy(dtype=float)


def _optimum(grid: _Grid, mean_P: np.ndarray) -> dict[str, Any]:
    """Returns the best point of one size given the mean loss per point (nats), with edge flags."""
    if not np.isfinite(mean_P).any():
        raise ValueError("every grid point diverged or has no loss")
    best = int(np.argmin(np.where(np.isnan(mean_P), np.inf, mean_P)))
    same = np.all(grid.other_PO == grid.other_PO[best], axis=1)
    idx = np.where(same)[0]
    idx = idx[np.argsort(grid.step_P[idx])]  # the LR slice through the optimum, by LR
    i = int(np.where(idx == best)[0][0])
    edges = []
    if i == 0:
        edges.append("lr_low")
    if i == len(idx) - 1:
        edges.append("lr_high")
    for j, c in enumerate(grid.others):
        values = grid.other_PO[:, j]
        if values.min() < values.max() and values[best] == values.min():
            edges.append(f"{c}_low")
        if values.min() < values.max() and values[best] == values.max():
            edges.append(f"{c}_high")
    lr_opt = float(grid.lr_P[best])
    if 0 < i < len(idx) - 1 and np.all(np.isfinite(mean_P[idx[i - 1:i + 2]])):
        x, y = np.log(grid.lr_P[idx[i - 1:i + 2]]), mean_P[idx[i - 1:i + 2]]
        # vertex of the parabola through three points (closed form of a degree-2 polyfit)
        d1, d2 = (y[1] - y[0]) / (x[1] - x[0]), (y[2] - y[1]) / (x[2] - x[1])
        a = (d2 - d1) / (x[2] - x[0])
        if a > 0:
            vertex = (x[0] + x[1]) / 2 - d1 / (2 * a)
            lr_opt = float(np.exp(np.clip(vertex, x[0], x[2])))
    out: dict[str, Any] = {c: (int(v) if c == "batch" else float(v))
                           for c, v in zip(grid.others, grid.other_PO[best])}
    out.update(lr=float(grid.lr_P[best]), lr_step=int(grid.step_P[best]), lr_opt=lr_opt,
               loss=float(mean_P[best]), edge=",".join(edges))
    return out


def size_optima(table: pd.DataFrame, size_col: str = "N") -> pd.DataFrame:
    """Returns one row per size: the best grid point (lowest mean final loss over seeds, nats).

    Columns: N, lr (grid optimum), lr_opt (parabola-refined in ln LR), lr_step, batch / b2 where
    swept, loss (mean over seeds), loss_std (over seeds at that point), n_seeds, edge ('' or e.g.
    'lr_high': the optimum is at that edge of the swept range). Raises ValueError naming a size
    whose every point diverged.
    """
    need = [size_col, "lr", "lr_step", "seed", "loss"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"size_optima: columns {missing} are missing (have {list(table.columns)})")
    cols = _points(table)
    rows = []
    for n, sub in table.groupby(size_col, sort=True):
        points, loss_SP = _size_matrix(sub, cols)
        try:
            best = _optimum(points, _nanmean(loss_SP))
        except ValueError as err:
            raise ValueError(f"size_optima: size {size_col}={n:g}: {err}") from None
        at = np.ones(len(points.lr_P), bool)
        for c in cols + ["lr_step"]:
            at &= points.column(c) == float(best[c])
        col = loss_SP[:, np.argmax(at)]
        col = col[~np.isnan(col)]
        rows.append({size_col: float(n), **best,
                     "loss_std": float(np.std(col, ddof=1)) if len(col) > 1 else math.nan,
                     "n_seeds": int(len(col))})
    return pd.DataFrame(rows)


def _nanmean(loss_SP: np.ndarray) -> np.ndarray:
    """Returns the mean loss over seeds per point (NaN: no seed there; +inf: one diverged)."""
    with np.errstate(invalid="ignore"):
        count = np.sum(~np.isnan(loss_SP), axis=0)
        total = np.nansum(loss_SP, axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def predict_law(fit: dict[str, Any], n: Any) -> np.ndarray:
    """Returns c·N^e of a fit from `fit_optimum_law` at sizes N (units of the fitted value)."""
    return fit["c"] * np.power(np.asarray(n, dtype=float), fit["e"])


def fit_optimum_law(table: pd.DataFrame, value: str = "lr_opt", *, size_col: str = "N",
                    bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Returns the fit value*(N) = c·N^e (log-log least squares) with cluster-bootstrap CIs.

    `value`: a column of `size_optima` ('lr_opt', 'lr' or 'batch'). Each bootstrap replicate
    resamples sizes, then each chosen size's seeds (whole runs), and recomputes the optimum;
    replicates with fewer than 2 distinct sizes are dropped. Keys: c, e, ci_c, ci_e (percentile,
    `level`), r2, n_sizes, n_seeds (per size), bootstrap (replicates kept), level, value, law.
    """
    optima = size_optima(table, size_col)
    n_S = optima[size_col].to_numpy(float)
    if len(n_S) < 2:
        raise ValueError(f"fit_optimum_law: need at least 2 sizes, got {len(n_S)}")
    y_S = optima[value].to_numpy(float)
    e, ln_c = np.polyfit(np.log(n_S), np.log(y_S), 1)
    resid = np.log(y_S) - (e * np.log(n_S) + ln_c)
    sst = float(np.sum((np.log(y_S) - np.log(y_S).mean()) ** 2))
    out: dict[str, Any] = {
        "law": f"{value} = c * N^e", "value": value, "c": float(np.exp(ln_c)), "e": float(e),
        "r2": 1.0 - float(np.sum(resid ** 2)) / sst if sst > 0 else math.nan,
        "n_sizes": int(len(n_S)), "n_seeds": [int(k) for k in optima["n_seeds"]],
        "level": level, "bootstrap": 0, "ci_c": [math.nan, math.nan], "ci_e": [math.nan, math.nan]}
    if bootstrap <= 0:
        return out
    cols = _points(table)
    per_size = [_size_matrix(sub, cols) for _, sub in table.groupby(size_col, sort=True)]
    rng = np.random.default_rng(seed)
    es, cs = [], []
    for _ in range(bootstrap):
        pick = rng.integers(0, len(n_S), len(n_S))
        if len(set(pick.tolist())) < 2:
            continue
        ys = []
        for s in pick:
            points, loss_SP = per_size[s]
            rows = loss_SP[rng.integers(0, loss_SP.shape[0], loss_SP.shape[0])]
            mean_P = _nanmean(rows)
            if not np.isfinite(mean_P).any():
                break
            ys.append(_optimum(points, mean_P)[value])
        else:
            b_e, b_lnc = np.polyfit(np.log(n_S[pick]), np.log(np.asarray(ys, float)), 1)
            es.append(b_e)
            cs.append(math.exp(b_lnc))
    if es:
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        out.update(bootstrap=len(es),
                   ci_e=[float(np.percentile(es, lo)), float(np.percentile(es, hi))],
                   ci_c=[float(np.percentile(cs, lo)), float(np.percentile(cs, hi))])
    return out


def plot_lr_curves(table: pd.DataFrame, optima: pd.DataFrame | None = None,
                   fit: dict[str, Any] | None = None, size_col: str = "N") -> plt.Figure:
    """Returns loss (nats/token, mean ± std over seeds) vs peak LR per size, optimum starred.

    Where batch or β2 were swept too, each size shows the slice at its best batch / β2. A size
    whose optimum sits at an edge of the grid is labelled "(edge)"; `fit` draws LR*(N) as a dotted
    vertical line in each size's colour.
    """
    optima = size_optima(table, size_col) if optima is None else optima
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        sizes = optima[size_col].to_numpy(float)
        norm = LogNorm(vmin=sizes.min(), vmax=sizes.max() if sizes.max() > sizes.min()
                       else sizes.min() * 10)
        cmap = plt.get_cmap(CMAP)
        others = [c for c in _points(table) if c != "lr"]
        for _, opt in optima.iterrows():
            sub = table[table[size_col] == opt[size_col]]
            for c in others:
                sub = sub[sub[c] == opt[c]]
            agg = aggregate_seeds(sub, ["lr"])
            agg = agg[np.isfinite(agg["mean"])]
            colour = cmap(norm(opt[size_col]))
            label = f"N = {opt[size_col]:.3g}" + (" (edge)" if opt["edge"] else "")
            ax.errorbar(agg["lr"], agg["mean"], yerr=agg["std"].fillna(0.0), color=colour,
                        marker="o", ms=3, lw=1.0, capsize=2, label=label)
            ax.plot([opt["lr"]], [opt["loss"]], marker="*", ms=11, color=colour, mec="k", mew=0.6,
                    ls="none")
            if fit is not None:
                ax.axvline(float(predict_law(fit, opt[size_col])), color=colour, ls=":", lw=0.9)
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final validation loss (nats/token)")
        title = "loss vs learning rate (★ optimum"
        title += f"; dotted: LR*(N) = {fit['c']:.3g}·N^{fit['e']:.3f})" if fit else ")"
        ax.set_title(title)
        ax.legend(loc="best")
    return fig


def report_section(tuned_path: str | os.PathLike, out_dir: str | os.PathLike,
                   stem: str = "lr_tuning") -> tuple[str, list[pathlib.Path]]:
    """Returns (a Markdown section on a tuning sweep's tuned.json, the figure files it wrote).

    The section lists each size's optimum (grid LR, refined LR*, mean final loss in nats/token,
    seeds, edge flag), the fitted LR*(N) with its CI and the flags; the figure is
    `plot_lr_curves` saved as out_dir/<stem>.png and .pdf.
    """
    from analysis.plots import save_figure

    tuned, table = read_tuned(tuned_path)
    fit = (tuned.get("fits") or {}).get("lr")
    kept = sizes_not_all_diverged(table)
    files = save_figure(plot_lr_curves(kept, fit=fit), pathlib.Path(out_dir) / stem) \
        if len(kept) else []
    lines = ["## Learning-rate tuning", "",
             "| N | grid LR | LR* (refined) | loss (nats/token) | seeds | edge |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in tuned["sizes"]:
        opt = "diverged" if row.get("lr_opt") is None else f"{row['lr_opt']:.4g}"
        loss = "inf" if row.get("loss") is None else f"{row['loss']:.4f}"
        lines.append(f"| {row['N']} | {row['lr']:.4g} | {opt} | {loss} | {row.get('n_seeds', '')} "
                     f"| {row.get('edge') or ''} |")
    if fit:
        lines += ["", f"LR*(N) = {fit['c']:.4g} · N^{fit['e']:.3f}; exponent {fit['level']:.0%} "
                  f"CI [{fit['ci_e'][0]:.3f}, {fit['ci_e'][1]:.3f}] ({fit['bootstrap']} cluster-"
                  "bootstrap replicates over sizes and seeds)."]
    lines += [f"- flag: {flag}" for flag in tuned.get("flags", [])]
    if files:
        lines += ["", f"![loss vs learning rate]({files[0].name})"]
    return "\n".join(lines) + "\n", files
