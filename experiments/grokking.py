"""Grokking on modular addition (Power et al. 2022): train fraction x weight decay.

An MLP reads one-hot a and b (p = 97) and predicts (a + b) mod p. The pair table is split once into
a training fraction and the held-out rest; training samples only training pairs (AdamW, constant
LR). Validation accuracy is exact match on every held-out pair at every checkpoint; training
accuracy is the accuracy on the training batches (metrics.jsonl `token_accuracy`). The analysis
finds, per setting, the step at which training accuracy reaches 0.99 (memorization) and the step at
which validation accuracy crosses 0.5 (generalization), and fits validation accuracy with a sigmoid
in log10(step) (`analysis.emergence.fit_emergence`): its midpoint is the onset step, with a
bootstrap CI.
"""

from __future__ import annotations

import math
import sys
import pathlib
from typing import Any

import ml_collections
import numpy as np

from experiments import common

NAME = "grokking"
DESCRIPTION = ("Power et al. 2022: modular addition (p = 97), train fraction x weight decay; "
               "validation accuracy jumps long after training accuracy reaches 1")
PAPER = ("Power, Burda, Edwards, Babuschkin, Misra (2022), \"Grokking: Generalization beyond "
         "overfitting on small algorithmic datasets\"")
EXPECTED_OUTCOME = (
    "Training accuracy reaches ~1 early while validation accuracy stays near chance (1/p); much "
    "later validation accuracy rises as a sigmoid in log(step) to ~1. The onset comes later for "
    "smaller training fractions (below roughly 0.3 it does not arrive within the budget) and "
    "weight decay moves it: too little decay delays it, enough decay speeds it up (Power et al., "
    "Fig. 1 and 2).")
EXPECTED_RUNTIME = {"tiny": "~15 s", "small": "~8 min (9 runs x 6,000 steps)",
                    "medium": "~30 min on CPU, minutes on a GPU",
                    "large": "~1 GPU-hour (Transformer, 16 runs x 50,000 steps)"}
FIGURES = ("grokking_curves", "grokking_onset")

TASK = "modular_arithmetic"
CHANCE_MARGIN = 0.05  # "near chance": validation accuracy <= this


def settings(scale: str) -> dict[str, Any]:
    """Returns the grid and training settings of a scale (p, fractions, weight decays, steps)."""
    return common.pick(
        scale,
        tiny=dict(p=23, fractions=(0.5, 0.7), decays=(0.3,), steps=120, width=64, batch=64,
                  every=20, kind="mlp"),
        small=dict(p=97, fractions=(0.3, 0.5, 0.7), decays=(0.1, 0.3, 0.6), steps=6000,
                   width=512, batch=512, every=200, kind="mlp"),
        medium=dict(p=97, fractions=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7), decays=(0.03, 0.1, 0.3, 1.0),
                    steps=20000, width=512, batch=512, every=250, kind="mlp"),
        large=dict(p=97, fractions=(0.2, 0.3, 0.5, 0.7), decays=(0.1, 0.3, 1.0, 3.0),
                   steps=50000, width=128, batch=512, every=500, kind="transformer"),
    )


def sweeps(scale: str, data_dir: str = "", tfds_name: str = "") -> dict[str, ml_collections.ConfigDict]:
    """Returns {'grid': the train-fraction x weight-decay sweep} for a scale."""
    del data_dir, tfds_name  # no text data
    s = settings(scale)
    c = common.mlp_base(scale)
    c.data.task.name = TASK
    c.data.task.params.p = s["p"]
    c.data.task.params.ops = "+"
    c.data.task.params.train_fraction = 0.5
    c.data.task.eval_examples = 0  # every held-out pair
    c.train.batch_size = s["batch"]
    c.train.num_steps = s["steps"]
    c.optim.lr = 3e-3 if s["kind"] == "mlp" else 1e-3
    c.optim.b2 = 0.98
    c.checkpoint.log_max = 128
    c.checkpoint.every = s["every"]
    if s["kind"] == "mlp":
        c.model.mlp_width = s["width"]
        c.model.mlp_depth = 1
    else:  # Power et al.: 2-layer decoder, width 128, 4 heads, own-token sequences
        c.model.kind = "transformer"
        c.model.d_model = s["width"]
        c.model.n_layers = 2
        c.model.n_heads = 4
        c.model.max_seq_len = 8
        c.data.seq_len = 8
        c.model.vocab_size = 0
    sw = common.mlp_sweep(scale, "grokking", c)
    sw.axes = ({"data.task.params.train_fraction": list(s["fractions"])},
               {"optim.weight_decay": list(s["decays"])})
    sw.labels = (("data.task.params.train_fraction", "frac"),)
    return {"grid": sw}


