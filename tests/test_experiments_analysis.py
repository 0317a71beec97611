"""Study analysis without training: loud failures in `experiments.common`, and one set of numbers
shared by quickstart's experiment.md/json and the generic report (synthetic run directories)."""

from __future__ import annotations

import json
import math
import types

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from analysis.errors import InsufficientData  # noqa: E402
from analysis.synthetic import write_run  # noqa: E402
from experiments import common, quickstart, targets  # noqa: E402


def test_figure_propagates_errors_and_draws_nothing_for_a_data_shortage(tmp_path):
    notes: list[str] = []

    def bug():
        plt.subplots()
        raise TypeError("a bug in the drawing code")

    with pytest.raises(TypeError, match="a bug"):
        common.figure(tmp_path, "broken", bug, notes)
    assert not (tmp_path / "figures" / "broken.png").exists() and notes == []

    def short():
        raise InsufficientData("no runs with val/loss")

    assert common.figure(tmp_path, "short", short, notes) is None
    assert not (tmp_path / "figures" / "short.png").exists()  # no placeholder
    assert notes == ["figure short: not drawn (no runs with val/loss)"]

    def ok():
        fig, ax = plt.subplots()
        ax.plot([1, 2], [3, 4])
        return fig

    assert common.figure(tmp_path, "ok", ok, notes) == "figures/ok.png"
    assert (tmp_path / "figures" / "ok.pdf").stat().st_size > 0


def test_fit_or_none_only_catches_data_shortages(tmp_path):
    notes: list[str] = []
    for err in (KeyError("N_nonembed"), IndexError("list index out of range"), ValueError("bad shape")):
        def fn(err=err):
            raise err
        with pytest.raises(type(err)):
            common.fit_or_none(fn, "fit", notes)
    assert notes == []

    def short():
        raise InsufficientData("3 points for 5 parameters")

    assert common.fit_or_none(short, "Chinchilla fit", notes) is None
    assert notes == ["Chinchilla fit: not fitted (InsufficientData: 3 points for 5 parameters)"]

    def no_converge():
        raise RuntimeError("no start converged")

    assert common.fit_or_none(no_converge, "finite-T fit", notes, expected=(RuntimeError,)) is None
    assert "no start converged" in notes[-1]


def test_generic_report_does_not_swallow_errors(tmp_path, monkeypatch):
    import analysis.report

    def broken(*a, **kw):
        raise KeyError("N")

    monkeypatch.setattr(analysis.report, "build_report", broken)
    (tmp_path / "sweep").mkdir()
    with pytest.raises(KeyError):
        common.generic_report([tmp_path / "sweep"], tmp_path / "out", 0, "t", [])


def _fake_experiment(analyze):
    return types.SimpleNamespace(NAME="fake", FIGURES=("fig_a", "fig_b"), sweeps=lambda scale, **kw: {},
                                 analyze=analyze)


def test_study_status_is_not_completed_when_a_figure_or_the_analysis_fails(tmp_path):
    def partial(root, out_dir, scale, bootstrap):
        return {"experiment": "fake", "figures": {"fig_a": "figures/fig_a.png", "fig_b": None}}

    res = common.run_experiment(_fake_experiment(partial), tmp_path / "a", "tiny", analyze_only=True)
    assert res["status"] == "incomplete" and res["summary"]["figures_missing"] == ["fig_b"]
    state = json.loads((tmp_path / "a" / common.STATE_FILE).read_text())
    assert state["status"] == "incomplete"

    def complete(root, out_dir, scale, bootstrap):
        return {"experiment": "fake", "figures": {"fig_a": "a.png", "fig_b": "b.png"}}

    assert common.run_experiment(_fake_experiment(complete), tmp_path / "b", "tiny",
                                 analyze_only=True)["status"] == "completed"

    def crash(root, out_dir, scale, bootstrap):
        raise ZeroDivisionError("bug in the analysis")

    with pytest.raises(ZeroDivisionError):
        common.run_experiment(_fake_experiment(crash), tmp_path / "c", "tiny", analyze_only=True)
    assert json.loads((tmp_path / "c" / common.STATE_FILE).read_text())["status"] == "failed"


