"""True records: an honest resume, evaluations that survive a kill, status.json on every exit."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from scaling import checkpoint as ckpt_lib
from scaling.train import loop
from scaling.train import setup as setup_lib
from tests.conftest import REPO_ROOT
from tests.test_train_divergence import small_config

RUN_FILES = ("config.json", "run.json", "status.json", "metrics.jsonl")


def _snapshot(workdir: pathlib.Path) -> dict[str, tuple[bytes, int]]:
    files = {name: workdir / name for name in RUN_FILES}
    files.update({str(p.relative_to(workdir)): p for p in (workdir / "checkpoints").rglob("*")
                  if p.is_file()})
    return {name: (p.read_bytes(), p.stat().st_mtime_ns) for name, p in files.items()}


@pytest.fixture
def interrupted_run(tmp_path, stdlib_tiny_data_dir):
    """A 12-step run stopped after step 4 (checkpoints 1, 2, 4)."""
    config = small_config(stdlib_tiny_data_dir)
    summary = loop.train(config, tmp_path, stop_after=4)
    assert summary["status"] == "interrupted"
    return tmp_path, stdlib_tiny_data_dir


def test_resume_refuses_a_changed_run_and_touches_nothing(interrupted_run):
    workdir, data_dir = interrupted_run
    before = _snapshot(workdir)
    changed = small_config(data_dir, **{"optim.lr": 1e-3, "train.num_steps": 20,
                                        "model.d_model": 64, "train.log_every": 1})
    with pytest.raises(ckpt_lib.ResumeError) as info:
        loop.train(changed, workdir)
    assert info.value.fields == ["model.d_model", "optim.lr", "train.num_steps"]
    assert "optim.lr: 0.01 → 0.001" in str(info.value)
    assert "train.num_steps: 12 → 20" in str(info.value)
    assert len(str(info.value).splitlines()) <= 8  # the reason, not a buried traceback
    assert _snapshot(workdir) == before  # config.json, run.json, status, logs and checkpoints


def test_resume_with_an_allowed_change_continues(interrupted_run):
    workdir, data_dir = interrupted_run
    run_before = json.loads((workdir / "run.json").read_text())
    summary = loop.train(small_config(data_dir, **{"train.log_every": 1}), workdir)
    assert summary["status"] == "completed" and summary["step"] == 12
    run = json.loads((workdir / "run.json").read_text())
    assert run["num_steps"] == run_before["num_steps"] == 12
    assert json.loads((workdir / "config.json").read_text())["train"]["log_every"] == 1
    steps = [json.loads(line)["step"] for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 4] + list(range(5, 13))  # log_every=5 before, 1 after the resume


KILLED_IN_EVALUATION = """
import os, pathlib, signal, sys
import optax
from scaling.train import loop
from tests.test_train_divergence import small_config

def evaluator(params, step, run):
    if step == 8:  # the checkpoint at 8 is saved; its evaluation is never written
        os.kill(os.getpid(), signal.SIGKILL)
    return [{"step": step, "metric": "fake/param_norm", "value": float(optax.tree.norm(params))}]

# synchronous saves: checkpoint 8 is committed when its evaluation starts (an async commit may
# land before or after the kill)
config = small_config(pathlib.Path(sys.argv[1]), **{"train.eval_at_checkpoints": True,
                                                    "checkpoint.async_save": False})
loop.train(config, sys.argv[2], evaluator=evaluator)
"""


def test_kill_between_save_and_evaluation_is_evaluated_on_resume(tmp_path, stdlib_tiny_data_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_EVALUATION, str(stdlib_tiny_data_dir),
                           str(tmp_path)], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    eval_path = tmp_path / "eval.jsonl"
    rows = [json.loads(line) for line in eval_path.read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [1, 2, 4]
    assert (tmp_path / "checkpoints" / "8").is_dir()

    evaluated: list[int] = []
    def recording(params, step, run):
        evaluated.append(step)
        return [{"step": step, "metric": "val/loss", "value": 1.0}]

    config = small_config(stdlib_tiny_data_dir, **{"train.eval_at_checkpoints": True})
    summary = loop.train(config, tmp_path, evaluator=recording)
    assert summary["status"] == "completed"
    assert evaluated == [8, 12]  # step 8 before training went on, then the final checkpoint
    rows = [json.loads(line) for line in eval_path.read_text().splitlines()]
    assert [(r["step"], r["metric"]) for r in rows] == [
        (1, "fake/param_norm"), (2, "fake/param_norm"), (4, "fake/param_norm"),
        (8, "val/loss"), (12, "val/loss")]


def test_run_directory_write_failure_marks_the_run_failed(interrupted_run):
    workdir, data_dir = interrupted_run
    (workdir / "run.json.tmp").mkdir()  # writing run.json fails
    with pytest.raises(OSError):
        loop.train(small_config(data_dir), workdir)
    status = json.loads((workdir / "status.json").read_text())
    assert status["status"] == "failed" and "run.json.tmp" in status["error"]
    assert status["step"] == 4


def test_sigterm_during_setup_ends_interrupted(tmp_path, stdlib_tiny_data_dir, monkeypatch):
    original = setup_lib.build

    def build_then_sigterm(*args, **kwargs):
        trainer = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # preemption before the first step
        return trainer

    monkeypatch.setattr(setup_lib, "build", build_then_sigterm)
    summary = loop.train(small_config(stdlib_tiny_data_dir), tmp_path)
    assert summary["status"] == "interrupted" and summary["step"] == 0
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == 0
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))
