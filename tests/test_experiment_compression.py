"""`scaling experiment compression`: the students learn from the family's largest run, the
post-training stage hook runs between training and analysis, the analysis turns run files into
ΔL, the ΔL(N, D, bits) verdict and distillation gains, and the tiny study runs end to end."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pandas as pd
import pytest

import experiments
from experiments import common
from experiments import compression as study
from experiments import compression_report as report
from scaling.cli import experiment as experiment_cli
from scaling.sweeps import spec


def test_students_learn_from_the_largest_family_run(tmp_path):
    sweeps = study.sweeps("small", root=tmp_path)
    assert list(sweeps) == ["family", "alone", "distill"]  # the teacher trains first
    s = study.settings("small")
    family = spec.expand(sweeps["family"])
    assert len(s["sizes"]) >= 3 and len(s["tokens"]) >= 2 and len(s["seeds"]) >= 2
    assert {(r.axes["N_target"], r.axes["D_target"]) for r in family} == {
        (n, d) for n in s["sizes"] for d in s["tokens"]}
    teacher = next(r for r in family if r.axes["N_target"] == max(s["sizes"])
                   and r.axes["D_target"] == max(s["tokens"]))
    distill = spec.expand(sweeps["distill"])
    alone = spec.expand(sweeps["alone"])
    students = sorted(s["sizes"])[:s["students"]]
    assert {(r.axes["N_target"], r.axes["seed"]) for r in distill} == {
        (n, x) for n in students for x in s["seeds"]}
    # seed 0 of "alone" is the family's own run at the largest D: not trained twice
    assert {(r.axes["N_target"], r.axes["seed"]) for r in alone} == {
        (n, x) for n in students for x in s["seeds"] if x != 0}
    by_n = {r.axes["N_target"]: r for r in family if r.axes["D_target"] == max(s["tokens"])}
    for r in distill:
        assert r.config.distill.teacher == str(tmp_path / "family" / teacher.dir)
        assert r.config.model.vocab_size == teacher.config.model.vocab_size
        assert r.config.data.seq_len == teacher.config.data.seq_len
        # the paired control differs only by the teacher (and the run name)
        ctrl = by_n[r.axes["N_target"]].config if r.axes["seed"] == 0 else next(
            a.config for a in alone if a.axes == r.axes)
        assert ctrl.distill.teacher == "" and ctrl.model.to_dict() == r.config.model.to_dict()
        assert ctrl.train.num_steps == r.config.train.num_steps and ctrl.seed == r.config.seed
    schemes = [(q and q.scheme, p and p.pattern, p and p.sparsity) for q, p in study.compressions("small")]
    assert schemes == [("int8", None, None), ("int4", None, None), ("int3", None, None),
                       (None, "unstructured", 0.25), (None, "unstructured", 0.5),
                       (None, "unstructured", 0.75), (None, "2:4", 0.5)]


class _Hooked:
    """A study without sweeps whose post_train and analyze record the order they ran in."""

    NAME, FIGURES = "hooked", ()
    calls: list[str] = []

    @staticmethod
    def sweeps(scale, data_dir="", tfds_name=""):
        return {}

    @classmethod
    def post_train(cls, root, scale, progress):
        cls.calls.append(f"post_train {pathlib.Path(root).name} {scale} {progress}")

    @classmethod
    def analyze(cls, root, out_dir, scale, bootstrap):
        cls.calls.append("analyze")
        return {"figures": {}}


def test_run_experiment_calls_post_train_after_training_and_before_analysis(tmp_path):
    _Hooked.calls = []
    result = common.run_experiment(_Hooked, tmp_path / "r", "tiny", progress=False)
    assert _Hooked.calls == ["post_train r tiny False", "analyze"]
    assert result["status"] == "completed" and "post_train_s" in result["timings"]
    _Hooked.calls = []
    common.run_experiment(_Hooked, tmp_path / "r", "tiny", analyze_only=True, progress=False)
    assert _Hooked.calls == ["analyze"]  # analysis only: nothing is trained or compressed

    class Broken(_Hooked):
        @classmethod
        def post_train(cls, root, scale, progress):
            raise RuntimeError("stage broke")

    with pytest.raises(RuntimeError, match="stage broke"):
        common.run_experiment(Broken, tmp_path / "b", "tiny", progress=False)
    state = json.loads((tmp_path / "b" / common.STATE_FILE).read_text())
    assert state["status"] == "failed"


# --------------------------------------------------------------- analysis on synthetic run files


def _write_run(d: pathlib.Path, run_id: str, n: int, steps: int, loss: float,
               axes: dict, **extra) -> None:
    d.mkdir(parents=True)
    run = {"version": 1, "id": run_id, "name": d.name, "axes": axes, "n_params": n + 1000,
           "n_params_nonembed": n, "flops_per_token": 6.0 * n, "tokens_per_step": 100,
           "num_steps": steps, **extra}
    (d / "run.json").write_text(json.dumps(run))
    (d / "status.json").write_text(json.dumps({"status": "completed", "step": steps}))
    row = {"step": steps, "tokens": 100 * steps, "flops": 600.0 * n * steps, "n_params": n + 1000,
           "n_params_nonembed": n, "metric": "val/loss", "value": loss}
    (d / "eval.jsonl").write_text(json.dumps(row) + "\n")


def synthetic_study(root: pathlib.Path) -> None:
    """Writes family, compressed, distill and alone runs where ΔL = 50·N^-0.5·D^0.3·e^(-0.7·bits)
    and distillation lowers the loss by 0.1 + 0.01·seed."""
    rng = np.random.default_rng(0)
    for n in (1000, 4000, 16000):
        for steps in (100, 200, 400):
            d_tokens, base = 100 * steps, 2.0 + 30 * n ** -0.3 + 50 * (100 * steps) ** -0.3
            src = f"f{n}-{steps}"
            axes = {"N_target": n, "D_target": d_tokens, "seed": 0}
            _write_run(root / "family" / src, src, n, steps, base, axes)
            for bits in (3, 4, 8):
                dl = 50 * n ** -0.5 * d_tokens ** 0.3 * math.exp(-0.7 * bits) * rng.lognormal(0, 0.02)
                _write_run(root / study.COMPRESSED / f"{src}-int{bits}", f"c{src}-{bits}", n, steps,
                           base + dl, dict(axes, source_run=src, source_step=steps, quant_bits=bits,
                                           group_size=0, sparsity=None, prune_pattern=None))
            for s in (0.5, 0.75):
                _write_run(root / study.COMPRESSED / f"{src}-s{s}", f"p{src}-{s}", n, steps,
                           base + s ** 2, dict(axes, source_run=src, source_step=steps,
                                               quant_bits=None, group_size=None, sparsity=s,
                                               prune_pattern="unstructured"))
            if steps == 400 and n < 16000:
                for seed in (0, 1, 2):
                    loss = base + 0.02 * seed
                    if seed:
                        _write_run(root / "alone" / f"a{n}-{seed}", f"a{n}-{seed}", n, steps, loss,
                                   dict(axes, seed=seed))
                    _write_run(root / "distill" / f"d{n}-{seed}", f"d{n}-{seed}", n, steps,
                               loss - 0.1 - 0.01 * seed, dict(axes, seed=seed))


def test_analysis_of_synthetic_run_files(tmp_path):
    synthetic_study(tmp_path)
    notes: list[str] = []
    t = report.compressed_table(common.load(tmp_path / "family"),
                               common.load(tmp_path / study.COMPRESSED))
    assert len(t) == 9 * 5
    pruned = t[t["sparsity"].notna()]
    np.testing.assert_allclose(pruned["delta_loss"], pruned["sparsity"].astype(float) ** 2, rtol=1e-9)
    fit = report.quant_fit(t, bootstrap=100, notes=notes)
    assert not notes
    assert fit.grows_with_D == "yes" and fit.gamma_D == pytest.approx(0.3, abs=0.05)
    assert fit.fit.params["gamma_N"] == pytest.approx(0.5, abs=0.05)
    assert len(fit.slopes) == 9 and (fit.slopes["slope_lnD"] > 0).all()
    family = report.final_losses(common.load(tmp_path / "family"))
    alone = pd.concat([report.final_losses(common.load(tmp_path / "alone")),
                       family[family["D"] >= 40_000]], ignore_index=True)
    gains = report.distill_table(report.final_losses(common.load(tmp_path / "distill")), alone,
                                bootstrap=200, notes=notes)
    assert [g["N"] for g in gains] == [1000.0, 4000.0] and not notes
    for g in gains:
        assert g["seeds"] == [0, 1, 2] and g["gain"] == pytest.approx(0.11, abs=1e-9)
        assert 0.1 - 1e-9 <= g["gain_ci"][0] <= 0.11 <= g["gain_ci"][1] <= 0.12 + 1e-9
        assert g["gain_every_seed"]
    # one seed: the gain is reported, its CI is a note, never a crash
    one = report.distill_table(report.final_losses(common.load(tmp_path / "distill")).query("seed == 0"),
                              alone, bootstrap=200, notes=notes)
    assert all(math.isnan(g["gain_ci"][0]) for g in one) and len(notes) == 2


# ----------------------------------------------------------------------------- the tiny study


def _val_loss(run_dir: pathlib.Path, step: int) -> float:
    rows = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    (value,) = [r["value"] for r in rows if r["step"] == step and r["metric"] == "val/loss"]
    return value


@pytest.mark.slow
def test_tiny_study_writes_its_report(tmp_path, stdlib_tiny_data_dir):
    root = tmp_path / "compression"
    argv = ["scaling experiment", "compression", "--root", str(root), "--scale", "tiny",
            "--tfds_data_dir", str(stdlib_tiny_data_dir), "--noprogress"]
    check_tiny_report(root, experiment_cli.main(argv))


def check_tiny_report(root: pathlib.Path, code: int) -> None:
    """Asserts what the tiny study's report and run files must hold (returns None)."""
    out = root / common.REPORT_DIR
    summary = json.loads((out / "experiment.json").read_text())
    assert summary["experiment"] == "compression" and (out / "experiment.md").is_file()
    for stem in study.FIGURES:
        assert summary["figures"][stem] and (out / "figures" / f"{stem}.png").is_file(), summary["notes"]
    assert summary["status"] == "completed" and code == 0
    assert "post_train_s" in summary["timings"]
    # every family run's final checkpoint, in every scheme, as a self-describing run directory
    sources = common.run_dirs(root / "family")
    schemes = study.compressions("tiny")
    assert len(sources) == 4 and len(schemes) == 4
    by_name = {r["run"]: r for r in summary["quantization"] + summary["pruning"]}
    assert len(by_name) == 16
    for src in sources:
        final_step = common.checkpoint_steps(src)[-1]
        for quant, prune in schemes:
            d = study.compressed_dir(root, src, quant, prune)
            run = json.loads((d / "run.json").read_text())
            rec = run["compression"]
            assert rec["source_dir"] == str(src.resolve()) and rec["source_step"] == final_step
            if quant is not None:
                assert rec["quantize"]["scheme"] == quant.scheme and run["axes"]["quant_bits"] == quant.bits
                assert rec["quantize"]["granularity"] == "per-channel"
            else:
                assert rec["prune"]["pattern"] == prune.pattern
                assert run["axes"]["sparsity"] == pytest.approx(prune.sparsity, abs=0.02)
            # the ΔL table is compressed minus float loss as the run files hold them
            row = by_name[run["name"]]
            assert row["loss"] == _val_loss(d, final_step)
            assert row["loss_float"] == _val_loss(src, final_step)
            assert row["delta_loss"] == pytest.approx(row["loss"] - row["loss_float"], abs=1e-12)
    # 2 sizes x 2 budgets x 2 bit widths: the fit runs or says why not; the verdict is recorded
    assert summary["grows_with_D"]["fit"] in ("yes", "no", "inconclusive", "not fitted")
    assert (summary["quant_fit"] is None) == (summary["grows_with_D"]["fit"] == "not fitted")
    if summary["quant_fit"] is None:
        assert any("ΔL(N, D, bits) fit" in n for n in summary["notes"])
    # distillation: the smallest size, 2 seeds, gain = alone − distilled from the run files
    (g,) = summary["distillation"]
    alone_dirs = [str(d.resolve()) for d in common.run_dirs(root / "alone")] + [
        str(d.resolve()) for d in sources if json.loads((d / "run.json").read_text())["axes"]["D_target"] == 2560
        and json.loads((d / "run.json").read_text())["n_params_nonembed"] == g["N"]]
    distilled_dirs = [str(d.resolve()) for d in common.run_dirs(root / "distill")]
    assert g["seeds"] == [0, 1] and len(distilled_dirs) == len(alone_dirs) == 2
    assert (sorted(g["alone_dirs"]), sorted(g["distilled_dirs"])) == (sorted(alone_dirs),
                                                                     sorted(distilled_dirs))

    def final_loss(d: str) -> float:
        return _val_loss(pathlib.Path(d), common.checkpoint_steps(pathlib.Path(d))[-1])

    assert g["alone"] == pytest.approx(np.mean([final_loss(d) for d in alone_dirs]), abs=1e-12)
    assert g["distilled"] == pytest.approx(np.mean([final_loss(d) for d in distilled_dirs]), abs=1e-12)
    assert g["gain"] == pytest.approx(g["alone"] - g["distilled"], abs=1e-12)
    assert all(math.isfinite(x) for x in g["gain_ci"])
    for d in distilled_dirs:
        assert json.loads((pathlib.Path(d) / "run.json").read_text())["distill"]["teacher"]["run"].startswith(
            str(root / "family"))
    # rerun-safe: a second pass over the compression stage has nothing left to do
    assert study.compress_family(root, "tiny") == 0
    assert "compression" in experiments.NAMES
