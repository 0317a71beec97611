"""The compression study's analysis: ΔL tables and fit, loss vs sparsity, distillation gains, figures.

Reads the study's run directories (ROOT/family, ROOT/compressed, ROOT/distill, ROOT/alone) through
`experiments.common` and `analysis.compression`; the study itself (configs, the compression stage)
is `experiments/compression.py`, which calls `report`.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np
import pandas as pd

from experiments import common

METRIC = "val/loss"
COMPRESSED = "compressed"  # ROOT/compressed/<source run>-<scheme>/

def final_losses(df: pd.DataFrame) -> pd.DataFrame:
    """Returns one row per run: run (name), dir, N (non-embedding), D (tokens), seed, loss (nats/token)."""
    cols = ["run", "dir", "N", "D", "seed", "loss"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    last = common.final(df[df["source"] == "eval"], METRIC)
    return pd.DataFrame({"run": last["run_name"], "dir": last["run_dir"],
                         "N": last["N_nonembed"].astype(float),
                         "D": last["D"].astype(float),
                         "seed": last["seed"].astype(int) if "seed" in last else 0,
                         "loss": last["value"].astype(float)})


def compressed_table(family: pd.DataFrame, compressed: pd.DataFrame) -> pd.DataFrame:
    """Returns one row per compressed checkpoint: run, source, N, D, quant_bits, sparsity,
    prune_pattern, loss, loss_float and delta_loss (nats/token); raises InsufficientData if none."""
    from analysis.compression import compression_table
    from analysis.errors import InsufficientData

    if compressed.empty or family.empty:
        raise InsufficientData("no completed family run or compressed checkpoint")
    t = compression_table(pd.concat([family, compressed], ignore_index=True, sort=False), METRIC)
    names = compressed.drop_duplicates("run_id").set_index("run_id")["run_name"]
    src = family.drop_duplicates("run_id").set_index("run_id")["run_name"]
    t["run"] = t["run_id"].map(names)
    t["source"] = t["source_run"].map(src)
    for c in ("quant_bits", "sparsity", "prune_pattern"):
        if c not in t:
            t[c] = None
    return t


def quant_fit(t: pd.DataFrame, bootstrap: int, notes: list[str]) -> Any:
    """Returns the QuantDegradation fit of the quantized rows, or None (the reason noted)."""
    from analysis.compression import fit_quant_degradation

    q = t[t["quant_bits"].notna()]
    groups = q["source_run"].to_numpy() if q["source_run"].nunique() >= 2 else None
    return common.fit_or_none(
        lambda: fit_quant_degradation(q["N"], q["D"], q["quant_bits"].astype(float), q["delta_loss"],
                                      bootstrap=bootstrap, groups=groups),
        "ΔL(N, D, bits) fit", notes)


def distill_table(distilled: pd.DataFrame, alone: pd.DataFrame, bootstrap: int,
                  notes: list[str]) -> list[dict[str, Any]]:
    """Returns per student N: seeds, mean alone and distilled loss, gain = alone − distilled
    (nats/token) with its paired bootstrap CI over seeds (NaN with fewer than 2 seeds, noted)."""
    from analysis.compression import paired_difference

    rows = []
    for n, g in distilled.groupby("N"):
        paired = g.merge(alone[alone["N"] == n], on="seed", suffixes=("", "_alone"))
        if paired.empty:
            notes.append(f"distillation N={n:.3g}: no student trained alone with a matching seed")
            continue
        ci = common.fit_or_none(lambda: paired_difference(
            paired["loss"], paired["loss_alone"], bootstrap=max(bootstrap, 200)),
            f"distillation gain CI at N={n:.3g}", notes)
        gain = paired["loss_alone"] - paired["loss"]
        rows.append({"N": float(n), "seeds": sorted(int(x) for x in paired["seed"]),
                     "alone": float(paired["loss_alone"].mean()),
                     "distilled": float(paired["loss"].mean()), "gain": float(gain.mean()),
                     "gain_ci": [ci["ci_low"], ci["ci_high"]] if ci else [math.nan, math.nan],
                     # directories: a student and its control share a run name
                     "distilled_dirs": sorted(paired["dir"]), "alone_dirs": sorted(paired["dir_alone"]),
                     "gain_every_seed": bool((gain > 0).all())})
    return rows


def _plot_bits(t: pd.DataFrame, fit: Any) -> Any:
    import matplotlib.pyplot as plt

    from analysis.errors import InsufficientData

    q = t[t["quant_bits"].notna()]
    if q.empty:
        raise InsufficientData("no quantized checkpoint was evaluated")
    sizes = sorted(q["N"].unique())
    fig, axes = plt.subplots(2, len(sizes), figsize=(3.2 * len(sizes), 5.0), squeeze=False,
                             sharex=True)
    for j, n in enumerate(sizes):
        top, bottom = axes[0][j], axes[1][j]
        for i, (d, g) in enumerate(q[q["N"] == n].groupby("D")):
            g = g.sort_values("quant_bits")
            top.plot(g["quant_bits"], g["loss"], "o-", color=f"C{i}", ms=3, label=f"D={d:.3g}")
            top.axhline(float(g["loss_float"].iloc[0]), color=f"C{i}", ls=":", lw=1)
            pos = g[g["delta_loss"] > 0]
            bottom.plot(pos["quant_bits"], pos["delta_loss"], "o", color=f"C{i}", ms=3)
            if fit is not None:
                b = np.linspace(g["quant_bits"].min(), g["quant_bits"].max(), 20)
                X = np.column_stack([np.full_like(b, n), np.full_like(b, d), b])
                bottom.plot(b, fit.fit.predict(X), "-", color=f"C{i}", lw=1)
        top.set_title(f"N = {n:.3g}", fontsize=8)
        bottom.set_yscale("log")
        bottom.set_xscale("log", base=2)
        bottom.set_xlabel("weight bits")
    axes[0][0].set_ylabel("val loss (nats/token; dotted: float)")
    axes[1][0].set_ylabel("ΔL (nats/token; lines: fit)")
    common.legend(axes[0][0])
    fig.suptitle("Post-training quantization: loss vs bits per size and D", fontsize=9)
    return fig


def _plot_sparsity(t: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    from analysis.errors import InsufficientData

    p = t[t["sparsity"].notna()]
    if p.empty:
        raise InsufficientData("no pruned checkpoint was evaluated")
    sizes = sorted(p["N"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 2.8), squeeze=False,
                             sharey=True)
    for ax, n in zip(axes[0], sizes):
        for i, (d, g) in enumerate(p[p["N"] == n].groupby("D")):
            un = g[g["prune_pattern"] == "unstructured"].sort_values("sparsity")
            x = np.concatenate([[0.0], un["sparsity"].astype(float)])
            y = np.concatenate([[float(g["loss_float"].iloc[0])], un["loss"]])
            ax.plot(x, y, "o-", color=f"C{i}", ms=3, label=f"D={d:.3g}")
            nm = g[g["prune_pattern"] != "unstructured"]
            ax.plot(nm["sparsity"].astype(float), nm["loss"], "s", color=f"C{i}", mfc="none", ms=5)
        ax.set_xlabel("sparsity S (squares: N:M)")
        ax.set_title(f"N = {n:.3g}", fontsize=8)
    axes[0][0].set_ylabel("validation loss (nats/token)")
    common.legend(axes[0][0])
    fig.suptitle("One-shot magnitude pruning: loss vs sparsity", fontsize=9)
    return fig


def _plot_gain(rows: list[dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt

    from analysis.errors import InsufficientData

    if not rows:
        raise InsufficientData("no student with both a distilled and an alone run")
    fig, ax = plt.subplots(figsize=(4.4, 3.2))
    n = np.array([r["N"] for r in rows])
    g = np.array([r["gain"] for r in rows])
    lo = np.array([r["gain_ci"][0] for r in rows], dtype=float)
    hi = np.array([r["gain_ci"][1] for r in rows], dtype=float)
    err = np.where(np.isfinite([lo, hi]), np.abs(np.array([g - lo, hi - g])), 0.0)
    ax.errorbar(n, g, yerr=err, fmt="o", capsize=3)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("student non-embedding parameters N")
    ax.set_ylabel("gain: alone − distilled (nats/token)")
    ax.set_title("Distillation gain (95% paired bootstrap CI over seeds)", fontsize=8)
    return fig


def report(root: pathlib.Path, out_dir: pathlib.Path, s: dict[str, Any], bootstrap: int,
           study: Any) -> dict[str, Any]:
    """Returns the ΔL table and fit, sparsity table and distillation gains; writes the study's
    experiment.md (`study`: the experiment module, for its name and texts; `s`: its settings)."""
    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    fam_df = common.load(root / "family", notes)
    comp_df = common.load(root / COMPRESSED, notes)
    table_ = common.fit_or_none(lambda: compressed_table(fam_df, comp_df), "compression table", notes)
    t = table_ if table_ is not None else pd.DataFrame(
        columns=["run", "source", "N", "D", "quant_bits", "sparsity", "prune_pattern", "loss",
                 "loss_float", "delta_loss", "source_run"])
    fit = quant_fit(t, bootstrap, notes) if len(t) else None
    family = final_losses(fam_df)
    alone = pd.concat([final_losses(common.load(root / "alone", notes)),
                       family[family["D"] >= max(s["tokens"])]], ignore_index=True)
    gains = distill_table(final_losses(common.load(root / "distill", notes)), alone, bootstrap, notes)
    figures = {"comp_loss_vs_bits": common.figure(out_dir, "comp_loss_vs_bits",
                                                  lambda: _plot_bits(t, fit), notes),
               "comp_loss_vs_sparsity": common.figure(out_dir, "comp_loss_vs_sparsity",
                                                      lambda: _plot_sparsity(t), notes),
               "comp_distill_gain": common.figure(out_dir, "comp_distill_gain",
                                                  lambda: _plot_gain(gains), notes)}
    common.generic_report([root / "family"], out_dir, min(bootstrap, 20),
                          "Compression: generic report (the float family)", notes)
    keep = ["run", "source", "N", "D", "quant_bits", "sparsity", "prune_pattern", "loss",
            "loss_float", "delta_loss"]
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in t[keep].to_dict(orient="records")]
    quant_rows = [r for r in rows if r["quant_bits"] is not None]
    prune_rows = [r for r in rows if r["sparsity"] is not None]
    slopes = fit.slopes if fit is not None else pd.DataFrame(columns=["N", "bits", "slope_lnD"])
    positive = int((slopes["slope_lnD"] > 0).sum())
    verdict = {"fit": fit.grows_with_D if fit is not None else "not fitted",
               "gamma_D": fit.gamma_D if fit is not None else math.nan,
               "gamma_D_ci": list(fit.gamma_D_ci) if fit is not None else [math.nan, math.nan],
               "slopes_positive": positive, "slopes": len(slopes)}
    if len(t) and not len(slopes):
        notes.append("ΔL-vs-D slopes: no (N, bits) with ΔL > 0 at >= 2 token budgets")
    sections = ["## Measured", "",
                f"Family: sizes {', '.join(f'{n:g}' for n in s['sizes'])} (target non-embedding N) "
                f"× D ∈ {list(s['tokens'])} tokens; each final checkpoint quantized "
                f"({', '.join(s['quant'])}, per output channel) and pruned "
                f"({', '.join(str(p) for p in s['prune'])}, one shot, by magnitude). Distillation: "
                f"the {s['students']} smallest size(s) at D = {max(s['tokens'])}, seeds "
                f"{list(s['seeds'])}, teacher the largest family run. Loss: {METRIC}, nats/token.",
                "", "### Quantization: ΔL = quantized − float loss", "",
                common.table([{k: r[k] for k in ("source", "N", "D", "quant_bits", "loss",
                                                 "loss_float", "delta_loss")} for r in quant_rows]),
                "", "### ΔL(N, D, bits) = C·N^(−γ_N)·D^(γ_D)·e^(−k·bits)", ""]
    if fit is not None:
        f = fit.fit
        sections += [common.table([{"parameter": p, "value [95% CI]": common.fmt_ci(
            f.params[p], f.ci.get(p))} for p in ("C", "gamma_N", "gamma_D", "k")]), "",
            f"Points used: {int(len(quant_rows) - fit.n_dropped)} (dropped with ΔL ≤ 0: "
            f"{fit.n_dropped})."]
    else:
        sections += ["Not fitted (see the notes)."]
    sections += ["", f"Does ΔL grow with D at fixed N? Fit: **{verdict['fit']}** (γ_D = "
                 f"{common.fmt_ci(verdict['gamma_D'], verdict['gamma_D_ci'])}); model-free: the "
                 f"ΔL-vs-D slope is positive in {positive} of {len(slopes)} (N, bits) groups.",
                 "", "### Pruning: loss vs sparsity", "",
                 common.table([{k: r[k] for k in ("source", "N", "D", "prune_pattern", "sparsity",
                                                  "loss", "loss_float", "delta_loss")}
                               for r in prune_rows]),
                 "", "### Distillation gain (alone − distilled, nats/token)", "",
                 common.table([{"N": g["N"], "seeds": len(g["seeds"]), "alone": g["alone"],
                                "distilled": g["distilled"],
                                "gain [95% CI]": common.fmt_ci(g["gain"], g["gain_ci"]),
                                "gain > 0 on every seed": g["gain_every_seed"]} for g in gains])]
    summary = {"experiment": study.NAME, "quantization": quant_rows, "pruning": prune_rows,
               "quant_fit": fit.to_dict() if fit is not None else None,
               "grows_with_D": verdict, "distillation": gains, "figures": figures, "notes": notes}
    common.write_markdown(out_dir, study, sections, figures, notes)
    return summary
