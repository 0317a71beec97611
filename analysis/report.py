"""Build a Markdown + HTML report (tables, PNG/PDF figures) from one or more sweep roots / run dirs.

One convention throughout (`analysis.runs.Convention`): N is the non-embedding parameter count and
C = D × the run's own measured FLOPs per token (run.json), unless the caller asks for total N or
for C = 6ND; the report states which at the top and in every table and caption. Only completed runs
enter the fits unless asked otherwise; the excluded runs are listed with their state and error.
Sections appear only when their data exists; the report lists every skipped section and why (only
`InsufficientData` makes a section skip; any other error propagates). Final values of a run are the
ones at its last logged step. Loss is "val/loss" from eval.jsonl when present, else "train/loss";
approach 1 uses val/loss at checkpoints only. `loss_metric="val/bits_per_byte"` fits bits per byte
instead (runs with different tokenizers), at the last step and the checkpoints alike.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
from typing import Sequence

import numpy as np
import pandas as pd

from analysis import plots
from analysis.ablation import ablation_table
from analysis.backtest import backtest, rollout
from analysis.emergence import discrete_vs_continuous, fit_emergence, learned_subtasks, subtask_curves
from analysis.errors import InsufficientData
from analysis.fit import compute_optimal_ci, fit_chinchilla, fit_flops_per_token, fit_law
from analysis.isoflop import approach1, approach2, budget_groups
from analysis.report_doc import ReportDoc, markdown_table
from analysis.runs import (BUDGET_AXIS, LOSS_METRICS, Convention, apply_convention, final_values, load_runs,
                           run_table, select_runs)

log = logging.getLogger(__name__)

__all__ = ["build_report", "detect_arm_axis", "markdown_table", "BUDGET_TOLERANCE"]

# Metrics `scaling evaluate --harness` writes (harness/<task>/<metric>); see scaling/export/harness.py.
HARNESS_PREFIX = "harness/"
# Relative tolerance on measured C that groups runs into IsoFLOP budgets when they lack the sweep's
# budget axis (the fallback; the report says when it was used).
BUDGET_TOLERANCE = 0.05
_RUN_COLUMNS = ("run_id", "run_name", "run_dir", "status", "state", "step", "N", "N_nonembed",
                "flops_per_token", "tokens_per_step", "num_steps", "error")

# Substrings of (lower-cased) axis names that mark size, data, compute or seed axes, never ablation
# arms. The first row are the axes `scaling.sweeps.spec` generates itself (sizes, the data budget
# axis tokens | tokens_per_param | flops, seeds).
_SIZE_HINTS = ("n_target", "d_target", "c_budget", "tokens_per_param", "seed",
               "n_params", "width", "depth", "layers", "d_model", "heads", "head_dim", "d_ff", "vocab",
               "seq_len", "tokens", "train_fraction", "num_examples", "epochs", "steps", "flops",
               "budget", "batch")


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


def _loss_metric(df: pd.DataFrame, wanted: str = "val/loss") -> str | None:
    if wanted != "val/loss":  # an explicit choice has no training-loss fallback
        return wanted if (df["metric"] == wanted).any() else None
    for m in ("val/loss", "train/loss"):
        if (df["metric"] == m).any():
            return m
    return None


def _runs_section(R: ReportDoc, df_all: pd.DataFrame, runs_all: pd.DataFrame, conv: Convention,
                  include_incomplete: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (rows, run table) of the runs that enter the fits, after writing the Runs section."""
    df, runs, excluded = select_runs(df_all, runs_all, include_incomplete=include_incomplete)
    df = apply_convention(df, conv)
    no_n = sorted(set(df["run_id"]) - set(df.loc[np.isfinite(df["N"].astype(float)), "run_id"]))
    if no_n:
        lost = runs[runs["run_id"].isin(no_n)]
        excluded = pd.concat([excluded, pd.DataFrame({
            "run": lost["run_name"], "state": lost["state"], "step": lost["step"],
            "reason": f"no {conv.n_text} count in run.json (ask for params='total')"})], ignore_index=True)
        df, runs = df[~df["run_id"].isin(no_n)], runs[~runs["run_id"].isin(no_n)]
    states = runs_all["state"].value_counts().to_dict()
    R.h("Runs")
    R.p(f"Convention: {conv.describe()}. Every fit, table and figure below uses it.")
    R.p("Run states: " + ", ".join(f"{k}: {v}" for k, v in states.items())
        + f". {runs.shape[0]} runs enter the fits.")
    if len(excluded):
        R.p(f"Excluded from every fit ({len(excluded)} runs; include them with "
            "include_incomplete / --include-incomplete):")
        R.table(excluded)
    elif include_incomplete and (runs_all["state"] != "completed").any():
        R.p("Runs that did not complete are included, as asked, with their last logged values.")
    R.summary["convention"] = conv.to_dict()
    R.summary["run_states"] = {str(k): int(v) for k, v in states.items()}
    R.summary["runs_excluded"] = json.loads(excluded.to_json(orient="records"))
    return df, runs