# ------------------------------------------------------------------------------------ analysis


def _first_cross(steps: np.ndarray, values: np.ndarray, level: float) -> float:
    """Returns the first step where values reach `level` (linear in log step between points)."""
    for i, v in enumerate(values):
        if v >= level:
            if i == 0:
                return float(steps[0])
            s0, s1, v0 = math.log(steps[i - 1]), math.log(steps[i]), values[i - 1]
            frac = (level - v0) / (v - v0) if v != v0 else 1.0
            return float(math.exp(s0 + frac * (s1 - s0)))
    return math.nan


def analyze_runs(root: pathlib.Path, bootstrap: int, notes: list[str]) -> list[dict[str, Any]]:
    """Returns one row per run: fraction, decay, memorization/generalization/onset steps, flags."""
    from analysis.emergence import fit_emergence

    df = common.load(root / "grid")
    if df.empty:
        return []
    val = common.curves(df, f"{TASK}/exact_match", "eval")
    train = common.curves(df, "train/token_accuracy", "train")
    rows = []
    for run_id, v in val.groupby("run_id", sort=False):
        t = train[train["run_id"] == run_id]
        frac = float(v["data.task.params.train_fraction"].iloc[0])
        wd = float(v["optim.weight_decay"].iloc[0])
        vs, vv = v["step"].to_numpy(float), v["value"].to_numpy(float)
        ts, tv = t["step"].to_numpy(float), t["value"].to_numpy(float)
        mem = _first_cross(ts, tv, 0.99) if len(ts) else math.nan
        gen = _first_cross(vs, vv, 0.5)
        # the delayed jump: a checkpoint with train acc >= 0.99 and val acc near chance, then high
        train_at = np.interp(vs, ts, tv) if len(ts) else np.zeros_like(vs)
        gap = (train_at >= 0.99) & (vv <= CHANCE_MARGIN)
        jump = bool(gap.any() and vv[-1] >= 0.9 and np.argmax(gap) < len(vv) - 1)
        row = {"run": v["run_name"].iloc[0], "train_fraction": frac, "weight_decay": wd,
               "steps": int(vs.max()), "final_val_acc": float(vv[-1]),
               "final_train_acc": float(tv[-1]) if len(tv) else math.nan,
               "memorization_step": mem, "generalization_step": gen,
               "delay_ratio": gen / mem if mem and math.isfinite(gen) else math.nan,
               "delayed_jump": jump, "onset_step": math.nan, "onset_ci": [math.nan, math.nan],
               "transition": False}
        mask = vs > 0
        if mask.sum() >= 5 and vv.max() - vv.min() > 0.05:
            res = common.fit_or_none(lambda: fit_emergence(vs[mask], vv[mask], bootstrap=bootstrap),
                                     f"sigmoid of {row['run']}", notes)
            if res is not None:
                row["transition"] = bool(res.transition)
                if res.transition and res.x0_in_range:
                    row["onset_step"] = float(10 ** res.x0)
                    row["onset_ci"] = [float(10 ** c) for c in res.x0_ci]
        rows.append(row)
    rows.sort(key=lambda r: (r["weight_decay"], r["train_fraction"]))
    return rows


