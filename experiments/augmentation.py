"""Augmentation ablation in data-limited training: {none, each augmentation} x unique-data budget.

A fixed-size byte-level Transformer LM is trained for several epochs over U unique tokens of the
stdlib corpus (with associative recall mixed in, drawn fresh every time, so the task itself is
never data-limited), for several U. Arms: no augmentation; token substitution; span masking;
random crops of the packed windows; pair shuffling of the recall examples. Per arm and epoch count:
L(U) = E + B·U^-β fitted to the final validation loss (the data-scaling exponent β and the
irreducible loss E, with bootstrap CIs and paired differences from no augmentation) and the recall
emergence point (sigmoid midpoint of exact match vs compute over all checkpoints).
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import ml_collections

from experiments import arms as arms_lib
from experiments import common

NAME = "augmentation"
DESCRIPTION = ("data-limited LMs (several epochs over U unique tokens) x {none, each augmentation}: "
               "data-scaling exponent β and emergence points per arm vs none, with CIs")
PAPER = ("data-constrained scaling as in Muennighoff et al. (2023), \"Scaling Data-Constrained "
         "Language Models\"; augmentations as in the data-augmentation literature for text")
EXPECTED_OUTCOME = (
    "With one epoch augmentation only adds noise, so the loss should be equal or slightly worse. "
    "With several epochs over a small U the baseline overfits and the smallest budgets gain most "
    "from augmentation, which flattens L(U): a smaller β, and a lower loss at small U. Token "
    "substitution and span masking corrupt inputs (a regularizer); random crops add new window "
    "offsets (closest to fresh data); pair shuffling touches only the recall rows, which are never "
    "repeated, so it should change nothing.")
EXPECTED_RUNTIME = {"tiny": "~15 s", "small": "~5 min (40 runs)", "medium": "~1-2 GPU-hours",
                    "large": "GPU/TPU cluster"}
FIGURES = ("aug_loss", "aug_forest", "aug_emergence")

TASK = "associative_recall"


def arm_list(scale: str) -> list[arms_lib.Arm]:
    """Returns the arms (label, changed fields) of a scale; the first ('baseline') is none."""
    all_arms = [("baseline", {}),
                ("token_substitution", {"data.augment.token_substitution": 0.05}),
                ("span_mask", {"data.augment.span_mask": 0.05}),
                ("random_crop", {"data.augment.random_crop": True}),
                ("pair_shuffle", {"data.augment.pair_shuffle": True})]
    return all_arms[:2] if scale == "tiny" else all_arms


def settings(scale: str) -> dict[str, Any]:
    """Returns the model size (target non-embedding N), unique-token budgets U and epoch counts."""
    return common.pick(
        scale,
        tiny=dict(size=3.4e3, unique=(2048,), epochs=(2.0,)),
        small=dict(size=25e3, unique=(16384, 32768, 65536, 131072), epochs=(1.0, 4.0)),
        medium=dict(size=1e6, unique=(2**19, 2**20, 2**21, 2**22, 2**23), epochs=(1.0, 4.0, 16.0)),
        large=dict(size=40e6, unique=(2**25, 2**26, 2**27, 2**28, 2**29), epochs=(1.0, 4.0, 16.0)),
    )


def base_config(scale: str, data_dir: str = "", tfds_name: str = "") -> ml_collections.ConfigDict:
    """Returns the shared base run: the LM base with recall mixed in and no augmentation."""
    c = common.lm_base(scale, data_dir, tfds_name)
    common.add_recall_task(c, scale, 0.3 if scale in ("tiny", "small") else 0.2)
    return c


def sweeps(scale: str, data_dir: str = "", tfds_name: str = "") -> dict[str, ml_collections.ConfigDict]:
    """Returns {'arms': unique-token budgets x epochs x augmentation arms} for a scale."""
    s = settings(scale)
    base = base_config(scale, data_dir, tfds_name)
    sw = common.lm_sweep(scale, "augmentation", base)
    sw.sizes = (s["size"],)
    sw.axes = (arms_lib.arm_axis(arm_list(scale), base),
               {"data.num_tokens": [int(u) for u in s["unique"]]},
               {"data.epochs": [float(e) for e in s["epochs"]]})
    sw.labels = (("data.augment.pair_shuffle", "pshuf"),)
    return {"arms": sw}


def analyze(root: pathlib.Path, out_dir: pathlib.Path, scale: str, bootstrap: int) -> dict[str, Any]:
    """Returns per-arm β, E, B and recall emergence points per epoch count; writes the report."""
    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    df = common.load(root / "arms")
    base = base_config(scale, tfds_name="stdlib_corpus")
    s = settings(scale)
    if len(df):
        df = df.assign(U=df["data.num_tokens"].astype(float))
    groups = sorted({float(e) for e in df["data.epochs"]}) if len(df) else [max(s["epochs"])]
    results: dict[str, Any] = {}
    figures: dict[str, str] = {}
    sections = ["## Measured", "",
                f"Model: target N = {s['size']:g}; unique-token budgets U = "
                f"{', '.join(str(u) for u in s['unique'])}; epochs {', '.join(f'{e:g}' for e in s['epochs'])}; "
                f"recall mixed in at rate {base.data.task.mix_rate}.", ""]
    most = max(groups)
    for ep in sorted(groups, reverse=True):
        sub = df[df["data.epochs"].astype(float) == ep] if len(df) else df
        prefix = "aug" if ep == most else f"aug_{ep:g}ep"
        res = arms_lib.analyze(sub, arm_list(scale), base, out_dir, prefix=prefix, law="power-d",
                               x_col="U", x_label="unique training tokens U",
                               task=TASK, bootstrap=bootstrap, notes=notes,
                               title=f"Augmentation, {ep:g} epoch(s)")
        results[f"{ep:g}"] = res
        figures.update(res["figures"])
        sections += [f"### {ep:g} epoch(s) over U" + (" (data-limited)" if ep > 1 else ""), ""]
        sections += arms_lib.markdown(res, "U")
    baseline_dirs = sorted({r for r, a in zip(df["run_dir"], arms_lib.label_runs(df, arm_list(scale), base))
                            if a == "baseline"}) if len(df) else []
    common.generic_report([pathlib.Path(d) for d in baseline_dirs], out_dir, bootstrap,
                          "Augmentation: no-augmentation arm", notes)
    summary = {"experiment": NAME, "by_epochs": results, "figures": figures, "notes": notes}
    common.write_markdown(out_dir, sys.modules[__name__], sections, figures, notes)
    return summary
