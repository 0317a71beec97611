"""Interruption: SIGKILL mid-run then restart equals an uninterrupted run bit for bit (CPU);
SIGTERM saves a checkpoint and exits cleanly. Runs `scaling train` in real subprocesses."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, xla_flags

STEPS = 160
OVERRIDES = [
    "--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
    "--config.data.seq_len=32", "--config.model.max_seq_len=32", "--config.train.batch_size=4",
    f"--config.train.num_steps={STEPS}", "--config.train.log_every=1",
    "--config.checkpoint.log_max=16", "--config.checkpoint.every=40",
    "--config.train.eval_at_checkpoints=False", "--config.train.progress=False",
    "--config.model.resid_dropout=0.1",  # dropout: the RNG stream must also resume exactly
]


def _env(data_dir: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(2)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _cmd(workdir: pathlib.Path, data_dir: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "scaling.cli", "train", "--config", "configs/lm_tiny.py",
            "--workdir", str(workdir), f"--config.data.tfds_data_dir={data_dir}",
            "--config.data.tfds_name=stdlib_corpus/tiny", *OVERRIDES]


def _last_logged_step(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()
             if line.strip().endswith("}")]
    return max(steps, default=0)


def _run_until(workdir: pathlib.Path, data_dir: pathlib.Path, step: int,
               sig: signal.Signals) -> subprocess.Popen:
    proc = subprocess.Popen(_cmd(workdir, data_dir), cwd=REPO_ROOT, env=_env(data_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while _last_logged_step(workdir) < step:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "training did not reach the kill step in time"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc


def _final_params(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(STEPS) / "state"
    tree = ocp.StandardCheckpointer().restore(path.absolute())
    leaves = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}", v)
        else:
            leaves[prefix] = np.asarray(node)

    walk("", tree["params"])
    return leaves


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, stdlib_tiny_data_dir):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_cmd(workdir, stdlib_tiny_data_dir), cwd=REPO_ROOT,
                   env=_env(stdlib_tiny_data_dir), check=True, capture_output=True)
    return _final_params(workdir), workdir


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sigkill_then_restart_equals_uninterrupted(tmp_path, stdlib_tiny_data_dir, uninterrupted):
    params_ref, ref_dir = uninterrupted
    workdir = tmp_path / "killed"
    proc = _run_until(workdir, stdlib_tiny_data_dir, 50, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    status = json.loads((workdir / "status.json").read_text())
    assert status["status"] == "running"  # a kill leaves no chance to write anything else
    subprocess.run(_cmd(workdir, stdlib_tiny_data_dir), cwd=REPO_ROOT,
                   env=_env(stdlib_tiny_data_dir), check=True, capture_output=True)
    assert json.loads((workdir / "status.json").read_text())["status"] == "completed"
    _assert_same(_final_params(workdir), params_ref)
    # the metrics log has each step once, and the resumed losses equal the uninterrupted ones
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]


def test_sigterm_saves_and_exits_cleanly(tmp_path, stdlib_tiny_data_dir, uninterrupted):
    params_ref, _ = uninterrupted
    workdir = tmp_path / "terminated"
    proc = _run_until(workdir, stdlib_tiny_data_dir, 70, signal.SIGTERM)
    assert proc.returncode == 0, proc.stdout.read()
    status = json.loads((workdir / "status.json").read_text())
    assert status["status"] == "interrupted"
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == status["step"] and status["step"] >= 70
    subprocess.run(_cmd(workdir, stdlib_tiny_data_dir), cwd=REPO_ROOT,
                   env=_env(stdlib_tiny_data_dir), check=True, capture_output=True)
    _assert_same(_final_params(workdir), params_ref)
