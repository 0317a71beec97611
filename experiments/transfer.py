"""Pre-train → adapt (Hernandez et al. 2021; Lin et al. 2024): fine-tuning vs from scratch.

A size family of Transformers is pre-trained on short additions (1–2 digit operands); every
model is then fine-tuned on 3-digit additions (`train.init_from` its final checkpoint), fully and
with LoRA, at >= 4 fine-tuning data sizes D_F (a fixed set of D_F examples, repeated for the same
number of steps), and the same sizes train from scratch on the same D_F. Both tasks share one
vocabulary and sequence length, so the checkpoints fit. The loss is the held-out 3-digit answer
loss (−answer_logprob, nats/token) at each run's best checkpoint (early stopping). The analysis reports, per model, the fine-tuning curves with
Lin et al.'s rectified fit, fine-tuned minus scratch loss per D_F with its spread over seeds, and
the effective data transferred D_T(N, D_F) = k·D_F^alpha·N^beta (`analysis.transfer`) for full
fine-tuning and LoRA.
"""

from __future__ import annotations

import math
import pathlib
import sys
from typing import Any

import ml_collections
import numpy as np
import pandas as pd

from experiments import common

NAME = "transfer"
DESCRIPTION = ("Hernandez et al. 2021 / Lin et al. 2024: pre-train a size family on short "
               "additions, fine-tune (full and LoRA) and train from scratch on 3-digit additions "
               "at several data sizes; effective data transferred")
PAPER = ("Hernandez, Kaplan, Henighan, McCandlish (2021), \"Scaling laws for transfer\"; Lin, "
         "Huang, Chen, Chen, Yang (2024), \"Selecting large language model to fine-tune via "
         "rectified scaling law\"")
EXPECTED_OUTCOME = (
    "At small D_F a fine-tuned model reaches a lower held-out loss than the same model trained "
    "from scratch on the same examples; the gap shrinks as D_F grows. The effective data "
    "transferred D_T grows with D_F with an exponent below 1 and with model size (Hernandez et "
    "al.: alpha ≈ 0.18, beta ≈ 0.38 for text → code). LoRA transfers less than full fine-tuning "
    "at the same D_F.")
EXPECTED_RUNTIME = {"tiny": "~9 min on 2 busy CPU cores (7 runs, too few for the D_T fit)", "small": "893 s on 2 CPU cores (183 runs in 9 populations, measured)",
                    "medium": "~20 min on one GPU", "large": "~1 GPU-hour"}
FIGURES = ("transfer_curves", "transfer_effective_data")

TASK = "addition"
METRIC = f"{TASK}/answer_logprob"
SEQ_LEN = 16  # BOS + "123+456=" + "579" + EOS fits; both tasks use it, so shapes match
PRETRAIN = {"n_digits": 2, "min_digits": 1}
FINETUNE = {"n_digits": 3, "min_digits": 3}


def settings(scale: str) -> dict[str, Any]:
    """Returns the grid of a scale: widths, layers, steps, fine-tuning data sizes, seeds, LoRA."""
    return common.pick(
        scale,
        tiny=dict(widths=(16,), layers=1, pretrain_steps=20, ft_steps=10,
                  data_sizes=(8, 32), seeds=(0,), rank=4, batch=16),
        small=dict(widths=(32, 48, 64), layers=2, pretrain_steps=600, ft_steps=150,
                   data_sizes=(32, 64, 128, 256, 512), seeds=(0, 1, 2, 3), rank=8, batch=32),
        medium=dict(widths=(64, 128, 192, 256), layers=4, pretrain_steps=4000, ft_steps=500,
                    data_sizes=(64, 128, 256, 512, 1024, 2048), seeds=(0, 1, 2), rank=16,
                    batch=64),
        large=dict(widths=(128, 256, 384, 512), layers=6, pretrain_steps=20000, ft_steps=1000,
                   data_sizes=(128, 256, 512, 1024, 2048, 4096, 8192), seeds=(0, 1, 2), rank=16,
                   batch=128),
    )