def build_report(roots: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 bootstrap: int = 200, seed: int = 0, arm_axis: str | None = None,
                 subtask_threshold: float = 0.9, title: str = "Scaling analysis",
                 params: str = "nonembed", compute: str = "measured", include_incomplete: bool = False,
                 budget_axis: str = BUDGET_AXIS, loss_metric: str = "val/loss") -> pathlib.Path:
    """Returns the path of report.md written in out_dir (with report.html, figures/*.png|pdf, summary.json).

    arm_axis: the sweep axis holding ablation arms (the scaling sections use its first arm only);
    None: detected (`detect_arm_axis`); "": none, all runs enter the scaling sections and the report
    has no ablation section. params: "nonembed" | "total" (which N); compute: "measured" (C = D ×
    the run's FLOPs per token) | "6ND"; include_incomplete: fit failed, diverged, interrupted and
    running runs too; budget_axis: the run axis holding each run's IsoFLOP budget (FLOPs);
    loss_metric: the evaluation metric every loss fit uses, one of `LOSS_METRICS`.
    """
    if loss_metric not in LOSS_METRICS:
        raise ValueError(f"loss_metric={loss_metric!r}: must be one of {list(LOSS_METRICS)}")
    conv = Convention(params, compute)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    R = ReportDoc(out)
    root_list = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    df_all = load_runs(root_list)
    runs_all = run_table(root_list)
    R.h(title, 1)
    R.p(f"Sources: {', '.join(pathlib.Path(r).name or str(r) for r in root_list)}. "
        f"{runs_all.shape[0]} runs, {len(df_all)} metric rows.")
    if df_all.empty:
        R.skip("all sections", "no readable runs")
        return R.finish()
    df, runs = _runs_section(R, df_all, runs_all, conv, include_incomplete)
    if df.empty:
        R.skip("all sections", "no run enters the fits (see Runs)")
        return R.finish()
    axis_cols = [c for c in runs.columns if c not in _RUN_COLUMNS]
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
    eval_loss = loss_metric
    loss_metric = _loss_metric(df, eval_loss)
    n_label = f"{conv.n_text} N"
    c_label = "compute C = 6ND (FLOPs)" if conv.compute == "6ND" else "compute C = D × measured FLOPs/token"

    def baseline_only(d: pd.DataFrame) -> pd.DataFrame:
        return d[d[arm] == base_arm] if arm and arm in d.columns else d

    # 1. loss vs compute; approach 1 on evaluation loss at checkpoints
    def finite_c(d: pd.DataFrame) -> pd.DataFrame:
        return d[np.isfinite(d["C"]) & (d["C"] > 0) & np.isfinite(d["N"])]

    train = finite_c(baseline_only(df[df["metric"] == "train/loss"]))
    ev = finite_c(baseline_only(df[(df["metric"] == eval_loss) & (df["source"] == "eval")]))
    curves = train if train["run_id"].nunique() >= 2 else ev
    R.h("Loss vs compute")
    if curves["run_id"].nunique() >= 2:
        fr, fr_fit = None, None
        if ev["run_id"].nunique() >= 2:
            try:
                a1 = approach1(ev["C"], ev["value"], ev["N"], ev["D"], ev["run_id"], bootstrap=bootstrap, seed=seed)
            except InsufficientData as e:
                R.skip("Approach 1", str(e))
                R.p(f"Approach 1 not fitted: {e}")
            else:
                fr = a1.frontier
                R.summary["approach1"] = dict(a1.to_dict(), loss=f"{eval_loss} at checkpoints")
                R.p(f"Approach 1 (lowest validation loss per FLOP bin over all evaluated checkpoints; "
                    f"{conv.describe()}; CIs: bootstrap over runs):")
                R.table(pd.DataFrame([
                    {"quantity": "N_opt ∝ C^a", "exponent": a1.n_fit.a, "ci_low": a1.n_fit.ci_a[0],
                     "ci_high": a1.n_fit.ci_a[1]},
                    {"quantity": "D_opt ∝ C^b", "exponent": a1.d_fit.a, "ci_low": a1.d_fit.ci_a[0],
                     "ci_high": a1.d_fit.ci_a[1]}]))
                if len(fr) >= 4:
                    fr_fit = fit_law("power-c", fr["C"].to_numpy()[:, None], fr["loss"].to_numpy(),
                                     bootstrap=bootstrap, seed=seed)
        else:
            R.skip("Approach 1", "no val/loss at checkpoints of ≥ 2 runs (approach 1 uses evaluation "
                                 "loss, not per-batch training loss)")
        which = "Training" if curves is train else "Validation"
        R.figure(plots.plot_loss_vs_compute(curves, fr, fr_fit, n_label=n_label, c_label=c_label),
                 "loss_vs_compute", f"{which} loss vs compute, colour = N; black: approach-1 frontier of "
                                    f"validation loss. {conv.describe()}")
    else:
        R.skip("Loss vs compute", "no loss rows with FLOPs from at least 2 runs")
        R.p("Skipped: no loss curves with FLOPs.")

    # final values per run (the numbers every later fit uses)
    fin = final_values(baseline_only(df), loss_metric) if loss_metric else pd.DataFrame()
    fin = fin[np.isfinite(fin["C"]) & np.isfinite(fin["N"]) & np.isfinite(fin["D"])] if len(fin) else fin
    budget = fin[budget_axis].astype(float) if len(fin) and budget_axis in fin.columns else None
    if len(fin):
        state = dict(zip(runs["run_id"], runs["state"]))
        R.summary["runs"] = [{"run": r.run_name, "run_id": r.run_id, "state": state.get(r.run_id),
                              "N": r.N, "N_total": r.N_total, "N_nonembed": r.N_nonembed, "D": r.D,
                              "C": r.C, "budget": np.nan if budget is None else budget[i],
                              "loss": r.value, "loss_metric": loss_metric, "step": r.step}
                             for i, r in zip(fin.index, fin.itertuples())]
        R.h("Final values")
        R.p(f"Each run's last logged {loss_metric} ({LOSS_METRICS.get(loss_metric, 'nats/token')}), "
            "the numbers every fit below uses. "
            f"{conv.describe()}.")
        R.table(pd.DataFrame(R.summary["runs"])[["run", "state", "N", "D", "C", "budget", "loss"]])

    # 2. IsoFLOP (approach 2)
    R.h("IsoFLOP profiles (approach 2)")
    iso = None
    if len(fin) >= 6:
        try:
            iso = approach2(fin["C"], fin["N"], fin["value"], fin["D"], bootstrap=bootstrap, seed=seed,
                            rel_tol=BUDGET_TOLERANCE, budget=budget)
        except InsufficientData as e:
            R.skip("IsoFLOP", str(e))
            R.p(f"Skipped: {e}")
    else:
        R.skip("IsoFLOP", f"{len(fin)} runs with final loss (need ≥ 6 across ≥ 2 budgets)")
        R.p("Skipped: too few runs.")
    if iso is not None:
        R.summary["approach2"] = iso.to_dict()
        groups = budget_groups(fin["C"], budget, BUDGET_TOLERANCE)
        by_tol = sum(len(g) for g, _, how in groups if how == "tolerance")
        if by_tol:
            R.p(f"{by_tol} runs have no `{budget_axis}` axis: their budgets are grouped by measured C "
                f"within {BUDGET_TOLERANCE:.0%} (a fallback; the budget axis is exact).")
        else:
            R.p(f"Budgets: the sweep's `{budget_axis}` axis. {conv.describe()}.")
        R.table(iso.optima.assign(kept=iso.optima["kept"].astype(str)))
        rows = [{"quantity": "N* ∝ C^a", "exponent": iso.n_fit.a, "ci_low": iso.n_fit.ci_a[0],
                 "ci_high": iso.n_fit.ci_a[1]}]
        rows.append({"quantity": "D* ∝ C^b", "exponent": iso.d_fit.a, "ci_low": iso.d_fit.ci_a[0],
                     "ci_high": iso.d_fit.ci_a[1]})
        R.table(pd.DataFrame(rows))
        label = np.empty(len(fin))
        for g, c_b, _ in groups:
            label[g] = c_b
        pts = pd.DataFrame({"C": fin["C"].to_numpy(), "N": fin["N"].to_numpy(), "loss": fin["value"].to_numpy(),
                            "budget": label})
        R.figure(plots.plot_isoflop(pts, iso, n_label=n_label, c_label=c_label), "isoflop",
                 f"IsoFLOP curves (Akima) and N*(C). {conv.describe()}")

    # 3. L(N, D) fit (approach 3), compute-optimal allocation, backtest
    _chinchilla_section(R, fin, budget, conv, bootstrap, seed)

    # 4. emergence
    R.h("Emergence")
    em_metrics = sorted(m for m in df["metric"].unique()
                        if m.endswith("/exact_match") and "/subtask_" not in m
                        and not m.startswith(HARNESS_PREFIX))
    harness = _harness_table(baseline_only(df))
    if len(harness):
        R.p("lm-evaluation-harness scores at each run's last scored checkpoint "
            "(`scaling evaluate --harness`); each enters the emergence fits below like exact match:")
        R.table(harness)
        em_metrics += sorted(harness["metric"].unique())
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
        try:
            res = fit_emergence(f[em_x], f["value"], bootstrap=bootstrap, seed=seed)
        except InsufficientData as e:  # e.g. seeds of a few (N, C) points: too few distinct x
            R.skip(f"Emergence {m}", str(e))
            continue
        label = m.rsplit("/", 1)[0] if m.startswith(HARNESS_PREFIX) else m.split("/")[0]
        curves.append((label, f[em_x].to_numpy(), f["value"].to_numpy(), res))
        em_rows.append({"metric": m, "x": em_x, "verdict": res.verdict, "x0 (log10 x)": res.x0,
                        "ci_low": res.x0_ci[0], "ci_high": res.x0_ci[1],
                        "late decline": res.decline["late_decline"]})
        R.summary.setdefault("emergence", {})[m] = res.to_dict()
    if curves:
        R.p("Increasing sigmoid vs flat/linear: a transition only if the sigmoid's BIC is lower by ≥ 2, "
            "3 points lie on each side of its midpoint and its rise exceeds 3 × the residual SD.")
        R.table(pd.DataFrame(em_rows))
        xl = c_label if em_x == "C" else n_label
        R.figure(plots.plot_emergence(curves, xl), "emergence",
                 f"Exact match of the final checkpoints with sigmoid fits (discrete metrics). {conv.describe()}")
    else:
        R.skip("Emergence (discrete)", "no '<task>/exact_match' metrics")
        R.p("Skipped: no exact-match metrics.")
    cont_done = False
    for m in em_metrics:
        if m.startswith(HARNESS_PREFIX):
            continue
        task = m.split("/")[0]
        lp = final_values(baseline_only(df), f"{task}/answer_logprob")
        em = final_values(baseline_only(df), m)
        j = lp.merge(em[["run_id", "value"]], on="run_id", suffixes=("_lp", "_em"))
        if j["N"].nunique() < 4:  # the power law in N has 3 parameters: it needs 4 distinct sizes
            continue
        lengths = final_values(baseline_only(df), f"{task}/answer_tokens")
        if len(lengths):
            ell, how = float(np.median(lengths["value"])), f"measured {task}/answer_tokens"
        else:
            ell, how = _answer_len(runs, j)
        try:
            res = discrete_vs_continuous(j["N"], j["value_lp"], j["value_em"], ell, bootstrap=bootstrap,
                                         seed=seed)
        except InsufficientData as e:  # e.g. non-finite log-probs leave too few sizes for the power law
            R.skip(f"Emergence (continuous): {task}", str(e))
            R.p(f"{task}: continuous metric not fitted: {e}")
            cont_done = True  # reported (as skipped) above
            continue
        R.p(f"{task}: power law on answer cross-entropy; predicted exact match p^ℓ with ℓ = {ell:g} ({how}); "
            f"RMS error vs measured exact match {res.rmse_em:.3f}.")
        R.figure(plots.plot_discrete_continuous(res, task), f"continuous_{task}",
                 f"{task}: continuous (cross-entropy) vs discrete (exact match) metric vs N. {conv.describe()}")
        cont_done = True
    if not cont_done:
        R.skip("Emergence (continuous)", "no '<task>/answer_logprob' metric with ≥ 4 distinct N")

    # 5. subtasks
    R.h("Per-subtask curves")
    wide = subtask_curves(baseline_only(df))
    if len(wide):
        learned = learned_subtasks(baseline_only(df), threshold=subtask_threshold)
        fin_l = learned.sort_values("step").groupby("run_id").tail(1)
        R.p(f"A subtask counts as learned when its exact match ≥ {subtask_threshold:g}.")
        R.table(fin_l[["run_id", "N", "D", "n_learned", "n_subtasks"]].sort_values("N"))
        R.figure(plots.plot_subtasks(wide, "D", learned, subtask_threshold), "subtasks",
                 f"Per-subtask curves and learned subtasks vs N. {conv.describe()}")
    else:
        R.skip("Per-subtask curves", "no '<task>/subtask_<i>/<metric>' metrics")
        R.p("Skipped: no per-subtask metrics.")

    # 6. ablation (none when the caller says there is no arm axis)
    if arm_axis == "":
        return R.finish()
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
                f"shared configurations where the arms share them. {conv.describe()}.")
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
    return R.finish()


