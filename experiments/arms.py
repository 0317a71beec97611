"""Ablation arms shared by `regularization` and `augmentation`: sweep axes and per-arm analysis.

An arm is a label and the config fields it changes from the baseline, e.g.
("dropout", {"model.resid_dropout": 0.1}). All arms become one zipped sweep axis group (each field
takes the arm's value or the baseline's), crossed with the size / data axes. The analysis labels
every run with its arm by matching those fields, fits the same law to each arm's final validation
loss (`analysis.ablation.ablation_table`: parameters with bootstrap CIs, differences from the
baseline with paired bootstrap CIs where arms share the design), and fits a sigmoid to the mixed-in
task's exact match against compute over all checkpoints of each arm (emergence point x0 = log10
FLOPs, with CI, and its difference from the baseline).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Sequence

import numpy as np
import pandas as pd

from experiments import common

Arm = tuple[str, dict[str, Any]]


def arm_axis(arms: Sequence[Arm], base: Any) -> dict[str, list[Any]]:
    """Returns the zipped axis group {field: [value per arm]} (baseline values where an arm is silent)."""
    from scaling.sweeps.spec import _get_field

    fields = sorted({f for _, changes in arms for f in changes})
    return {f: [changes.get(f, _get_field(base, f)) for _, changes in arms] for f in fields}


def label_runs(df: pd.DataFrame, arms: Sequence[Arm], base: Any) -> pd.Series:
    """Returns the arm label of every row of a load_runs DataFrame (matched on the arm fields)."""
    axis = arm_axis(arms, base)
    labels = pd.Series([None] * len(df), index=df.index, dtype=object)
    for i, (name, _) in enumerate(arms):
        mask = pd.Series(True, index=df.index)
        for f, values in axis.items():
            if f not in df.columns:
                continue
            col = df[f]
            v = values[i]
            if isinstance(v, bool) or isinstance(v, str):
                mask &= col.astype(str).str.lower() == str(v).lower()
            else:
                mask &= np.isclose(pd.to_numeric(col, errors="coerce").astype(float), float(v))
        labels[mask & labels.isna()] = name
    return labels


def analyze(df: pd.DataFrame, arms: Sequence[Arm], base: Any, out_dir: pathlib.Path, *,
            prefix: str, law: str, x_col: str, x_label: str, task: str, bootstrap: int,
            notes: list[str], title: str) -> dict[str, Any]:
    """Returns per-arm fits, differences from baseline and emergence points; writes 3 figures.

    Figures: <prefix>_loss (final loss vs x per arm with the fitted law), <prefix>_forest
    (difference from baseline per parameter with 95% CIs), <prefix>_emergence (task exact match vs
    compute per arm with sigmoid fits).
    """
    import matplotlib.pyplot as plt

    from analysis.ablation import ablation_table
    from analysis.catalog import get_law
    from analysis.plots import plot_forest

    names = [a for a, _ in arms]
    out: dict[str, Any] = {"arms": names, "law": law, "x": x_col}
    figures: dict[str, str] = {}
    fin = common.final(df, "val/loss") if len(df) else pd.DataFrame()
    if len(fin):
        fin = fin.assign(arm=label_runs(fin, arms, base).to_numpy(), loss=fin["value"])
        fin = fin[fin["arm"].notna()]
    out["runs"] = sorted(
        ({"run": r.run_name, "arm": r.arm, x_col: float(getattr(r, x_col)),
          "val_loss": float(r.value)} for r in fin.itertuples()),
        key=lambda q: (names.index(q["arm"]), q[x_col])) if len(fin) else []
    em = common.curves(df, f"{task}/exact_match", "eval") if len(df) else pd.DataFrame()
    if len(em):
        em = em.assign(arm=label_runs(em, arms, base).to_numpy())
        em = em[em["arm"].notna() & (em["C"] > 0)]

    tab = None
    counts = fin.groupby("arm").size() if len(fin) else pd.Series(dtype=int)
    if len(fin) and "baseline" in counts and counts.min() >= 3 and fin[x_col].nunique() >= 3:
        em_arg = em[["arm", "C", "value"]] if len(em) and em.groupby("arm").size().min() >= 6 else None
        tab = common.fit_or_none(
            lambda: ablation_table(fin[["arm", x_col, "loss"]], "arm", baseline="baseline", law=law,
                                   x_cols=[x_col], y_col="loss", bootstrap=bootstrap,
                                   emergence=em_arg, emergence_x="C"),
            f"{title} ablation table", notes)
    else:
        notes.append(f"{title}: per-arm fits need >= 3 runs per arm at >= 3 values of {x_col}")
    if tab is not None:
        out["table"] = tab.to_dict(orient="records")

    # 1. final loss vs x per arm, with each arm's fitted law
    def _draw1() -> Any:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for i, name in enumerate(names):
            g = fin[fin["arm"] == name].sort_values(x_col) if len(fin) else fin
            if not len(g):
                continue
            ax.plot(g[x_col], g["loss"], "o", color=f"C{i}", ms=4, label=name)
            if tab is not None:
                p = {r["param"]: r["estimate"] for r in out["table"] if r["arm"] == name}
                xg = np.geomspace(g[x_col].min(), g[x_col].max(), 100)
                lw = get_law(law)
                if all(k in p for k in lw.param_names):
                    ax.plot(xg, lw.predict(p, xg[:, None]), "-", color=f"C{i}", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("final validation loss (nats/byte)")
        ax.set_title(f"{title}: loss per arm (lines: fitted {law})", fontsize=9)
        common.legend(ax)
        return fig

    figures[f"{prefix}_loss"] = common.figure(out_dir, f"{prefix}_loss", _draw1, notes)

    # 2. forest plot of the differences from baseline
    def _draw2() -> Any:
        if tab is not None and (tab["arm"] != "baseline").any():
            return plot_forest(tab[tab["arm"] != "baseline"])
        fig, ax = plt.subplots(figsize=(4.0, 2.0))
        ax.text(0.5, 0.5, "not fitted (too few runs per arm)", ha="center", va="center")
        ax.set_axis_off()
        return fig

    figures[f"{prefix}_forest"] = common.figure(out_dir, f"{prefix}_forest", _draw2, notes)

    # 3. emergence per arm
    def _draw3() -> Any:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for i, name in enumerate(names):
            g = em[em["arm"] == name] if len(em) else em
            if not len(g):
                continue
            ax.plot(g["C"], g["value"], ".", color=f"C{i}", ms=3, alpha=0.6, label=name)
            if tab is not None:
                r = [q for q in out["table"] if q["arm"] == name and q["param"] == "x0"]
                if r:
                    if (r[0].get("transition", True) is not False and math.isfinite(r[0]["estimate"])
                            and g["C"].min() <= 10 ** r[0]["estimate"] <= g["C"].max()):
                        ax.axvline(10 ** r[0]["estimate"], color=f"C{i}", ls=":", lw=1)
        ax.axhline(0.1, color="0.5", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel(f"{task} exact match")
        ax.set_title(f"{title}: task exact match per arm (dotted: sigmoid x0)", fontsize=9)
        common.legend(ax)
        return fig

    figures[f"{prefix}_emergence"] = common.figure(out_dir, f"{prefix}_emergence", _draw3, notes)
    out["figures"] = figures
    return out


def markdown(result: dict[str, Any], x_col: str) -> list[str]:
    """Returns Markdown lines: the per-arm parameter table with CIs and differences from baseline."""
    lines = []
    if result.get("runs"):
        lines += [common.table([{"run": r["run"], "arm": r["arm"], x_col: r[x_col],
                                 "val loss": r["val_loss"]} for r in result["runs"]]), ""]
    if result.get("table"):
        rows = [{"arm": r["arm"], "param": r["param"],
                 "estimate [95% CI]": (common.fmt_ci(r["estimate"], [r["ci_low"], r["ci_high"]])
                                       if r.get("transition", True) is not False
                                       else "no transition (flat/linear by BIC)"),
                 "diff from baseline [95% CI]": common.fmt_ci(r["diff"], [r["diff_low"], r["diff_high"]]),
                 "CI excludes 0": (None if not all(map(math.isfinite, (r["diff_low"], r["diff_high"])))
                                   or r["arm"] == "baseline"
                                   else bool(r["diff_low"] > 0 or r["diff_high"] < 0)),
                 "paired": r["paired"]}
                for r in result["table"]]
        lines += [f"Law `{result['law']}` per arm; x0 = sigmoid midpoint of exact match vs compute "
                  "(log10 FLOPs), compared only between arms where the sigmoid beats flat and "
                  "linear models by BIC.", "", common.table(rows), ""]
    return lines
