"""`scaling experiment`: every experiment at --scale=tiny end to end, and interrupt -> resume.

* `--list` names every experiment with a description and runtime;
* every scale of every experiment expands into valid runs (nothing trained);
* quickstart, sparse_parity, regularization and augmentation run at the tiny scale (a handful of
  very short runs each, in worker subprocesses) and write their report with all their figures;
* grokking (tiny) is interrupted with SIGINT while its first run trains: the command exits 3 and
  the run keeps a checkpoint; the same command again resumes that run from its checkpoint, trains
  the rest and writes the report; a third invocation trains nothing.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import experiments
from experiments import common
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
    runs = [r for s in module.sweeps("tiny", str(stdlib_tiny_data_dir)).values()
            for r in spec.expand(s)]
    for sweep_name in module.sweeps("tiny"):
        for run_dir in common.run_dirs(root / sweep_name):
            assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
            # every checkpoint is evaluated
            assert set(common.checkpoint_steps(run_dir)) <= common.evaluated_steps(run_dir)
    assert len(runs) == sum(len(common.run_dirs(root / s)) for s in module.sweeps("tiny"))
    assert summary["figures"]


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


def test_root_of_another_experiment_is_refused(tmp_path):
    root = tmp_path / "r"
    common.write_json(root / common.STATE_FILE, {"experiment": "grokking", "scale": "tiny"})
    rc = cli.main(["scaling experiment", "sparse_parity", "--root", str(root), "--scale", "tiny",
                   "--noprogress"])
    assert rc == cli.EXIT_USAGE