def _base(scale: str, task_params: dict[str, int]) -> ml_collections.ConfigDict:
    """Returns the base run: a Transformer on the addition task alone, eval at checkpoints."""
    s = settings(scale)
    c = common.mlp_base(scale)
    c.model.kind = "transformer"
    c.model.n_layers = s["layers"]
    c.model.max_seq_len = SEQ_LEN
    c.model.vocab_size = 0
    c.data.seq_len = SEQ_LEN
    c.data.task.name = TASK
    for k, v in task_params.items():
        c.data.task.params[k] = v
    c.data.task.eval_examples = 256 if scale in ("tiny", "small") else 1024
    c.train.batch_size = s["batch"]
    c.optim.lr = 3e-3
    c.optim.clip_norm = 1.0
    c.checkpoint.log_max = 128  # steps 1, 2, 4, ..., 128 and the last: early stopping picks the best
    c.checkpoint.every = 0
    return c


def _shape_axis(widths: tuple[int, ...]) -> dict[str, list[int]]:
    return {"model.d_model": list(widths), "model.n_heads": [max(1, w // 8) for w in widths]}


def sweeps(scale: str, data_dir: str = "", tfds_name: str = "",
           root: str | pathlib.Path | None = None) -> dict[str, ml_collections.ConfigDict]:
    """Returns {'pretrain', 'finetune', 'scratch'} sweeps; fine-tuning runs start from the
    pre-training runs' directories under `root` (relative 'pretrain/<run>' paths without one)."""
    from scaling.sweeps.spec import expand

    del data_dir, tfds_name  # no text data
    s = settings(scale)
    pre = common.mlp_sweep(scale, "transfer_pretrain", _base(scale, PRETRAIN))
    pre.base.train.num_steps = s["pretrain_steps"]
    pre.base.checkpoint.log_max = 1
    pre.axes = (_shape_axis(s["widths"]),)
    sources = {run.config.model.d_model: run.dir for run in expand(pre)}
    prefix = pathlib.Path(root) / "pretrain" if root is not None else pathlib.Path("pretrain")

    ft = common.mlp_sweep(scale, "transfer_finetune", _base(scale, FINETUNE))
    ft.base.train.num_steps = s["ft_steps"]
    ft.base.optim.warmup_steps = 0
    ft.axes = (dict(_shape_axis(s["widths"]),
                    **{"train.init_from": [str(prefix / sources[w]) for w in s["widths"]]}),
               {"data.task.num_examples": list(s["data_sizes"])},
               {"finetune.lora_rank": [0, s["rank"]], "optim.lr": [3e-3, 1e-2]})
    ft.labels = (("data.task.num_examples", "DF"), ("finetune.lora_rank", "r"))
    ft.seeds = tuple(s["seeds"])
    # one population per (size, arm): its data sizes and seeds share a shape and a length
    ft.resources.population = len(s["data_sizes"]) * len(s["seeds"])

    scratch = common.mlp_sweep(scale, "transfer_scratch", _base(scale, FINETUNE))
    scratch.base.train.num_steps = s["ft_steps"]
    scratch.axes = (_shape_axis(s["widths"]), {"data.task.num_examples": list(s["data_sizes"])})
    scratch.labels = (("data.task.num_examples", "DF"),)
    scratch.seeds = tuple(s["seeds"])
    scratch.resources.population = len(s["data_sizes"]) * len(s["seeds"])
    return {"pretrain": pre, "finetune": ft, "scratch": scratch}


# ------------------------------------------------------------------------------------ analysis


def best_losses(df: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Returns one row per run: N (non-embedding), D_F, seed, loss (nats/token), step, arm; the
    loss is the lowest held-out answer loss over the run's evaluated checkpoints (early stopping,
    as Hernandez et al. 2021 do: at small D_F a fixed step count repeats the examples for many
    epochs, and the final checkpoint measures overfitting rather than transfer)."""
    if df.empty:
        return pd.DataFrame(columns=["N", "D_F", "seed", "loss", "step", "arm"])
    rows = common.curves(df[df["source"] == "eval"], METRIC)
    last = rows.loc[rows.groupby("run_id")["value"].idxmax()]  # value = answer log-prob
    out = pd.DataFrame({"N": last["N_nonembed"].astype(float),
                        "D_F": last["data.task.num_examples"].astype(float),
                        "seed": last["seed"] if "seed" in last else 0,
                        "loss": -last["value"].astype(float), "step": last["step"].astype(int)})
    if arm == "finetune":
        rank = last.get("finetune.lora_rank", pd.Series(0, index=last.index)).astype(int)
        out["arm"] = np.where(rank > 0, "lora", "full")
    else:
        out["arm"] = arm
    # rows in the order of what they are, not of their run ids (hashes of configs that hold the
    # root's path through init_from): the bootstrap resamples rows by position, so the same runs
    # under another root must give the same CIs
    return out.sort_values(["arm", "N", "D_F", "seed", "step"], kind="stable").reset_index(drop=True)


def gap_table(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Returns per (N, D_F, fine-tuning arm): mean loss minus the scratch mean (nats), with the
    spread over seeds of the paired difference (min, max) and its t-interval when >= 2 seeds."""
    from scipy import stats

    rows = []
    scratch = runs[runs["arm"] == "scratch"]
    for arm in ("full", "lora"):
        tuned = runs[runs["arm"] == arm]
        for (n, d), g in tuned.groupby(["N", "D_F"]):
            base = scratch[(scratch["N"] == n) & (scratch["D_F"] == d)]
            paired = g.merge(base, on="seed", suffixes=("", "_scratch"))
            if paired.empty:
                continue
            diff = (paired["loss"] - paired["loss_scratch"]).to_numpy()
            ci = [math.nan, math.nan]
            if len(diff) >= 2:
                half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
                ci = [float(diff.mean() - half), float(diff.mean() + half)]
            rows.append({"arm": arm, "N": float(n), "D_F": float(d), "seeds": len(diff),
                         "loss": float(paired["loss"].mean()),
                         "scratch_loss": float(paired["loss_scratch"].mean()),
                         "difference": float(diff.mean()), "difference_ci": ci,
                         "beats_scratch": bool(np.all(diff < 0))})
    return rows


def transfer_fits(runs: pd.DataFrame, bootstrap: int, notes: list[str]) -> dict[str, Any]:
    """Returns {arm: TransferFit or None} of the effective data transferred per fine-tuning arm."""
    from analysis import transfer

    scratch = runs[runs["arm"] == "scratch"].rename(columns={"D_F": "D"})
    out = {}
    for arm in ("full", "lora"):
        tuned = runs[runs["arm"] == arm]
        out[arm] = common.fit_or_none(
            lambda: transfer.fit_transfer(scratch, tuned, bootstrap=bootstrap),
            f"effective data transferred ({arm})", notes) if len(tuned) else None
    return out


def rectified_fits(runs: pd.DataFrame, notes: list[str]) -> dict[tuple[str, float], Any]:
    """Returns {(arm, N): FitResult} of Lin et al.'s rectified law L(D_F) per model and arm."""
    from analysis.fit import fit_law

    fits = {}
    for (arm, n), g in runs[runs["arm"] != "scratch"].groupby(["arm", "N"]):
        fits[(arm, float(n))] = common.fit_or_none(
            lambda: fit_law("finetune-rectified", g["D_F"].to_numpy(), g["loss"].to_numpy()),
            f"rectified fit of {arm} N={n:.3g}", notes)
    return fits


def _plot_curves(runs: pd.DataFrame, fits: dict) -> Any:
    import matplotlib.pyplot as plt

    from analysis.errors import InsufficientData

    if runs.empty:
        raise InsufficientData("no completed fine-tuning or scratch run")
    sizes = sorted(runs["N"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 2.8), squeeze=False,
                             sharey=True)
    for ax, n in zip(axes[0], sizes):
        for i, arm in enumerate(("scratch", "full", "lora")):
            g = runs[(runs["N"] == n) & (runs["arm"] == arm)]
            mean = g.groupby("D_F")["loss"].mean()
            ax.plot(g["D_F"], g["loss"], ".", color=f"C{i}", alpha=0.5)
            ax.plot(mean.index, mean.values, "o-" if arm == "scratch" else "o",
                    color=f"C{i}", ms=3, label=arm)
            fit = fits.get((arm, float(n)))
            if fit is not None and len(mean):
                x = np.geomspace(mean.index.min(), mean.index.max(), 50)
                ax.plot(x, fit.predict(x[:, None]), "--", color=f"C{i}", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("fine-tuning examples D_F")
        ax.set_title(f"N = {n:.3g}", fontsize=8)
    axes[0][0].set_ylabel("held-out answer loss (nats/token)")
    common.legend(axes[0][0])
    fig.suptitle("Fine-tuning curves (dashed: rectified law of Lin et al. 2024)", fontsize=9)
    return fig


def _plot_effective_data(fits: dict) -> Any:
    import matplotlib.pyplot as plt

    from analysis.errors import InsufficientData

    if all(f is None for f in fits.values()):
        raise InsufficientData("no effective-data fit (see the notes)")
    fig, ax = plt.subplots(figsize=(4.4, 3.2))
    for arm, fit in fits.items():
        if fit is None:
            continue
        pts = fit.points[fit.points["used"]]
        for i, (n, g) in enumerate(pts.groupby("N")):
            ax.plot(g["D_F"], g["D_T"], "o" if arm == "full" else "x", color=f"C{i}",
                    label=f"{arm}, N={n:.3g}")
            x = np.geomspace(g["D_F"].min(), g["D_F"].max(), 20)
            ax.plot(x, fit.predict(x, n), "-" if arm == "full" else ":", color=f"C{i}", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning examples D_F")
    ax.set_ylabel("effective data transferred D_T")
    ax.set_title("D_T = k·D_F^α·N^β (lines: the fit)", fontsize=8)
    common.legend(ax)
    return fig


def analyze(root: pathlib.Path, out_dir: pathlib.Path, scale: str, bootstrap: int) -> dict[str, Any]:
    """Returns the transfer summary (gaps, D_T fits with CIs); writes figures and Markdown."""
    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = pd.concat([best_losses(common.load(root / "finetune", notes), "finetune"),
                      best_losses(common.load(root / "scratch", notes), "scratch")],
                     ignore_index=True)
    gaps = gap_table(runs)
    fits = transfer_fits(runs, bootstrap, notes)
    rect = rectified_fits(runs, notes)
    figures = {"transfer_curves": common.figure(out_dir, "transfer_curves",
                                                lambda: _plot_curves(runs, rect), notes),
               "transfer_effective_data": common.figure(
                   out_dir, "transfer_effective_data", lambda: _plot_effective_data(fits), notes)}
    # the generic report covers the pre-training sweep: the fine-tuning and scratch sweeps share
    # a few sizes over many runs, which its emergence section cannot fit
    common.generic_report([root / "pretrain"], out_dir, min(bootstrap, 20),
                          "Transfer: generic report (pre-training sweep)", notes)
    s = settings(scale)
    fit_rows = [{"arm": arm,
                 **{p: common.fmt_ci(f.params[p], f.ci.get(p)) for p in ("k", "alpha", "beta")},
                 "runs used": int(f.points["used"].sum())}
                for arm, f in fits.items() if f is not None]
    smallest = min(s["data_sizes"])
    wins = [g for g in gaps if g["D_F"] == smallest and g["arm"] == "full"]
    sections = [
        "## Measured", "",
        f"Pre-training: {s['pretrain_steps']} steps on 1–2 digit additions; fine-tuning and "
        f"scratch: {s['ft_steps']} steps on D_F ∈ {list(s['data_sizes'])} 3-digit additions, "
        f"seeds {list(s['seeds'])}, LoRA rank {s['rank']} (attn, mlp). Loss: held-out answer "
        "loss, nats/token, at each run's best evaluated checkpoint (early stopping; checkpoints at "
        "steps 1, 2, 4, ..., 128 and the last).", "",
        "### Fine-tuned minus scratch loss (negative: fine-tuning wins)", "",
        common.table([{"arm": g["arm"], "N": g["N"], "D_F": g["D_F"], "seeds": g["seeds"],
                       "fine-tuned": g["loss"], "scratch": g["scratch_loss"],
                       "difference [95% CI]": common.fmt_ci(g["difference"], g["difference_ci"])}
                      for g in gaps]), "",
        f"At the smallest D_F = {smallest}, full fine-tuning beats scratch on every seed for "
        f"{sum(g['beats_scratch'] for g in wins)} of {len(wins)} sizes.", "",
        "### Effective data transferred D_T = k·D_F^α·N^β", "",
        common.table(fit_rows) if fit_rows else "Not fitted (see the notes).",
    ]
    summary = {"experiment": NAME, "gaps": gaps,
               "transfer": {arm: (f.to_dict() if f is not None else None)
                            for arm, f in fits.items()},
               "figures": figures, "notes": notes}
    common.write_markdown(out_dir, sys.modules[__name__], sections, figures, notes)
    return summary
