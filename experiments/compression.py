"""Compression study: post-training quantization and pruning over a size × data family, and distillation.

Byte-level Transformer LMs on the stdlib corpus (the quickstart's `common.lm_base`, text only) are
trained at every size × token budget D. The text LM rather than the MLP/task family: its per-run
cost is dominated by process start-up and compilation at these sizes (a tiny run of 10 steps
takes about as long as a tiny MLP run), and its validation loss is the quantity the scaling laws
of quantization (Kumar et al. 2024) and sparsity (Frantar et al. 2023) speak about. After training,
a compression stage (`post_train`) writes every family run's final checkpoint, quantized (symmetric
absmax integers, one scale per output channel, through qwix) at several bit widths and
magnitude-pruned (one shot, unstructured at several sparsities and 2:4), into
ROOT/compressed/<run>-<scheme>/ run directories that are evaluated like any run; completed ones
are kept, so a rerun only does what is missing. A distillation arm trains the smallest sizes at
the largest D with the largest family model as teacher (`distill.teacher`, T = 1, mix 0.5), over
seeds; the same students trained alone are the family's seed-0 runs plus the `alone` sweep's
other seeds (same init and data order per seed, so the comparison is paired).

The analysis reports ΔL = L_quantized − L_float per checkpoint and bit width, the fit
ΔL = C·N^(−γ_N)·D^(γ_D)·e^(−k·bits) with bootstrap CIs over source runs (`analysis.compression`)
and whether ΔL grows with D at fixed N (γ_D's CI, and model-free the sign of the ΔL-vs-D slope
per size and bit width), loss vs sparsity per size, and the distillation gain (alone − distilled
final validation loss, nats/token) per student size with a paired bootstrap CI over seeds.
Frantar et al.'s L(S, N, D) is not fitted: it describes training at a sparsity, while the pruning
here is one-shot on a dense checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

from experiments import common

log = logging.getLogger(__name__)

NAME = "compression"
DESCRIPTION = ("size × data family of byte-level LMs, each quantized (int8/int4/int3) and pruned "
               "(25-75%, 2:4) after training, plus distillation from the largest model: ΔL(N, D, "
               "bits) fit, loss vs sparsity, distillation gain with CIs")
PAPER = ("Kumar et al. (2024), \"Scaling Laws for Precision\" (post-training quantization "
         "degradation growing with D); Frantar et al. (2023), \"Scaling Laws for Sparsely-"
         "Connected Foundation Models\"; Hinton, Vinyals, Dean (2015), \"Distilling the "
         "Knowledge in a Neural Network\"")
EXPECTED_OUTCOME = (
    "Quantization costs little at 8 bits and grows quickly below 4 bits (ΔL roughly exponential in "
    "−bits). Kumar et al. find that post-training quantization hurts more the longer a model of "
    "fixed size was trained (ΔL grows with D at fixed N; γ_D > 0) and less for larger models. "
    "One-shot magnitude pruning is nearly free at 25% and costs more at 50-75%; 2:4 costs about as "
    "much as 50% unstructured or more. A student trained on the teacher's distribution reaches a "
    "lower data loss than the same student alone when the teacher is much better; the gain is "
    "small at these token budgets and may shrink for students closer to the teacher.")
EXPECTED_RUNTIME = {"tiny": "903 s on 2 CPU cores at load 8-11 (7 runs, 16 compressed checkpoints)",
                    "small": "~15 min on 2 CPU cores (not measured yet: 15 runs, 63 compressed)",
                    "medium": "~30 min on one GPU (not measured)",
                    "large": "GPU/TPU cluster (hours; not measured)"}
FIGURES = ("comp_loss_vs_bits", "comp_loss_vs_sparsity", "comp_distill_gain")

METRIC = "val/loss"
COMPRESSED = "compressed"  # ROOT/compressed/<source run>-<scheme>/


def settings(scale: str) -> dict[str, Any]:
    """Returns sizes (target non-embedding N), token budgets D, compressions, students and seeds."""
    return common.pick(
        scale,
        tiny=dict(sizes=(3.4e3, 6.7e3), tokens=(1280, 2560), quant=("int8", "int4"),
                  prune=(0.5, "2:4"), students=1, seeds=(0, 1)),
        small=dict(sizes=(6.7e3, 12.5e3, 25e3), tokens=(100_000, 200_000, 400_000),
                   quant=("int8", "int4", "int3"), prune=(0.25, 0.5, 0.75, "2:4"), students=2,
                   seeds=(0, 1)),
        medium=dict(sizes=(0.25e6, 0.5e6, 1e6, 2e6), tokens=(5e6, 1e7, 2e7),
                    quant=("int8", "int4", "int3"), prune=(0.25, 0.5, 0.75, "2:4"), students=2,
                    seeds=(0, 1, 2)),
        large=dict(sizes=(10e6, 20e6, 40e6, 80e6), tokens=(2e8, 4e8, 8e8),
                   quant=("int8", "int4", "int3"), prune=(0.25, 0.5, 0.75, "2:4"), students=3,
                   seeds=(0, 1, 2)),
    )


def _sweep(scale: str, name: str, base: ml_collections.ConfigDict, sizes: Any, tokens: Any,
           seeds: Any) -> ml_collections.ConfigDict:
    sw = common.lm_sweep(scale, name, base)
    sw.sizes = tuple(float(n) for n in sizes)
    sw.tokens = tuple(int(d) for d in tokens)
    sw.seeds = tuple(seeds)
    return sw


def sweeps(scale: str, data_dir: str = "", tfds_name: str = "",
           root: str | pathlib.Path | None = None) -> dict[str, ml_collections.ConfigDict]:
    """Returns {'family', 'alone', 'distill'} sweeps, in the order they train; the students of
    'distill' learn from the family's largest run at the largest D (its directory under `root`)."""
    from scaling.sweeps.spec import expand

    s = settings(scale)
    base = common.lm_base(scale, data_dir, tfds_name)
    base.checkpoint.max_to_keep = 0  # a study of final checkpoints: keep the log-spaced ones only
    family = _sweep(scale, "compression_family", base, s["sizes"], s["tokens"], (0,))
    d_max, n_max = max(s["tokens"]), max(s["sizes"])
    teacher = next(r for r in expand(family)
                   if r.axes["N_target"] == n_max and r.axes["D_target"] == d_max)
    prefix = pathlib.Path(root) / "family" if root is not None else pathlib.Path("family")
    students = sorted(s["sizes"])[:s["students"]]
    alone = _sweep(scale, "compression_alone", base.copy_and_resolve_references(), students,
                   (d_max,), [x for x in s["seeds"] if x != 0])
    distilled = base.copy_and_resolve_references()
    distilled.distill.teacher = str(prefix / teacher.dir)
    distill = _sweep(scale, "compression_distill", distilled, students, (d_max,), s["seeds"])
    return {"family": family, "alone": alone, "distill": distill}


