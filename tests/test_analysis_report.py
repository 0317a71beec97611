"""The report (every figure on a synthetic sweep; skipped sections) and the fit/analyze CLIs."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.report import build_report, detect_arm_axis
from analysis.runs import load_runs
from analysis.synthetic import make_sweep
from scaling.cli import analyze as analyze_cli
from scaling.cli import fit as fit_cli

FIGURES = ["loss_vs_compute", "isoflop", "chinchilla_fit", "emergence", "continuous_addition", "subtasks",
           "ablation_forest"]


def test_report_builds_every_figure(tmp_path):
    root = make_sweep(tmp_path / "sweep", sizes=(2.5e5, 5e5, 1e6, 2e6, 4e6, 8e6), budgets=(1e14, 1.6e15))
    md = build_report([root], tmp_path / "report", bootstrap=10)
    text = md.read_text()
    for name in FIGURES:
        for ext in ("png", "pdf"):
            f = tmp_path / "report" / "figures" / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
        assert f"figures/{name}.png" in text
    assert "None: every section had data." in text
    # the synthetic sweep's budget axis is not C_budget: measured C within 5 % groups it, and it says so
    assert "no `C_budget` axis: their budgets are grouped by measured C within 5%" in text
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("<img") == len(FIGURES) and "<table" in html
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["skipped"] == [] and sorted(summary["figures"]) == sorted(FIGURES)
    # the synthetic sweep follows L(N, D) with Hoffmann's exponents: approach 2 near 0.45
    assert summary["approach2"]["N_opt"]["a"] == pytest.approx(0.4516, abs=0.1)
    # the rollout fits the runs below the largest N and predicts the largest, with intervals
    ro = summary["rollout"]
    assert ro["n_test"] >= 1 and ro["n_train"] >= 6 and 0.0 <= ro["coverage"] <= 1.0
    assert ro["level"] == 0.9 and ro["mape"] < 0.05  # synthetic data follow the fitted law
    assert "Rollout: fitted on the" in text and "prediction intervals" in text


def test_report_skips_sections_without_data(tmp_path):
    root = make_sweep(tmp_path / "sweep", sizes=(1e6, 2e6), budgets=(1e14,), arms=("only",),
                      arm_scale=(1.0,), tasks=False)
    md = build_report(root, tmp_path / "rep", bootstrap=0)
    text = md.read_text()
    assert "## Skipped sections" in text
    for section in ("IsoFLOP", "L(N, D) fit", "Emergence (discrete)", "Per-subtask curves", "Ablation"):
        assert f"| {section}" in text, section
    assert (tmp_path / "rep" / "figures" / "loss_vs_compute.png").is_file()
    assert not (tmp_path / "rep" / "figures" / "isoflop.png").exists()


def test_cli_fit_power_law_and_json(tmp_path, capsys):
    N = np.geomspace(1e6, 1e10, 25)
    pd.DataFrame({"params": N, "val": laws.power_law(N, 1.8, 300.0, 0.3)}).to_csv(tmp_path / "a.csv", index=False)
    out = tmp_path / "fit.json"
    rc = fit_cli.main(["scaling fit", str(tmp_path / "a.csv"), "--law", "power-n", "--columns",
                       "N=params,loss=val", "--bootstrap", "20", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "alpha" in printed and "95% CI" in printed
    res = json.loads(out.read_text())["all"]
    assert res["params"]["alpha"] == pytest.approx(0.3, rel=1e-3)  # noiseless data


def test_cli_fit_isoflop_groups_and_errors(tmp_path, reference_dir, capsys):
    src = reference_dir / "porian" / "porian_isoflop_points.csv"
    rc = fit_cli.main(["scaling fit", str(src), "--law", "isoflop", "--columns", "C=flops,N=n,loss=loss,D=tokens",
                       "--query", "config=rw|tuned|short|const|standard|val", "--query", "source=summary_df",
                       "--bootstrap", "0"])
    assert rc == 0
    assert "exponent 0.49" in capsys.readouterr().out  # README: 0.497 ± 0.005
    assert fit_cli.main(["scaling fit", str(src), "--law", "chinchilla", "--columns", "N=nope"]) == 2
    assert "not in the CSV" in capsys.readouterr().err


def test_cli_help_and_analyze(tmp_path, capsys):
    for mod in (fit_cli, analyze_cli):
        with pytest.raises(SystemExit) as e:
            mod.main(["scaling x", "--help"])
        assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert "chinchilla" in help_text and "REPORT_DIR" in help_text
    root = make_sweep(tmp_path / "sw", sizes=(1e6, 2e6), budgets=(1e14,), arms=("a",), arm_scale=(1.0,),
                      tasks=False)
    assert analyze_cli.main(["scaling analyze", str(root), "--out", str(tmp_path / "r"), "--bootstrap", "0"]) == 0
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "report.html").is_file()
    assert analyze_cli.main(["scaling analyze", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2


def _runs(**axes):
    """Returns a runs table: the full product of the given axis values (one row per run)."""
    grid = pd.MultiIndex.from_product(list(axes.values()), names=list(axes)).to_frame(index=False)
    return grid.assign(run_id=[f"r{i}" for i in range(len(grid))])


def test_detect_arm_axis_skips_size_data_compute_and_seed_axes():
    sweep_axes = dict(N_target=[1e6, 2e6, 4e6], C_budget=[1e14, 1e15], seed=[0, 1, 2])
    runs = _runs(**sweep_axes)
    assert detect_arm_axis(runs, list(sweep_axes)) is None
    for data_axis in ("D_target", "tokens_per_param", "data.task.params.train_fraction"):
        assert detect_arm_axis(_runs(**{data_axis: [0.25, 0.5, 1.0]}, seed=[0]), [data_axis, "seed"]) is None
    # an axis named as an arm wins; a model field with 3 values (not a shape field) is an arm
    runs = _runs(**sweep_axes, arm=["base", "dropout"])
    assert detect_arm_axis(runs, [*sweep_axes, "arm"]) == "arm"
    runs = _runs(**sweep_axes, **{"model.resid_dropout": [0.0, 0.1, 0.2]})
    assert detect_arm_axis(runs, [*sweep_axes, "model.resid_dropout"]) == "model.resid_dropout"
    runs = _runs(**{"model.n_layers": [2, 4], "model.d_ff": [128, 256], "model.n_heads": [2, 4]})
    assert detect_arm_axis(runs, ["model.n_layers", "model.d_ff", "model.n_heads"]) is None


def test_empty_arm_axis_means_no_ablation_section(tmp_path):
    # two schedules x 6 runs: detection would take optim.schedule as the arm axis (as in
    # test_report_builds_every_figure) and fit L(N, D) on the 6 baseline runs only
    root = make_sweep(tmp_path / "sweep", sizes=(1e6, 2e6, 4e6), budgets=(1e14, 4e14), tasks=False)
    text = build_report(root, tmp_path / "rep", bootstrap=0, arm_axis="").read_text()
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert "Ablation" not in text and "ablation" not in summary
    assert summary["chinchilla"]["n_points"] == 12  # every run enters the scaling sections
    with pytest.raises(ValueError, match="not a sweep axis"):
        build_report(root, tmp_path / "bad", bootstrap=0, arm_axis="nope")
    parser = argparse.ArgumentParser()
    analyze_cli.add_arguments(parser)
    assert parser.parse_args([str(root), "--out", "r", "--arm-axis", ""]).arm_axis == ""
    assert parser.parse_args([str(root), "--out", "r"]).arm_axis is None


def _measured_sweep(root, sizes=(2.5e5, 5e5, 1e6, 2e6, 4e6), budgets=(1e14, 4e14), fpt_factor=1.4):
    """Returns a sweep root whose runs carry the C_budget axis and FLOPs/token = 6·fpt_factor·N (total N)."""
    from analysis.synthetic import write_run

    entries = []
    for C in budgets:
        for N in sizes:
            rid = f"c{C:.0e}-n{N:.0e}".replace("+", "")
            D = C / (6 * fpt_factor * N)
            entries.append(write_run(root / rid, run_id=rid, N=N, D=D, axes={"N_target": N, "C_budget": C},
                                     tasks=False, seed=len(entries)))
            info = json.loads((root / rid / "run.json").read_text())
            info["flops_per_token"] = 6 * fpt_factor * N
            (root / rid / "run.json").write_text(json.dumps(info))
    # one failed and one diverged run at a budget of their own: excluded unless asked for
    for rid, err in (("broken", "OSError: disk full"), ("nan", "FloatingPointError: loss is nan")):
        entries.append(write_run(root / rid, run_id=rid, N=4e6, D=1e7, axes={"N_target": 4e6, "C_budget": 9e14},
                                 tasks=False, status="failed"))
        (root / rid / "status.json").write_text(json.dumps({"status": "failed", "step": 2, "error": err}))
    (root / "manifest.json").write_text(json.dumps({"version": 1, "runs": entries}))
    return root


def test_report_uses_one_convention_excludes_failed_runs_and_groups_by_budget_axis(tmp_path, monkeypatch):
    import analysis.report as report_mod

    root = _measured_sweep(tmp_path / "sweep")
    seen = {}
    real_approach1 = report_mod.approach1

    def spy(C, loss, *a, **kw):
        seen["loss"] = np.asarray(loss, float)
        return real_approach1(C, loss, *a, **kw)

    monkeypatch.setattr(report_mod, "approach1", spy)
    text = build_report(root, tmp_path / "rep", bootstrap=0).read_text()
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    # N = non-embedding count, C = D × the run's FLOPs per token from run.json (not 6ND, not the log)
    runs = {r["run"]: r for r in s["runs"]}
    assert sorted(runs) == sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("c"))
    for r in runs.values():
        assert r["N"] == r["N_nonembed"] == pytest.approx(0.9 * r["N_total"], rel=1e-6)
        assert r["C"] == pytest.approx(r["D"] * 6 * 1.4 * r["N_total"], rel=1e-9)
    assert s["convention"]["params"] == "nonembed" and s["convention"]["compute"] == "measured"
    assert "N = non-embedding parameters" in text and "measured training FLOPs per token" in text
    k, gamma = s["flops_per_token_fit"]["coef"], s["flops_per_token_fit"]["exponent"]
    assert gamma == pytest.approx(1.0, abs=1e-6) and k == pytest.approx(6 * 1.4 / 0.9, rel=1e-4)
    assert [r["C"] for r in s["compute_optimal"]] == [1e14, 4e14]  # at the sweep's budgets
    for r in s["compute_optimal"]:
        assert k * r["N_opt"] ** gamma * r["D_opt"] == pytest.approx(r["C"], rel=1e-6)
    # failed and diverged runs are listed, not fitted
    assert s["chinchilla"]["n_points"] == 10
    excluded = {r["run"]: r for r in s["runs_excluded"]}
    assert set(excluded) == {"broken", "nan"} and excluded["nan"]["state"] == "diverged"
    assert "Excluded from every fit (2 runs" in text and "OSError: disk full" in text
    # IsoFLOP budgets from the C_budget axis; approach 1 on validation loss at checkpoints
    assert s["approach2"]["grouping"] == ["axis"] and s["approach2"]["budgets_total"] == 2
    assert "Budgets: the sweep's `C_budget` axis" in text
    df = load_runs(root)
    val = df[(df["metric"] == "val/loss") & df["run_id"].isin(list(runs))]["value"].to_numpy()
    assert sorted(seen["loss"]) == pytest.approx(sorted(val))

    # asked for: total N, C = 6ND, every run included
    build_report(root, tmp_path / "rep6", bootstrap=0, params="total", compute="6ND", include_incomplete=True)
    s6 = json.loads((tmp_path / "rep6" / "summary.json").read_text())
    assert s6["runs_excluded"] == [] and len(s6["runs"]) == 12
    for r in s6["runs"]:
        assert r["N"] == r["N_total"] and r["C"] == pytest.approx(6 * r["N"] * r["D"], rel=1e-9)
    for r in s6["compute_optimal"]:
        assert 6 * r["N_opt"] * r["D_opt"] == pytest.approx(r["C"], rel=1e-6)
    assert "6·N·D" in (tmp_path / "rep6" / "report.md").read_text()


def test_report_does_not_turn_an_error_into_a_skipped_section(tmp_path, monkeypatch):
    import analysis.report as report_mod

    root = make_sweep(tmp_path / "sweep", sizes=(1e6, 2e6, 4e6), budgets=(1e14, 4e14), tasks=False, arms=("a",),
                      arm_scale=(1.0,))

    def broken(*a, **kw):
        raise ValueError("a bug, not a data shortage")

    monkeypatch.setattr(report_mod, "approach2", broken)
    with pytest.raises(ValueError, match="a bug"):
        build_report(root, tmp_path / "rep", bootstrap=0)


def test_continuous_emergence_with_too_little_data_is_a_skipped_section(tmp_path, monkeypatch):
    import analysis.report as report_mod
    from analysis.errors import InsufficientData

    root = make_sweep(tmp_path / "sweep", sizes=(1e6, 2e6, 4e6, 8e6), budgets=(1e14,), arms=("a",),
                      arm_scale=(1.0,))

    def short(*a, **kw):  # what the fitter raises when non-finite log-probs leave too few sizes
        raise InsufficientData("power-n: 3 distinct input points")

    monkeypatch.setattr(report_mod, "discrete_vs_continuous", short)
    text = build_report(root, tmp_path / "rep", bootstrap=0).read_text()
    assert "| Emergence (continuous): addition | power-n: 3 distinct input points" in text
    assert "addition: continuous metric not fitted" in text


def test_cli_analyze_passes_the_convention_and_run_selection_flags(tmp_path, monkeypatch):
    import analysis.report as report_mod

    seen = {}

    def fake(roots, out, **kw):
        seen.update(kw)
        return tmp_path / "report.md"

    monkeypatch.setattr(report_mod, "build_report", fake)
    (tmp_path / "sweep").mkdir()
    assert analyze_cli.main(["scaling analyze", str(tmp_path / "sweep"), "--out", str(tmp_path / "r")]) == 0
    assert (seen["params"], seen["compute"], seen["include_incomplete"], seen["budget_axis"]) == \
        ("nonembed", "measured", False, "C_budget")
    assert analyze_cli.main(["scaling analyze", str(tmp_path / "sweep"), "--out", str(tmp_path / "r"),
                             "--params", "total", "--compute", "6ND", "--include-incomplete",
                             "--budget-axis", "train.flops_budget"]) == 0
    assert (seen["params"], seen["compute"], seen["include_incomplete"], seen["budget_axis"]) == \
        ("total", "6ND", True, "train.flops_budget")
    with pytest.raises(SystemExit):
        analyze_cli.main(["scaling analyze", str(tmp_path / "sweep"), "--out", "r", "--compute", "5ND"])
    with pytest.raises(ValueError, match="compute"):
        build_report(tmp_path / "sweep", tmp_path / "bad", compute="5ND")
