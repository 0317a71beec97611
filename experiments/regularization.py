"""Regularization ablation: a model-size sweep x {baseline, dropout, weight decay, label smoothing,
z-loss}.

Byte-level Transformer LMs on the stdlib corpus, with associative recall mixed into the stream,
trained at a fixed number of tokens per parameter. The baseline uses no regularizer; each arm adds
one. Per arm: L(N) = E + A·N^-α fitted to the final validation loss (exponent α, irreducible loss
E, with bootstrap CIs, and paired-bootstrap differences from the baseline, since every arm runs the
same sizes) and the emergence point of recall (sigmoid midpoint of exact match vs compute over all
checkpoints). Validation loss is plain cross-entropy in every arm (label smoothing and z-loss
change only the training objective).
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import ml_collections

from experiments import arms as arms_lib
from experiments import common

NAME = "regularization"
DESCRIPTION = ("model-size sweep x {baseline, dropout, weight decay, label smoothing, z-loss}: "
               "exponents, irreducible loss and emergence points per arm vs baseline, with CIs")
PAPER = ("regularizers as used in Kaplan et al. (2020) / Chowdhery et al. (2022, z-loss); "
         "Szegedy et al. (2016, label smoothing); Srivastava et al. (2014, dropout)")
EXPECTED_OUTCOME = (
    "In the single-epoch regime (every token seen once) regularizers have little to fix: dropout "
    "and label smoothing should raise the validation cross-entropy (label smoothing by design, "
    "dropout by slowing learning), weight decay should be neutral to slightly helpful, and a "
    "small z-loss neutral. Differences in α and E are expected to be small relative to their CIs "
    "at this scale; emergence points move with whatever moves the loss.")
EXPECTED_RUNTIME = {"tiny": "~15 s", "small": "~9-10 min (25 runs)", "medium": "~1 GPU-hour",
                    "large": "GPU/TPU cluster"}
FIGURES = ("reg_loss", "reg_forest", "reg_emergence")

TASK = "associative_recall"


def arm_list(scale: str) -> list[arms_lib.Arm]:
    """Returns the arms (label, changed fields) of a scale; the first is the baseline."""
    all_arms = [("baseline", {}),
                ("dropout", {"model.resid_dropout": 0.1}),
                ("weight_decay", {"optim.weight_decay": 0.1}),
                ("label_smoothing", {"train.label_smoothing": 0.1}),
                ("z_loss", {"train.z_loss": 1e-3})]
    return all_arms[:2] if scale == "tiny" else all_arms


def settings(scale: str) -> dict[str, Any]:
    """Returns target sizes (non-embedding N) and tokens per parameter of a scale."""
    return common.pick(
        scale,
        tiny=dict(sizes=(3.4e3,), tokens=(5120,), tokens_per_param=None),
        small=dict(sizes=(6.5e3, 12.5e3, 25e3, 50e3, 100e3), tokens=None, tokens_per_param=10.0),
        medium=dict(sizes=(0.25e6, 0.5e6, 1e6, 2e6, 4e6), tokens=None, tokens_per_param=20.0),
        large=dict(sizes=(10e6, 20e6, 40e6, 80e6, 160e6), tokens=None, tokens_per_param=20.0),
    )


def base_config(scale: str, data_dir: str = "", tfds_name: str = "") -> ml_collections.ConfigDict:
    """Returns the shared base run: the LM base with recall mixed in and no regularizer."""
    c = common.lm_base(scale, data_dir, tfds_name)
    common.add_recall_task(c, scale, 0.3 if scale in ("tiny", "small") else 0.2)
    c.optim.weight_decay = 0.0
    return c


def sweeps(scale: str, data_dir: str = "", tfds_name: str = "") -> dict[str, ml_collections.ConfigDict]:
    """Returns {'arms': sizes x regularizer arms} for a scale."""
    s = settings(scale)
    base = base_config(scale, data_dir, tfds_name)
    sw = common.lm_sweep(scale, "regularization", base)
    sw.sizes = tuple(s["sizes"])
    if s["tokens"]:
        sw.tokens = tuple(s["tokens"])
    else:
        sw.tokens_per_param = (s["tokens_per_param"],)
    sw.axes = (arms_lib.arm_axis(arm_list(scale), base),)
    return {"arms": sw}


def analyze(root: pathlib.Path, out_dir: pathlib.Path, scale: str, bootstrap: int) -> dict[str, Any]:
    """Returns per-arm α, E, A and recall emergence points with CIs and differences from baseline."""
    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    df = common.load(root / "arms")
    base = base_config(scale, tfds_name="stdlib_corpus")
    res = arms_lib.analyze(df, arm_list(scale), base, out_dir, prefix="reg", law="power-n",
                           x_col="N_nonembed", x_label="non-embedding parameters N", task=TASK,
                           bootstrap=bootstrap, notes=notes, title="Regularization")
    baseline_dirs = sorted({r for r, a in zip(df["run_dir"], arms_lib.label_runs(df, arm_list(scale), base))
                            if a == "baseline"}) if len(df) else []
    common.generic_report([pathlib.Path(d) for d in baseline_dirs], out_dir, bootstrap,
                          "Regularization: baseline arm", notes)
    s = settings(scale)
    sections = ["## Measured", "",
                f"Sizes {', '.join(f'{n:g}' for n in s['sizes'])} (target non-embedding N), "
                + (f"{s['tokens_per_param']:g} tokens per parameter" if s["tokens_per_param"]
                   else f"{s['tokens'][0]} tokens") + "; recall mixed in at rate "
                f"{base.data.task.mix_rate}.", ""]
    sections += arms_lib.markdown(res, "N_nonembed")
    summary = {"experiment": NAME, **res, "notes": notes}
    common.write_markdown(out_dir, sys.modules[__name__], sections, res["figures"], notes)
    return summary