# ------------------------------------------------------------------------- compression stage


def compressions(scale: str) -> list[tuple[Any, Any]]:
    """Returns the (QuantSpec | None, PruneSpec | None) pairs applied to every family checkpoint."""
    from scaling.compress.spec import prune_spec, quant_spec

    s = settings(scale)
    out: list[tuple[Any, Any]] = [(quant_spec(q), None) for q in s["quant"]]
    out += [(None, prune_spec(None, p) if isinstance(p, str) else prune_spec(float(p)))
            for p in s["prune"]]
    return out


def compressed_dir(root: pathlib.Path, source: pathlib.Path, quant: Any, prune: Any) -> pathlib.Path:
    """Returns ROOT/compressed/<source run>-<scheme> (':' of N:M patterns spelled 'of')."""
    from scaling.compress.run import tag

    return root / COMPRESSED / f"{source.name}-{tag(quant, prune).replace(':', 'of')}"


def _status(run_dir: pathlib.Path) -> str:
    try:
        return str(json.loads((run_dir / "status.json").read_text())["status"])
    except (OSError, json.JSONDecodeError, KeyError):
        return "missing"


def compress_family(root: str | pathlib.Path, scale: str, shard: int = 0, shards: int = 1,
                    progress: bool = False) -> int:
    """Writes and evaluates this shard's missing compressed checkpoints; returns how many it did.

    Every completed family run's final checkpoint gets every scheme of `compressions(scale)`; job i
    belongs to shard i mod shards. A compressed run that is complete and evaluated is kept; one
    with a checkpoint but no evaluation is evaluated; any other leftover directory (a stage killed
    mid-write) is removed and written again.
    """
    from scaling.compress.run import compress_run
    from scaling.evaluate import evaluate_run

    root = pathlib.Path(root)
    sources = [d for d in common.run_dirs(root / "family") if _status(d) == "completed"]
    jobs = [(src, q, p) for src in sources for q, p in compressions(scale)]
    done = 0
    for i, (src, quant, prune) in enumerate(jobs):
        if i % shards != shard:
            continue
        out = compressed_dir(root, src, quant, prune)
        steps = common.checkpoint_steps(out)
        if _status(out) == "completed" and steps:
            if steps[-1] not in common.evaluated_steps(out):
                evaluate_run(out, str(steps[-1]), progress=progress)
                done += 1
            continue
        if out.exists():
            shutil.rmtree(out)
        t0 = time.time()
        compress_run(src, out, quant=quant, prune=prune, evaluate=True, progress=progress)
        log.info("compressed %s in %.1f s", out.name, time.time() - t0)
        done += 1
    return done


