"""`scaling experiment transfer`: the sweeps wire fine-tuning runs to the pre-training runs of the
same shape, and the analysis turns final losses into gaps and effective-data fits."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import experiments
from experiments import common
from experiments import transfer as study
from scaling.cli import experiment as experiment_cli
from scaling.sweeps import spec


def test_finetuning_runs_start_from_the_pretraining_run_of_their_shape(tmp_path):
    sweeps = study.sweeps("small", root=tmp_path)
    assert list(sweeps) == ["pretrain", "finetune", "scratch"]  # the order they run in
    pre = {r.config.model.d_model: r for r in spec.expand(sweeps["pretrain"])}
    ft = spec.expand(sweeps["finetune"])
    s = study.settings("small")
    assert len(ft) == len(s["widths"]) * len(s["data_sizes"]) * 2 * len(s["seeds"])
    for run in ft:
        c = run.config
        assert c.train.init_from == str(tmp_path / "pretrain" / pre[c.model.d_model].dir)
        # the checkpoint fits: same shape and vocabulary as its source
        src = pre[c.model.d_model].config
        assert (c.model.n_heads, c.model.vocab_size, c.data.seq_len) == (
            src.model.n_heads, src.model.vocab_size, src.data.seq_len)
        assert c.data.task.params.n_digits == 3 and src.data.task.params.n_digits == 2
    assert {r.config.finetune.lora_rank for r in ft} == {0, s["rank"]}
    assert len(s["data_sizes"]) >= 4 and len(s["seeds"]) >= 2
    scratch = spec.expand(sweeps["scratch"])
    assert all(r.config.train.init_from == "" for r in scratch)
    assert {r.config.data.task.num_examples for r in scratch} == set(s["data_sizes"])


def synthetic_runs(seeds: int = 3) -> pd.DataFrame:
    """Returns final losses of a study where pre-training is worth D_T = 20·D_F^0.5·(N/1e3)^0.3."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        for n in (1e3, 4e3, 1.6e4):
            E, B, beta = 0.3 + 5 * n ** -0.4, 4.0, 0.5
            for d in (16, 32, 64, 128, 256):
                rows.append({"N": n, "D_F": d, "seed": seed, "arm": "scratch",
                             "loss": E + B * d ** -beta + 0.001 * rng.normal()})
                for arm, k in (("full", 20.0), ("lora", 5.0)):
                    d_t = k * d ** 0.5 * (n / 1e3) ** 0.3
                    rows.append({"N": n, "D_F": d, "seed": seed, "arm": arm,
                                 "loss": E + B * (d + d_t) ** -beta + 0.001 * rng.normal()})
    return pd.DataFrame(rows)


def test_analysis_of_final_losses():
    runs = synthetic_runs()
    gaps = study.gap_table(runs)
    assert len(gaps) == 2 * 3 * 5
    for g in gaps:
        assert g["difference"] < 0 and g["beats_scratch"]
        lo, hi = g["difference_ci"]
        assert lo <= g["difference"] <= hi < 0
    full = [g["difference"] for g in gaps if g["arm"] == "full" and g["N"] == 1e3]
    assert full[0] < full[-1]  # the gap shrinks as D_F grows
    notes: list[str] = []
    fits = study.transfer_fits(runs, bootstrap=50, notes=notes)
    assert not notes
    assert fits["full"].params["alpha"] == pytest.approx(0.5, abs=0.1)
    assert fits["full"].params["k"] > fits["lora"].params["k"]
    rect = study.rectified_fits(runs, notes)
    assert set(rect) == {(arm, n) for arm in ("full", "lora") for n in (1e3, 4e3, 1.6e4)}


def test_best_losses_take_each_runs_best_checkpoint():
    rows = []
    for run, rank, logprobs in (("a", 0, [-3.0, -1.2, -2.5]), ("b", 8, [-2.0, -1.9, -1.5])):
        for step, lp in zip((1, 64, 150), logprobs):
            rows.append({"run_id": run, "metric": study.METRIC, "value": lp, "step": step, "source": "eval",
                         "N_nonembed": 1e3, "seed": 0, "data.task.num_examples": 32,
                         "finetune.lora_rank": rank})
    rows.append(dict(rows[0], metric="val/loss", value=0.1))  # other metrics do not count
    best = study.best_losses(pd.DataFrame(rows), "finetune").set_index("arm")
    assert best.loc["full", "loss"] == 1.2 and best.loc["full", "step"] == 64  # overfits after 64
    assert best.loc["lora", "loss"] == 1.5 and best.loc["lora", "step"] == 150
    # the row order (which the bootstrap resamples by position) does not follow the run ids
    renamed = pd.DataFrame(rows).replace({"run_id": {"a": "z", "b": "c"}})
    pd.testing.assert_frame_equal(study.best_losses(renamed, "finetune"),
                                  study.best_losses(pd.DataFrame(rows), "finetune"))


@pytest.mark.slow
def test_tiny_study_writes_its_report(tmp_path):
    root = tmp_path / "transfer"
    argv = ["scaling experiment", "transfer", "--root", str(root), "--scale", "tiny",
            "--noprogress"]
    code = experiment_cli.main(argv)
    out = root / common.REPORT_DIR
    summary = json.loads((out / "experiment.json").read_text())
    assert summary["experiment"] == "transfer"
    # tiny has 2 data sizes: the gaps and curves are drawn, the D_T fit (>= 4 sizes) is noted
    assert summary["figures_missing"] == ["transfer_effective_data"]
    assert summary["status"] == "incomplete" and code != 0
    assert any(">= 4 distinct data sizes" in n for n in summary["notes"])
    assert {(g["arm"], g["D_F"]) for g in summary["gaps"]} == {
        (arm, d) for arm in ("full", "lora") for d in (8.0, 32.0)}
    assert all(math.isfinite(g["difference"]) for g in summary["gaps"])
    for run_dir in common.run_dirs(root / "finetune"):
        run = json.loads((run_dir / "run.json").read_text())
        assert run["init_from"]["run"].startswith(str(root / "pretrain"))
    assert "transfer" in experiments.NAMES