def _harness_table(df: pd.DataFrame) -> pd.DataFrame:
    """Returns one row per (run, harness metric) at its last scored step (stderr as a column)."""
    rows = df[df["metric"].str.startswith(HARNESS_PREFIX)]
    if rows.empty:
        return pd.DataFrame()
    out = []
    for m in sorted(x for x in rows["metric"].unique() if not x.endswith("_stderr")):
        fin = final_values(rows, m)
        err = final_values(rows, m + "_stderr").set_index("run_id")["value"]
        for r in fin.itertuples():
            out.append({"metric": m, "run": r.run_name, "N": r.N, "C": r.C, "step": int(r.step),
                        "value": r.value, "stderr": err.get(r.run_id, np.nan)})
    return pd.DataFrame(out)


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


def _chinchilla_section(R: ReportDoc, fin: pd.DataFrame, budget: pd.Series | None, conv: Convention,
                        bootstrap: int, seed: int) -> None:
    """Writes the L(N, D) fit, the compute-optimal allocation and the backtest (returns None)."""
    R.h("L(N, D) fit (approach 3)")
    points = len(fin[["N", "D"]].drop_duplicates())  # seeds of one (N, D) are one point
    if not (len(fin) >= 8 and points >= 6 and fin["N"].nunique() >= 2 and fin["D"].nunique() >= 2):
        R.skip("L(N, D) fit", f"{len(fin)} runs with final loss at {points} distinct (N, D) points "
               "(need ≥ 8 runs at ≥ 6 points)")
        R.p("Skipped: too few runs.")
        return
    ch = fit_chinchilla(fin["N"], fin["D"], fin["value"], bootstrap=bootstrap, seed=seed)
    R.summary["chinchilla"] = ch.to_dict()
    R.p(f"Huber (δ = {ch.delta:g}) on ln L, {ch.n_starts} L-BFGS starts; objective {ch.objective:.4g}, "
        f"RMS residual of ln L {ch.rms:.3g}. {conv.describe()}.")
    R.table(ch.summary())
    if conv.compute == "6ND":
        fpt: tuple[float, float] | str = "6ND"
        R.summary["flops_per_token_fit"] = {"coef": 6.0, "exponent": 1.0, "source": "6ND"}
        how = "C = 6·N·D (asked for)"
    else:
        fpt = fit_flops_per_token(fin["N"], fin["C"], fin["D"])
        R.summary["flops_per_token_fit"] = {"coef": fpt[0], "exponent": fpt[1], "source": "measured"}
        how = (f"C = D × FLOPs per token, FLOPs per token = {fpt[0]:.4g}·N^{fpt[1]:.4f} fitted to the "
               f"runs' own accounting")
    axis_budgets = sorted({float(b) for b in budget if np.isfinite(b)}) if budget is not None else []
    C = np.asarray(axis_budgets) if axis_budgets else np.geomspace(fin["C"].min(), fin["C"].max() * 100, 4)
    co = compute_optimal_ci(ch, C, flops_per_token=fpt)
    R.p(f"Compute-optimal allocation at {'the sweep budgets' if axis_budgets else '4 budgets'} "
        f"({how}; N = {conv.n_text}; 95% bootstrap CIs):")
    R.table(co)
    R.summary["compute_optimal"] = json.loads(co.to_json(orient="records"))
    curve = compute_optimal_ci(ch, np.geomspace(fin["C"].min() / 3, fin["C"].max() * 30, 30), flops_per_token=fpt)
    R.summary["compute_optimal_curve"] = json.loads(curve.to_json(orient="records"))
    R.figure(plots.plot_law_fit(ch), "chinchilla_fit", f"L(N, D) fit and residuals. {conv.describe()}")
    cut = float(np.quantile(fin["C"], 0.75))
    n_train, n_test = int((fin["C"] <= cut).sum()), int((fin["C"] > cut).sum())
    if n_test == 0 or n_train < 6:
        R.skip("Backtest", f"{n_train} runs at C ≤ {cut:.3g} (the 75th percentile) and {n_test} above "
                           "(need ≥ 6 to fit and ≥ 1 to predict)")
        return
    runs = fin.assign(loss=fin["value"])
    bt = backtest(runs, law="chinchilla", cut_col="C", cut=cut, bootstrap=bootstrap, seed=seed)
    R.p(f"Backtest: fitted on runs with C ≤ {bt.cut:.3g} FLOPs, predicted {len(bt.table)} larger runs: "
        f"MAPE {bt.metrics['mape']:.3%}, max |rel. error| {bt.metrics['max_abs_rel']:.3%}"
        + _coverage_text(bt.metrics) + ".")
    R.summary["backtest"] = bt.metrics
    n_small = int((fin["N"] < fin["N"].max()).sum())
    if n_small < 6:
        R.skip("Rollout", f"{n_small} runs below the largest N (need ≥ 6 to fit)")
        return
    ro = rollout(runs, law="chinchilla", by="N", bootstrap=bootstrap, seed=seed)
    R.p(f"Rollout: fitted on the {int(ro.metrics['n_train'])} runs below the largest N, predicted the "
        f"{int(ro.metrics['n_test'])} runs at N = {fin['N'].max():.3g}: MAPE {ro.metrics['mape']:.3%}"
        + _coverage_text(ro.metrics) + ".")
    if "low" in ro.table:
        R.table(ro.table)
    R.summary["rollout"] = ro.metrics


def _coverage_text(metrics: dict[str, float]) -> str:
    """Returns ', k of n inside their L% prediction intervals' when the backtest has intervals."""
    if "coverage" not in metrics:
        return " (no prediction intervals: fewer than 10 bootstrap refits)"
    n = int(metrics["n_test"])
    return (f", {round(metrics['coverage'] * n)} of {n} inside their {metrics['level']:.0%} prediction "
            f"intervals (bootstrap parameter draws plus residual noise)")