def post_train(root: pathlib.Path, scale: str, progress: bool = False) -> None:
    """Returns None; runs the compression stage in worker processes (one per CPU worker).

    The workers see the family sweep's devices per process and its compilation cache, so the
    evaluation program compiled during training is reused for every compressed checkpoint.
    """
    from scaling.sweeps import runner

    sweep = sweeps(scale, tfds_name="stdlib_corpus", root=root)["family"]  # for its resources
    shards = common.default_workers(scale, "local")
    (root / COMPRESSED).mkdir(parents=True, exist_ok=True)
    env = runner.worker_env(dict(os.environ),
                            devices_per_process=int(sweep.resources.devices_per_process),
                            cache_dir=str(root / "family" / "compile_cache"))
    procs = []
    for shard in range(shards):
        code = (f"import logging; logging.basicConfig(level=logging.WARNING); "
                f"logging.getLogger('experiments').setLevel(logging.INFO); "
                f"from experiments import compression as c; "
                f"c.compress_family({str(root)!r}, {scale!r}, {shard}, {shards}, {bool(progress)})")
        log_path = root / COMPRESSED / f"stage-{shard}.log"
        with open(log_path, "w", encoding="utf-8") as fh:
            procs.append((log_path, subprocess.Popen([sys.executable, "-c", code], env=env,
                                                     stdout=fh, stderr=subprocess.STDOUT)))
    failed = [str(p) for p, proc in procs if proc.wait() != 0]
    if failed:
        raise common.ExperimentError(f"compression stage failed; see {', '.join(failed)}")


# ------------------------------------------------------------------------------------ analysis


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


def analyze(root: pathlib.Path, out_dir: pathlib.Path, scale: str, bootstrap: int) -> dict[str, Any]:
    """Returns the ΔL table and fit, sparsity table and distillation gains; writes the report."""
    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    fam_df = common.load(root / "family", notes)
    comp_df = common.load(root / COMPRESSED, notes)
    table_ = common.fit_or_none(lambda: compressed_table(fam_df, comp_df), "compression table", notes)
    t = table_ if table_ is not None else pd.DataFrame(
        columns=["run", "source", "N", "D", "quant_bits", "sparsity", "prune_pattern", "loss",
                 "loss_float", "delta_loss", "source_run"])
    fit = quant_fit(t, bootstrap, notes) if len(t) else None
    s = settings(scale)
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
    summary = {"experiment": NAME, "quantization": quant_rows, "pruning": prune_rows,
               "quant_fit": fit.to_dict() if fit is not None else None,
               "grows_with_D": verdict, "distillation": gains, "figures": figures, "notes": notes}
    common.write_markdown(out_dir, sys.modules[__name__], sections, figures, notes)
    return summary
