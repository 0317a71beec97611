"""Build a Markdown + HTML report (tables, PNG/PDF figures) from one or more sweep roots / run dirs.

Sections appear only when their data exists; the report lists every skipped section and why.
Final values of a run are the ones at its last logged step. Loss is "val/loss" from eval.jsonl when
present, else "train/loss" from metrics.jsonl.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import pathlib
import re
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis import plots
from analysis.ablation import ablation_table
from analysis.backtest import backtest
from analysis.emergence import discrete_vs_continuous, fit_emergence, learned_subtasks, subtask_curves
from analysis.fit import compute_optimal_ci, fit_chinchilla, fit_law
from analysis.isoflop import approach1, approach2
from analysis.runs import final_values, load_runs, run_table

log = logging.getLogger(__name__)

__all__ = ["build_report", "detect_arm_axis", "markdown_table"]

# Substrings of (lower-cased) axis names that mark size, data, compute or seed axes, never ablation
# arms. The first row are the axes `scaling.sweeps.spec` generates itself (sizes, the data budget
# axis tokens | tokens_per_param | flops, seeds).
_SIZE_HINTS = ("n_target", "d_target", "c_budget", "tokens_per_param", "seed",
               "n_params", "width", "depth", "layers", "d_model", "heads", "head_dim", "d_ff", "vocab",
               "seq_len", "tokens", "train_fraction", "num_examples", "epochs", "steps", "flops",
               "budget", "batch")


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """Returns df as a GitHub-flavoured Markdown table (numbers formatted with floatfmt)."""
    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "nan" if not math.isfinite(v) else format(float(v), floatfmt)
        return str(v).replace("|", "\\|")
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def detect_arm_axis(runs: pd.DataFrame, axis_cols: Sequence[str]) -> str | None:
    """Returns the axis that looks like an ablation arm (2–12 values; not size/data/compute/seed), or None."""
    for c in axis_cols:
        if c.split(".")[-1] in ("arm", "ablation", "variant"):
            return c
    for c in axis_cols:
        low = c.lower()
        if any(h in low for h in _SIZE_HINTS):
            continue
        k = runs[c].nunique(dropna=True)
        if 2 <= k <= 12:
            return c
    return None


class _Report:
    def __init__(self, out_dir: pathlib.Path):
        self.out = out_dir
        self.fig_dir = out_dir / "figures"
        self.md: list[str] = []
        self.html: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.figures: list[str] = []
        self.summary: dict[str, Any] = {}

    def h(self, text: str, level: int = 2) -> None:
        self.md.append(f"\n{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, df: pd.DataFrame) -> None:
        self.md.append(markdown_table(df) + "\n")
        self.html.append(df.to_html(index=False, float_format=lambda v: format(v, ".4g"), border=0,
                                    classes="tbl"))

    def figure(self, fig: Any, name: str, caption: str) -> None:
        paths = plots.save_figure(fig, self.fig_dir / name)
        rel_png = os.path.relpath(paths[0], self.out)
        rel_pdf = os.path.relpath(paths[1], self.out)
        self.figures.append(name)
        self.md.append(f"![{caption}]({rel_png})\n\n*{caption}* ([PDF]({rel_pdf}))\n")
        self.html.append(f'<figure><img src="{html.escape(rel_png)}" alt="{html.escape(caption)}" '
                         f'style="max-width:100%"><figcaption>{html.escape(caption)} '
                         f'(<a href="{html.escape(rel_pdf)}">PDF</a>)</figcaption></figure>')

    def skip(self, section: str, reason: str) -> None:
        self.skipped.append((section, reason))


def _loss_metric(df: pd.DataFrame) -> str | None:
    for m in ("val/loss", "train/loss"):
        if (df["metric"] == m).any():
            return m
    return None


def build_report(roots: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 bootstrap: int = 200, seed: int = 0, arm_axis: str | None = None,
                 subtask_threshold: float = 0.9, title: str = "Scaling analysis") -> pathlib.Path:
    """Returns the path of report.md written in out_dir (with report.html, figures/*.png|pdf, summary.json).

    arm_axis: the sweep axis holding ablation arms (the scaling sections use its first arm only);
    None: detected (`detect_arm_axis`); "": none, all runs enter the scaling sections and the report
    has no ablation section.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    R = _Report(out)
    root_list = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    df = load_runs(root_list)
    runs = run_table(root_list)
    R.h(title, 1)
    R.p(f"Sources: {', '.join(pathlib.Path(r).name or str(r) for r in root_list)}. "
        f"{runs.shape[0]} runs, {len(df)} metric rows.")
    if df.empty:
        R.skip("all sections", "no readable runs")
        return _finish(R)
    status_counts = runs["status"].value_counts().to_dict() if "status" in runs else {}
    R.p("Run status: " + ", ".join(f"{k}: {v}" for k, v in status_counts.items()))
    axis_cols = [c for c in runs.columns if c not in ("run_id", "run_name", "run_dir", "status", "N",
                                                       "N_nonembed", "flops_per_token", "tokens_per_step",
                                                       "num_steps", "error")]
    if arm_axis is None:
        arm = detect_arm_axis(runs, axis_cols)
    elif arm_axis == "":
        arm = None
    elif arm_axis in axis_cols:
        arm = arm_axis
    else:
        raise ValueError(f"arm_axis {arm_axis!r} is not a sweep axis of these runs; axes: {axis_cols}")
    arms = list(pd.unique(runs[arm])) if arm else []
    base_arm = arms[0] if arms else None
    loss_metric = _loss_metric(df)

    def baseline_only(d: pd.DataFrame) -> pd.DataFrame:
        return d[d[arm] == base_arm] if arm and arm in d.columns else d

    # 1. loss vs compute (+ approach 1)
    train = baseline_only(df[(df["metric"] == "train/loss")])
    train = train[np.isfinite(train["C"]) & (train["C"] > 0)]
    R.h("Loss vs compute")
    if len(train) and train["run_id"].nunique() >= 2:
        fr_fit = None
        try:
            a1 = approach1(train["C"], train["value"], train["N"], train["D"], train["run_id"],
                           bootstrap=bootstrap, seed=seed)
            fr = a1.frontier
            R.summary["approach1"] = a1.to_dict()
            t = pd.DataFrame([
                {"quantity": "N_opt ∝ C^a", "exponent": a1.n_fit.a, "ci_low": a1.n_fit.ci_a[0],
                 "ci_high": a1.n_fit.ci_a[1]},
                {"quantity": "D_opt ∝ C^b", "exponent": a1.d_fit.a, "ci_low": a1.d_fit.ci_a[0],
                 "ci_high": a1.d_fit.ci_a[1]}])
            R.p("Approach 1 (lowest loss per FLOP bin over all checkpoints; CIs: bootstrap over runs):")
            R.table(t)
            if len(fr) >= 4:
                fr_fit = fit_law("power-c", fr["C"].to_numpy()[:, None], fr["loss"].to_numpy(),
                                 bootstrap=bootstrap, seed=seed)
        except ValueError as e:
            fr = None
            R.p(f"Approach 1 not fitted: {e}")
        R.figure(plots.plot_loss_vs_compute(train, fr, fr_fit), "loss_vs_compute",
                 "Training loss vs compute, colour = parameters; black: frontier")
    else:
        R.skip("Loss vs compute", "no train/loss rows with FLOPs from at least 2 runs")
        R.p("Skipped: no training curves with FLOPs.")

    # final values per run
    fin = final_values(baseline_only(df), loss_metric) if loss_metric else pd.DataFrame()
    fin = fin[np.isfinite(fin["C"]) & np.isfinite(fin["N"]) & np.isfinite(fin["D"])] if len(fin) else fin

    # 2. IsoFLOP (approach 2)
    R.h("IsoFLOP profiles (approach 2)")
    iso = None
    if len(fin) >= 6:
        try:
            iso = approach2(fin["C"], fin["N"], fin["value"], fin["D"], bootstrap=bootstrap,
                            seed=seed, rel_tol=0.05)
        except ValueError as e:
            R.skip("IsoFLOP", str(e))
            R.p(f"Skipped: {e}")
    else:
        R.skip("IsoFLOP", f"{len(fin)} runs with final loss (need ≥ 6 across ≥ 2 budgets)")
        R.p("Skipped: too few runs.")
    if iso is not None:
        R.summary["approach2"] = iso.to_dict()
        R.table(iso.optima.assign(kept=iso.optima["kept"].astype(str)))
        R.table(pd.DataFrame([
            {"quantity": "N* ∝ C^a", "exponent": iso.n_fit.a, "ci_low": iso.n_fit.ci_a[0], "ci_high": iso.n_fit.ci_a[1]},
            {"quantity": "D* ∝ C^b", "exponent": iso.d_fit.a, "ci_low": iso.d_fit.ci_a[0], "ci_high": iso.d_fit.ci_a[1]}]))
        pts = pd.DataFrame({"C": fin["C"], "N": fin["N"], "loss": fin["value"]})
        R.figure(plots.plot_isoflop(pts, iso), "isoflop", "IsoFLOP curves (Akima) and N*(C)")

    # 3. L(N, D) fit (approach 3) + backtest
    R.h("L(N, D) fit (approach 3)")
    if len(fin) >= 8 and fin["N"].nunique() >= 2 and fin["D"].nunique() >= 2:
        ch = fit_chinchilla(fin["N"], fin["D"], fin["value"], bootstrap=bootstrap, seed=seed)
        R.summary["chinchilla"] = ch.to_dict()
        R.p(f"Huber (δ = {ch.delta:g}) on ln L, {ch.n_starts} L-BFGS starts; objective {ch.objective:.4g}, "
            f"RMS residual of ln L {ch.rms:.3g}.")
        R.table(ch.summary())
        C = np.geomspace(fin["C"].min(), fin["C"].max() * 100, 4)
        R.table(compute_optimal_ci(ch, C))
        R.figure(plots.plot_law_fit(ch), "chinchilla_fit", "L(N, D) fit and residuals")
        try:
            bt = backtest(fin.assign(loss=fin["value"]), law="chinchilla", cut_col="C", bootstrap=0)
            R.p(f"Backtest: fitted on runs with C ≤ {bt.cut:.3g} FLOPs, predicted {len(bt.table)} larger runs: "
                f"MAPE {bt.metrics['mape']:.3%}, max |rel. error| {bt.metrics['max_abs_rel']:.3%}.")
            R.summary["backtest"] = bt.metrics
        except (ValueError, RuntimeError) as e:
            R.p(f"Backtest not run: {e}")
    else:
        R.skip("L(N, D) fit", f"{len(fin)} runs with final loss and distinct N, D (need ≥ 8)")
        R.p("Skipped: too few runs.")

    # 4. emergence
    R.h("Emergence")
    em_metrics = sorted(m for m in df["metric"].unique()
                        if m.endswith("/exact_match") and "/subtask_" not in m)
    curves = []
    em_rows = []
    for m in em_metrics:
        f = final_values(baseline_only(df), m)
        f = f[np.isfinite(f["C"]) & (f["C"] > 0)]
        if len(f) < 6:
            R.skip(f"Emergence {m}", f"{len(f)} runs (need ≥ 6)")
            continue
        # x: final compute, or parameters when the runs share few budgets (an IsoFLOP grid)
        em_x = "C" if len(np.unique(np.round(np.log10(f["C"]), 2))) >= 5 else "N"
        res = fit_emergence(f[em_x], f["value"], bootstrap=bootstrap, seed=seed)
        curves.append((m.split("/")[0], f[em_x].to_numpy(), f["value"].to_numpy(), res))
        em_rows.append({"metric": m, "x": em_x, "verdict": res.verdict, "x0 (log10 x)": res.x0,
                        "ci_low": res.x0_ci[0], "ci_high": res.x0_ci[1],
                        "late decline": res.decline["late_decline"]})
        R.summary.setdefault("emergence", {})[m] = res.to_dict()
    if curves:
        R.p("Increasing sigmoid vs flat/linear: a transition only if the sigmoid's BIC is lower by ≥ 2, "
            "3 points lie on each side of its midpoint and its rise exceeds 3 × the residual SD.")
        R.table(pd.DataFrame(em_rows))
        xl = "training compute C (FLOPs)" if em_x == "C" else "parameters N"
        R.figure(plots.plot_emergence(curves, xl), "emergence",
                 "Exact match of the final checkpoints with sigmoid fits (discrete metrics)")
    else:
        R.skip("Emergence (discrete)", "no '<task>/exact_match' metrics")
        R.p("Skipped: no exact-match metrics.")
    cont_done = False
    for m in em_metrics:
        task = m.split("/")[0]
        lp = final_values(baseline_only(df), f"{task}/answer_logprob")
        em = final_values(baseline_only(df), m)
        if len(lp) < 4:
            continue
        j = lp.merge(em[["run_id", "value"]], on="run_id", suffixes=("_lp", "_em"))
        lengths = final_values(baseline_only(df), f"{task}/answer_tokens")
        if len(lengths):
            ell, how = float(np.median(lengths["value"])), f"measured {task}/answer_tokens"
        else:
            ell, how = _answer_len(runs, j)
        res = discrete_vs_continuous(j["N"], j["value_lp"], j["value_em"], ell, bootstrap=bootstrap, seed=seed)
        R.p(f"{task}: power law on answer cross-entropy; predicted exact match p^ℓ with ℓ = {ell:g} ({how}); "
            f"RMS error vs measured exact match {res.rmse_em:.3f}.")
        R.figure(plots.plot_discrete_continuous(res, task), f"continuous_{task}",
                 f"{task}: continuous (cross-entropy) vs discrete (exact match) metric")
        cont_done = True
    if not cont_done:
        R.skip("Emergence (continuous)", "no '<task>/answer_logprob' metric with ≥ 4 runs")

    # 5. subtasks
    R.h("Per-subtask curves")
    wide = subtask_curves(baseline_only(df))
    if len(wide):
        learned = learned_subtasks(baseline_only(df), threshold=subtask_threshold)
        fin_l = learned.sort_values("step").groupby("run_id").tail(1)
        R.p(f"A subtask counts as learned when its exact match ≥ {subtask_threshold:g}.")
        R.table(fin_l[["run_id", "N", "D", "n_learned", "n_subtasks"]].sort_values("N"))
        R.figure(plots.plot_subtasks(wide, "D", learned, subtask_threshold), "subtasks",
                 "Per-subtask curves and learned subtasks vs N")
    else:
        R.skip("Per-subtask curves", "no '<task>/subtask_<i>/<metric>' metrics")
        R.p("Skipped: no per-subtask metrics.")

    # 6. ablation (none when the caller says there is no arm axis)
    if arm_axis == "":
        return _finish(R)
    R.h("Ablation")
    if arm and len(arms) >= 2 and loss_metric:
        fa = final_values(df, loss_metric)
        fa = fa[np.isfinite(fa["N"]) & np.isfinite(fa["D"])].assign(loss=lambda d: d["value"])
        counts = fa.groupby(arm).size()
        if counts.min() >= 6:
            em_df = None
            if em_metrics:
                e = final_values(df, em_metrics[0])
                if e.groupby(arm).size().min() >= 6:
                    em_df = e
                    em_x_abl = "C" if len(np.unique(np.round(np.log10(e["C"]), 2))) >= 5 else "N"
            tab = ablation_table(fa, arm, baseline=base_arm, bootstrap=bootstrap, seed=seed,
                                 emergence=em_df, emergence_x=em_x_abl if em_df is not None else "C")
            R.p(f"Arms of axis `{arm}`; baseline `{base_arm}`. Differences: paired bootstrap over "
                f"shared configurations where the arms share them.")
            R.table(tab)
            R.summary["ablation"] = json.loads(tab.to_json(orient="records"))
            R.figure(plots.plot_forest(tab[tab["arm"] != base_arm]), "ablation_forest",
                     "Ablation: difference from baseline with 95% CIs")
        else:
            R.skip("Ablation", f"an arm of `{arm}` has only {int(counts.min())} runs (need ≥ 6)")
            R.p("Skipped: too few runs per arm.")
    else:
        R.skip("Ablation", "no ablation axis with ≥ 2 arms")
        R.p("Skipped: no ablation axis.")
    return _finish(R)


def _answer_len(runs: pd.DataFrame, j: pd.DataFrame) -> tuple[float, str]:
    """Returns (answer length ℓ in tokens, how it was obtained)."""
    for _, r in runs.iterrows():
        cfg_path = pathlib.Path(r["run_dir"]) / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        flat = pd.json_normalize(cfg).to_dict(orient="records")[0]
        for k, v in flat.items():
            if re.search(r"answer_(len|length|tokens)$", k) and isinstance(v, (int, float)) and v > 0:
                return float(v), f"config {k}"
    ce = -j["value_lp"].to_numpy(float)
    em = j["value_em"].to_numpy(float)
    ok = (em > 1e-3) & (ce > 0)
    if ok.sum() >= 2:
        return float(max(1.0, round(-np.sum(np.log(em[ok]) * ce[ok]) / np.sum(ce[ok] ** 2)))), "estimated from data"
    return 1.0, "unknown, assumed 1"


def _finish(R: _Report) -> pathlib.Path:
    R.h("Skipped sections")
    if R.skipped:
        R.table(pd.DataFrame(R.skipped, columns=["section", "reason"]))
    else:
        R.p("None: every section had data.")
    R.summary["figures"] = R.figures
    R.summary["skipped"] = [{"section": s, "reason": r} for s, r in R.skipped]
    md_path = R.out / "report.md"
    md_path.write_text("\n".join(R.md), encoding="utf-8")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto}"
             ".tbl{border-collapse:collapse;font-size:12px}.tbl td,.tbl th{padding:2px 6px;"
             "border-bottom:1px solid #ddd}")
    (R.out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>report</title><style>{style}</style>"
        f"</head><body>{''.join(R.html)}</body></html>", encoding="utf-8")
    (R.out / "summary.json").write_text(json.dumps(R.summary, indent=1, default=_json_default), encoding="utf-8")
    return md_path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