def _plot_curves(root: pathlib.Path, rows: list[dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt

    df = common.load(root / "grid")
    fracs = sorted({r["train_fraction"] for r in rows}) or [0.0]
    decays = sorted({r["weight_decay"] for r in rows}) or [0.0]
    fig, axes = plt.subplots(len(decays), len(fracs), figsize=(3.0 * len(fracs), 2.4 * len(decays)),
                             squeeze=False, sharex=True, sharey=True)
    val = common.curves(df, f"{TASK}/exact_match", "eval") if len(df) else None
    train = common.curves(df, "train/token_accuracy", "train") if len(df) else None
    for r in rows:
        ax = axes[decays.index(r["weight_decay"])][fracs.index(r["train_fraction"])]
        v = val[val["run_name"] == r["run"]]
        t = train[train["run_name"] == r["run"]]
        ax.plot(t["step"], t["value"], "-", color="C0", lw=1, label="train")
        ax.plot(v["step"], v["value"], "o-", color="C3", ms=2, lw=1, label="validation")
        if math.isfinite(r["onset_step"]):
            ax.axvline(r["onset_step"], color="k", ls=":", lw=0.8)
        ax.set_title(f"frac {r['train_fraction']:g}, wd {r['weight_decay']:g}", fontsize=8)
    for ax in axes[-1]:
        ax.set_xscale("log")
        ax.set_xlabel("optimizer step")
    for row_axes in axes:
        row_axes[0].set_ylabel("accuracy")
    common.legend(axes[0][0])
    fig.suptitle("Grokking: train vs validation accuracy (dotted: sigmoid onset)", fontsize=9)
    return fig


def _plot_onset(rows: list[dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.4, 3.2))
    for i, wd in enumerate(sorted({r["weight_decay"] for r in rows})):
        sub = [r for r in rows if r["weight_decay"] == wd]
        x = [r["train_fraction"] for r in sub]
        y = [r["generalization_step"] for r in sub]
        ax.plot(x, y, "o-", color=f"C{i}", label=f"wd {wd:g} (val acc 0.5)")
        for r in sub:
            if math.isfinite(r["onset_step"]):
                lo, hi = r["onset_ci"]
                err = [[max(r["onset_step"] - lo, 0)], [max(hi - r["onset_step"], 0)]] \
                    if all(map(math.isfinite, (lo, hi))) else None
                ax.errorbar([r["train_fraction"]], [r["onset_step"]], yerr=err, fmt="x",
                            color=f"C{i}", ms=5, capsize=2)
            if not math.isfinite(r["generalization_step"]):
                ax.plot([r["train_fraction"]], [r["steps"]], "^", color=f"C{i}", mfc="none")
    ax.set_yscale("log")
    ax.set_xlabel("training fraction of the pair table")
    ax.set_ylabel("step")
    ax.set_title("Onset vs train fraction (x: sigmoid midpoint with CI;\n"
                 "open triangle: not reached within the run)", fontsize=8)
    common.legend(ax)
    return fig


def analyze(root: pathlib.Path, out_dir: pathlib.Path, scale: str, bootstrap: int) -> dict[str, Any]:
    """Returns the grokking summary (per-setting steps and onset CIs); writes figures and Markdown."""
    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = analyze_runs(root, bootstrap, notes)
    figures = {"grokking_curves": common.figure(out_dir, "grokking_curves",
                                                lambda: _plot_curves(root, rows), notes),
               "grokking_onset": common.figure(out_dir, "grokking_onset",
                                               lambda: _plot_onset(rows), notes)}
    common.generic_report([root / "grid"], out_dir, min(bootstrap, 20), "Grokking: generic report",
                          notes)
    s = settings(scale)
    jumped = [r for r in rows if r["delayed_jump"]]
    table_rows = [{"train fraction": r["train_fraction"], "weight decay": r["weight_decay"],
                   "train acc 0.99 at": r["memorization_step"],
                   "val acc 0.5 at": r["generalization_step"],
                   "onset (sigmoid) [95% CI]": common.fmt_ci(r["onset_step"], r["onset_ci"]),
                   "final val acc": r["final_val_acc"], "delayed jump": r["delayed_jump"]}
                  for r in rows]
    sections = [
        "## Measured", "",
        f"p = {s['p']}, {s['kind']} (width {s['width']}), batch {s['batch']}, AdamW lr 3e-3, "
        f"{s['steps']} steps. Chance = 1/p = {1 / s['p']:.3f}. A run shows the delayed jump when "
        f"some checkpoint has training accuracy >= 0.99 while validation accuracy <= "
        f"{CHANCE_MARGIN}, and validation accuracy ends >= 0.9.", "",
        common.table(table_rows), "",
        f"Delayed jump in {len(jumped)} of {len(rows)} settings"
        + (f": {', '.join(r['run'] for r in jumped)}." if jumped else "."),
    ]
    summary = {"experiment": NAME, "runs": rows, "delayed_jump_settings": len(jumped),
               "figures": figures, "notes": notes}
    common.write_markdown(out_dir, sys.modules[__name__], sections, figures, notes)
    return summary
