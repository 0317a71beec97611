"""`scaling experiment`: every experiment at --scale=tiny end to end, and interrupt -> resume.

* `--list` names every experiment with a description and runtime;
* every scale of every experiment expands into valid runs (nothing trained);
* quickstart, sparse_parity, regularization and augmentation run at the tiny scale (a handful of
  very short runs each, in worker subprocesses) and write their report with all their figures;
  sparse_parity's frequency-weighted cross-entropy equals a recomputation from eval.jsonl, its
  CE fits and figure panels exist, and runs without per-subtask CE skip the CE fits with a note;
* grokking (tiny) is interrupted with SIGINT while its first run trains: the command exits 3 and
  the run keeps a checkpoint; the same command again resumes that run from its checkpoint, trains
  the rest and writes the report; a third invocation trains nothing.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import experiments
from analysis import spikes
from experiments import common, targets
from scaling.cli import experiment as cli
from scaling.sweeps import spec
from tests.conftest import REPO_ROOT


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _check_report(root: pathlib.Path, module) -> dict:
    out = root / common.REPORT_DIR
    for name in ("experiment.md", "experiment.json", "report.md", "report.html"):
        assert (out / name).is_file(), f"{module.NAME}: {name} missing"
    for stem in module.FIGURES:
        for ext in ("png", "pdf"):
            path = out / "figures" / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, f"{module.NAME}: {path} missing"
    summary = json.loads((out / "experiment.json").read_text())
    assert summary["experiment"] == module.NAME and summary["scale"] == "tiny"
    state = json.loads((root / common.STATE_FILE).read_text())
    assert state["status"] == "completed", state
    return summary


def test_list_names_every_experiment(capsys):
    assert cli.main(["scaling experiment", "--list"]) == 0
    text = capsys.readouterr().out
    for module in experiments.all_experiments():
        assert module.NAME in text and module.DESCRIPTION in text
        assert module.EXPECTED_RUNTIME[common.DEFAULT_SCALE] in text


@pytest.mark.parametrize("name", experiments.NAMES)
def test_every_scale_expands(name):
    module = experiments.get(name)
    for scale in common.SCALES:
        for sweep in module.sweeps(scale, tfds_name="stdlib_corpus").values():
            runs = spec.expand(sweep)
            assert runs, (name, scale)
            if scale in ("tiny", "small"):
                assert all(r.config.train.eval_at_checkpoints for r in runs)


def test_quickstart_small_dry_run_trains_four_sizes_per_budget_in_its_window(capsys):
    assert cli.main(["scaling experiment", "quickstart", "--dry_run"]) == 0
    out = capsys.readouterr().out
    qs = experiments.get("quickstart")
    isoflop = spec.expand(qs.sweeps("small")["isoflop"])
    lo, hi = qs.settings("small")["window"]
    assert f"== isoflop: {len(isoflop)} runs" in out
    per_budget: dict[float, set] = {}
    for r in isoflop:
        per_budget.setdefault(r.budget, set()).add(r.n)
        assert lo <= r.d / r.n <= hi
    assert all(len(ns) == 4 for ns in per_budget.values()) and len(per_budget) == 3
    budgets = sorted(per_budget)
    assert [min(per_budget[b]) for b in budgets] == sorted(min(per_budget[b]) for b in budgets)
    # every size left out of a budget is named, once
    skipped = [line for line in out.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == len(set(skipped)) == 3 * 6 - 12
    assert all(f"outside isoflop_window=[{lo:g}, {hi:g}]" in line for line in skipped)


def test_large_lm_scale_asks_for_a_corpus():
    with pytest.raises(common.ExperimentError, match="tfds_name"):
        experiments.get("quickstart").sweeps("large")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "sparse_parity", "regularization",
                                  "augmentation"])
def test_tiny_experiment_writes_its_report(name, tmp_path, stdlib_tiny_data_dir):
    module = experiments.get(name)
    root = tmp_path / name
    argv = ["scaling experiment", name, "--root", str(root), "--scale", "tiny",
            "--tfds_data_dir", str(stdlib_tiny_data_dir), "--noprogress"]
    assert cli.main(argv) == 0
    summary = _check_report(root, module)
    sweeps = module.sweeps("tiny", str(stdlib_tiny_data_dir), **({"root": root} if name == "quickstart" else {}))
    for sweep_name, sweep in sweeps.items():
        for run_dir in common.run_dirs(root / sweep_name):
            assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
            # every checkpoint is evaluated
            assert set(common.checkpoint_steps(run_dir)) <= common.evaluated_steps(run_dir)
        expected = len(spec.expand(sweep))
        trained = len(common.run_dirs(root / sweep_name))
        # a tuning stage adds LR grid points beyond an edge optimum (at most max_extend per side)
        extra = 2 * sweep.tune.max_extend * len(sweep.sizes) if sweep.tune.enabled else 0
        assert expected <= trained <= expected + extra, sweep_name
    assert summary["figures"]
    assert summary["status"] == "completed" and summary["figures_missing"] == []
    if name == "quickstart":
        _check_quickstart_agrees_with_generic_report(root, summary)
        _check_quickstart_tuning(root, summary)
    if name == "sparse_parity":
        _check_sparse_parity_ce(root, module, summary, tmp_path)


def _check_quickstart_tuning(root: pathlib.Path, summary: dict) -> None:
    """The tuning stage trained each size's LR grid as one population, wrote tuned.json, and every
    IsoFLOP run (both seeds, each pair one population) trained at its size's tuned optimum."""
    tuned = json.loads((root / "tune" / "tuned.json").read_text())
    lr_of = {row["N"]: row["lr_opt"] for row in tuned["sizes"]}
    assert len(lr_of) == 2 and all(v is not None and v > 0 for v in lr_of.values())
    assert [r["N"] for r in summary["tuning"]["sizes"]] == [r["N"] for r in tuned["sizes"]]
    assert summary["tuning"]["runs"] == len(common.run_dirs(root / "tune"))
    seeds: dict[int, set] = {}
    for run_dir in common.run_dirs(root / "isoflop"):
        info = json.loads((run_dir / "run.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        assert config["optim"]["lr"] == pytest.approx(lr_of[info["n_params_nonembed"]], rel=1e-12)
        seeds.setdefault(info["n_params_nonembed"], set()).add(config["seed"])
    assert all(s == {0, 1} for s in seeds.values()) and len(seeds) == 2
    for stage in ("tune", "isoflop"):  # the runner grouped runs of one shape and length
        logs = [p.read_text() for d in common.run_dirs(root / stage) for p in d.glob("*.log")]
        assert any("trained in a population of" in text for text in logs), stage
    assert "Tuning stage" in (root / common.REPORT_DIR / "experiment.md").read_text()
    # the realised throughput: Σ FLOPs of every run's run.json over the recorded training time
    tp = summary["throughput"]
    runs = [json.loads((d / "run.json").read_text()) for stage in ("tune", "isoflop")
            for d in common.run_dirs(root / stage)]
    assert tp["runs"] == len(runs)
    assert tp["flops"] == pytest.approx(sum(r["flops_per_token"] * r["tokens_per_step"]
                                            * r["num_steps"] for r in runs), rel=1e-12)
    state = json.loads((root / common.STATE_FILE).read_text())
    assert tp["train_s"] == pytest.approx(state["invocations"][-1]["timings"]["train_s"])
    assert tp["flops_per_s"] == pytest.approx(tp["flops"] / tp["train_s"])
    assert f"{tp['flops_per_s'] / 1e9:.1f} GFLOP/s" in (
        root / common.REPORT_DIR / "experiment.md").read_text()


def _check_quickstart_agrees_with_generic_report(root: pathlib.Path, summary: dict) -> None:
    """experiment.json/md and the generic report in the same report/ share one set of numbers."""
    out = root / common.REPORT_DIR
    gen = json.loads((out / "summary.json").read_text())
    assert summary["convention"] == gen["convention"] and summary["convention"]["params"] == "nonembed"
    gruns = {r["run"]: r for r in gen["runs"]}
    infos = [json.loads((d / "run.json").read_text()) for d in common.run_dirs(root / "isoflop")]
    infos = {i["name"]: i for i in infos}
    assert len(summary["runs"]) == len(gruns) == len(infos) == 8  # 2 sizes x 2 budgets x 2 seeds
    for r in summary["runs"]:
        g = gruns[r["run"]]
        assert (r["N"], r["D"], r["C"], r["val_loss"], r["budget"]) == (g["N"], g["D"], g["C"], g["loss"],
                                                                         g["budget"])
        # N is the non-embedding count and C = D x the run's own FLOPs per token (run.json)
        assert r["N"] == infos[r["run"]]["n_params_nonembed"]
        assert r["C"] == pytest.approx(r["D"] * infos[r["run"]]["flops_per_token"], rel=1e-12)
    for key in ("chinchilla", "approach2"):
        assert (key in summary) == (key in gen)
    if "chinchilla" in gen:
        assert summary["compute_optimal"] == gen["compute_optimal"]
    md, rep = (out / "experiment.md").read_text(), (out / "report.md").read_text()
    for r in summary["runs"]:
        for v in (r["N"], r["D"], r["C"], r["val_loss"]):
            assert format(v, ".4g") in md and format(v, ".4g") in rep, (r["run"], v)
    # every target is marked, in experiment.json and experiment.md; the spike mark is the run files'
    assert set(summary["targets"]) == set(targets.DESCRIPTIONS)
    assert all(isinstance(t["met"], bool) for t in summary["targets"].values())
    worst = max(max(s["train"].max_rise, s["val"].max_rise)
                for s in (spikes.run_spikes(d) for d in common.run_dirs(root / "isoflop")))
    assert summary["targets"]["no_spikes"]["value"] == pytest.approx(worst, rel=1e-12)
    assert md.count(" | ✓ |") + md.count(" | ✗ |") == len(targets.DESCRIPTIONS)


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    """Returns (width, height) in pixels from a PNG's IHDR chunk."""
    return struct.unpack(">II", path.read_bytes()[16:24])


def _last_subtask_logprob(run_dir: pathlib.Path, task: str) -> tuple[int, dict[int, float]]:
    """Returns (last evaluated step, {subtask: answer_logprob at it}) read from eval.jsonl."""
    rows = [json.loads(x) for x in (run_dir / "eval.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["metric"].startswith(f"{task}/subtask_")
            and r["metric"].endswith("/answer_logprob")]
    step = max(r["step"] for r in rows)
    return step, {int(r["metric"].split("/")[1].removeprefix("subtask_")): r["value"]
                  for r in rows if r["step"] == step}


def _check_sparse_parity_ce(root: pathlib.Path, module, summary: dict,
                            tmp_path: pathlib.Path) -> None:
    """The cross-entropy results of a tiny sparse_parity run: present, finite, recomputable."""
    s = module.settings("tiny")
    p = module.frequencies(s["n_tasks"], s["alpha"])
    assert summary["ce_available"] is True
    by_name = {r["run"]: r for r in summary["width_runs"] + summary["data_runs"]}
    assert len(by_name) == len(summary["width_runs"]) + len(summary["data_runs"]) >= 4
    for r in by_name.values():
        assert all(math.isfinite(r[k]) for k in ("ce", "ce_floor", "ce_excess")), r
        assert r["ce_floor"] >= 0.0 and r["ce_excess"] >= 0.0
        assert r["ce"] == pytest.approx(r["ce_floor"] + r["ce_excess"], rel=1e-9)
        assert r["n_learned"] > 0 or r["ce_floor"] == 0.0
    # L_CE = Σ p_i·(−answer_logprob_i), recomputed from the rows the evaluator wrote
    for sweep in ("width", "data"):
        for run_dir in common.run_dirs(root / sweep):
            step, lp = _last_subtask_logprob(run_dir, module.TASK)
            assert sorted(lp) == list(range(s["n_tasks"]))
            ce = float(sum(p[i] * -v for i, v in lp.items()) / p[sorted(lp)].sum())
            row = by_name[run_dir.name]
            assert row["step"] == step
            assert row["ce"] == pytest.approx(ce, rel=1e-9)
    for key, theory in (("N", "alpha_N"), ("D", "alpha_D")):
        f = summary["fits"][key]
        assert math.isfinite(f["ce_plain"]["exponent"])
        assert math.isfinite(f["ce_total_plain"]["exponent"])
        assert "a" in f["ce_finite_T"] and len(f["ce_finite_T"]["ci"]) == 2
        v = summary["exponents"][theory]
        assert v["ce_plain"] == f["ce_plain"]["exponent"]
        for k in ("ce_plain_ci", "ce_plain_within_ci", "ce_finite_T", "ce_finite_T_ci",
                  "ce_finite_T_within_ci"):
            assert k in v
        # the weighted-error results are still there
        assert math.isfinite(v["plain"]) and "finite_T_within_ci" in v
    curve = summary["widest_run_ce"]
    assert curve["step"] and len(curve["step"]) == len(curve["ce"])
    assert all(0.0 < c < 5.0 for c in curve["ce"])
    text = (root / common.REPORT_DIR / "experiment.md").read_text()
    assert "held-out cross-entropy" in text and "ce_excess" in text
    figs = root / common.REPORT_DIR / "figures"
    w, h = _png_size(figs / "sparse_parity_scaling.png")
    assert h > 0.6 * w, "the scaling figure should have an error row and a cross-entropy row"
    w, h = _png_size(figs / "sparse_parity_subtasks.png")
    assert w > 3 * h, "the subtasks figure should have a cross-entropy panel"

    # runs evaluated before per-subtask answer_logprob existed: CE fits skipped with a note
    old = tmp_path / "old_runs"
    for sweep in ("width", "data"):
        shutil.copytree(root / sweep / "runs", old / sweep / "runs")
        for ev in (old / sweep / "runs").glob("*/eval.jsonl"):
            keep = [x for x in ev.read_text().splitlines()
                    if not ("/subtask_" in x and "/answer_logprob" in json.loads(x)["metric"])]
            ev.write_text("\n".join(keep) + "\n")
    out = module.analyze(old, tmp_path / "old_report", "tiny", 0)
    assert out["ce_available"] is False
    assert out["fits"]["N"]["ce_plain"] is None and out["exponents"]["alpha_D"]["ce_plain"] is None
    assert all(np.isnan(r["ce"]) for r in out["width_runs"] + out["data_runs"])
    assert any("answer_logprob" in n and "skipped" in n for n in out["notes"])
    assert math.isfinite(out["exponents"]["alpha_N"]["plain"])
    assert (tmp_path / "old_report" / "figures" / "sparse_parity_scaling.png").is_file()


@pytest.mark.slow
def test_interrupted_experiment_resumes(tmp_path):
    module = experiments.get("grokking")
    root = tmp_path / "grokking"
    cmd = [sys.executable, "-m", "scaling.cli", "experiment", "grokking", "--root", str(root),
           "--scale", "tiny", "--workers", "1", "--noprogress"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sweep_root = root / "grid"
    target = None
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None and target is None:
            for run_dir in common.run_dirs(sweep_root):
                status = json.loads((run_dir / "status.json").read_text())["status"] \
                    if (run_dir / "status.json").exists() else "pending"
                if status == "running" and common.checkpoint_steps(run_dir):
                    target = run_dir
                    break
            time.sleep(0.05)
        assert target is not None, "no run reached its first checkpoint"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == cli.EXIT_INTERRUPTED, out
    state = json.loads((root / common.STATE_FILE).read_text())
    assert state["status"] == "interrupted"
    status = json.loads((target / "status.json").read_text())
    assert status["status"] == "interrupted", status
    stopped_at = max(common.checkpoint_steps(target))
    assert 0 < stopped_at < 120

    # the same command again: resumes the interrupted run, trains the rest, writes the report
    done = subprocess.run(cmd, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    log_text = (target / "train.log").read_text()
    assert f"resuming from checkpoint at step {stopped_at}" in log_text
    steps = [json.loads(line)["step"] for line in (target / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 120
    summary = _check_report(root, module)
    assert len(summary["runs"]) == 2
    for run_dir in common.run_dirs(sweep_root):
        assert set(common.checkpoint_steps(run_dir)) <= common.evaluated_steps(run_dir)

    # a third time: nothing left to train
    before = {p: p.stat().st_mtime_ns for p in sweep_root.rglob("checkpoints/*")}
    again = subprocess.run(cmd, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in sweep_root.rglob("checkpoints/*")} == before


def test_sparse_parity_ce_terms():
    """L_CE = Σ p_i·CE_i splits into the learned floor and the excess over it (nats)."""
    from experiments import sparse_parity as sp

    p = np.array([0.5, 0.3, 0.2])
    ce = np.array([0.01, math.log(2), 0.9])
    acc = np.array([1.0, 0.5, 0.4])
    t = sp.ce_terms(ce, acc, p)
    assert t["ce"] == pytest.approx(0.5 * 0.01 + 0.3 * math.log(2) + 0.2 * 0.9)
    assert t["ce_floor"] == pytest.approx(0.5 * 0.01)
    assert t["ce_excess"] == pytest.approx(0.3 * math.log(2) + 0.2 * 0.9)
    # a subtask without CE drops out and p is renormalised over the rest
    t = sp.ce_terms(np.array([0.01, np.nan, 0.9]), acc, p)
    assert t["ce"] == pytest.approx((0.5 * 0.01 + 0.2 * 0.9) / 0.7)
    assert t["ce"] == pytest.approx(sp.weighted_ce(np.array([0.01, np.nan, 0.9]), p))
    assert all(math.isnan(v) for v in sp.ce_terms(np.full(3, np.nan), acc, p).values())


def test_root_of_another_experiment_is_refused(tmp_path):
    root = tmp_path / "r"
    common.write_json(root / common.STATE_FILE, {"experiment": "grokking", "scale": "tiny"})
    rc = cli.main(["scaling experiment", "sparse_parity", "--root", str(root), "--scale", "tiny",
                   "--noprogress"])
    assert rc == cli.EXIT_USAGE