def _quickstart_root(root, sizes=(2.5e5, 5e5, 1e6, 2e6, 4e6), budgets=(1e14, 4e14)):
    """Returns a study root whose isoflop/ sweep looks like quickstart's (C_budget axis, measured
    FLOPs/token ≠ 6N, recall exact match at every checkpoint) plus one failed run."""
    sweep = root / "isoflop"
    entries = []
    for C in budgets:
        for N in sizes:
            rid = f"c{C:.0e}-n{N:.0e}".replace("+", "")
            fpt = 9.0 * N
            entries.append(write_run(sweep / rid, run_id=rid, N=N, D=C / fpt, tasks=False, seed=len(entries),
                                     axes={"N_target": N, "C_budget": C}))
            info = json.loads((sweep / rid / "run.json").read_text())
            info["flops_per_token"] = fpt
            (sweep / rid / "run.json").write_text(json.dumps(info))
            rows = [json.loads(x) for x in (sweep / rid / "eval.jsonl").read_text().splitlines()]
            extra = [dict(r, metric="associative_recall/exact_match",
                          value=min(1.0, 0.05 + 0.1 * math.log10(r["tokens"] * N / 1e9 + 1)))
                     for r in rows if r["metric"] == "val/loss"]
            with open(sweep / rid / "eval.jsonl", "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in extra)
    entries.append(write_run(sweep / "dead", run_id="dead", N=8e6, D=1e6, tasks=False, status="failed",
                             axes={"N_target": 8e6, "C_budget": 4e14}))
    (sweep / "manifest.json").write_text(json.dumps({"version": 1, "runs": entries}))
    return root


def test_quickstart_and_the_generic_report_share_one_set_of_numbers(tmp_path):
    root = _quickstart_root(tmp_path / "study")
    out = tmp_path / "study" / "report"
    qs = quickstart.analyze(root, out, "tiny", 4)
    gen = json.loads((out / "summary.json").read_text())
    # this root has no tuning stage: its figure is missing and the report says why
    assert all(qs["figures"][f] for f in quickstart.FIGURES if f != "qs_lr_tuning"), qs["notes"]
    assert qs["figures"]["qs_lr_tuning"] is None and "tuning" not in qs
    assert any("tune/tuned.json not written" in n for n in qs["notes"])
    # same runs (the failed one in neither), same N (non-embedding), D, C, final loss
    gruns = {r["run"]: r for r in gen["runs"]}
    assert set(gruns) == {r["run"] for r in qs["runs"]} and len(gruns) == 10 and "dead" not in gruns
    for r in qs["runs"]:
        g = gruns[r["run"]]
        assert (r["N"], r["D"], r["C"], r["val_loss"], r["budget"]) == (g["N"], g["D"], g["C"], g["loss"], g["budget"])
        assert r["N"] == g["N_nonembed"] and r["C"] == pytest.approx(r["D"] * 9.0 * g["N_total"], rel=1e-12)
    assert [r["run"] for r in qs["runs_excluded"]] == ["dead"] == [r["run"] for r in gen["runs_excluded"]]
    # the L(N, D) fit, FLOPs per token, compute-optimal allocation and approach 2: the same numbers
    assert qs["chinchilla"]["params"] == gen["chinchilla"]["params"]
    assert qs["chinchilla"]["ci"] == gen["chinchilla"]["ci"]
    assert qs["flops_per_token_fit"] == gen["flops_per_token_fit"]
    assert qs["compute_optimal"] == gen["compute_optimal"]
    assert [r["C"] for r in qs["compute_optimal"]] == [1e14, 4e14]
    assert qs["approach2"] == gen["approach2"] and gen["approach2"]["budgets_kept"] == 2
    assert qs["convention"] == gen["convention"]
    # and the two Markdown files print them alike: every run row of experiment.md is in report.md
    md, rep = (out / "experiment.md").read_text(), (out / "report.md").read_text()
    for r in qs["runs"]:
        cells = [format(v, ".4g") for v in (r["N"], r["D"], r["C"], r["val_loss"])]
        assert all(c in md for c in cells) and all(c in rep for c in cells), r["run"]
    assert qs["convention"]["text"] in md and qs["convention"]["text"] in rep
    assert "6ND" not in md and "6·N·D" not in md
    # the targets block: marks computed from the same numbers, printed in experiment.md
    t = qs["targets"]
    assert set(t) == set(targets.DESCRIPTIONS) and all(isinstance(v["met"], bool) for v in t.values())
    assert t["approach2_a"]["value"] == gen["approach2"]["N_opt"]["a"]
    assert t["approach3_alpha"]["value"] == gen["chinchilla"]["params"]["alpha"]
    assert t["approach3_alpha"]["ci"] == gen["chinchilla"]["ci"]["alpha"]
    assert t["interior_minima"]["value"].endswith("/2") and t["no_spikes"]["runs"] == 10
    assert "## Targets" in md
    for row in targets.table_rows(t):
        assert f"| {row['target']} | {row['measured']} | {row['met']} |" in md
