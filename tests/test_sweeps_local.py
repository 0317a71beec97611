"""The local sweep backend end to end, with real worker subprocesses on the tiny corpus.

* a runner SIGKILLed mid-sweep and restarted: completed runs untouched, the interrupted run resumes
  from its checkpoint, the manifest keeps exactly the sweep's runs;
* a diverging run (lr=1e6 -> NaN) and a run whose data does not exist are marked failed (with
  their logs) while the other run completes; divergence is not retried, the other failure is;
* a 2-process run (jax.distributed over gloo on 127.0.0.1, one CPU device per process) logs the
  same loss curve as the 1-process run with 2 devices.
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

from scaling.sweeps import manifest as manifest_lib
from scaling.sweeps import runner, spec, testing
from tests.conftest import REPO_ROOT

# The loss curves of the 1- and 2-process runs must agree to this (absolute, nats/token). Both
# use a 2-device mesh with the same per-device batch, so only the all-reduce path differs.
MULTIPROCESS_LOSS_TOL = 1e-5


@pytest.fixture
def compile_cache(tmp_path_factory) -> str:
    """Returns a JAX compilation cache directory shared by the sweep tests of this session."""
    path = tmp_path_factory.getbasetemp() / "sweeps_compile_cache"
    path.mkdir(exist_ok=True)
    return str(path)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _write_config(path: pathlib.Path, data_dir: pathlib.Path, **kwargs) -> pathlib.Path:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    path.write_text("from scaling.sweeps.testing import tiny_sweep\n\n\ndef get_config():\n"
                    f"    return tiny_sweep({str(data_dir)!r}, {args})\n")
    return path


def _snapshot(run_dir: pathlib.Path) -> dict:
    files = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and not p.name.startswith(".lock"):
            files[str(p.relative_to(run_dir))] = (p.stat().st_mtime_ns, p.read_bytes())
    return files


def _steps(run_dir: pathlib.Path) -> list[int]:
    return [json.loads(line)["step"] for line in
            (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_killed_sweep_restarts_without_retraining(tmp_path, stdlib_tiny_data_dir, compile_cache):
    steps = 40
    cfg = _write_config(tmp_path / "sweep_cfg.py", stdlib_tiny_data_dir, name="kill",
                        steps=steps, checkpoint_every=10, log_every=5)
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "scaling.cli", "sweep", "--config", str(cfg), "--root",
           str(root), "--workers", "1", "--compile_cache_dir", compile_cache, "--noprogress"]
    runs = spec.expand(spec.load_sweep(str(cfg)))
    first, second = runner.start_order(runs)  # the larger model first: it has more FLOPs
    assert first.c > second.c
    second_dir = root / second.dir
    with open(tmp_path / "runner1.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        try:
            while not (second_dir / "checkpoints" / "10").exists():
                assert proc.poll() is None, (tmp_path / "runner1.log").read_text()
                assert time.time() < deadline, "the second run never reached step 10"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)  # the runner only; its worker dies with it
        finally:
            proc.wait(timeout=60)
    assert manifest_lib.run_status(root / first.dir)["status"] == "completed"
    # the orphaned worker got SIGTERM (parent-death signal): it saves a checkpoint and stops
    deadline = time.time() + 120
    while manifest_lib.run_status(second_dir)["status"] == "running":
        assert time.time() < deadline, "the second run's worker did not stop after the kill"
        time.sleep(0.2)
    killed = manifest_lib.run_status(second_dir)
    assert killed["status"] == "interrupted" and 10 <= killed["step"] < steps
    mid = manifest_lib.read_manifest(root)  # still valid JSON with both runs
    assert [e["id"] for e in mid["runs"]] == [r.id for r in runs]
    before = _snapshot(root / first.dir)

    restart = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                             timeout=240)
    assert restart.returncode == 0, restart.stdout + restart.stderr

    assert _snapshot(root / first.dir) == before  # not retrained: every file byte- and mtime-equal
    final = manifest_lib.read_manifest(root)
    assert [e["id"] for e in final["runs"]] == [r.id for r in runs]  # none duplicated or lost
    assert [e["status"] for e in final["runs"]] == ["completed", "completed"]
    attempts = {e["id"]: e["attempts"] for e in final["runs"]}
    assert (attempts[first.id], attempts[second.id]) == (1, 2)
    done = manifest_lib.run_status(second_dir)
    assert done["status"] == "completed" and done["step"] == steps
    log = (second_dir / "train.log").read_text()
    assert log.count("===== ") == 2 and f"resuming from checkpoint at step {killed['step']}" in log
    logged = _steps(second_dir)
    assert logged == sorted(set(logged)) and logged[-1] == steps  # resumed, nothing repeated
    assert _steps(root / first.dir)[-1] == steps
    assert not list(root.glob("*.tmp")) and not list(root.glob(".manifest.json.*"))


@pytest.mark.slow
def test_failing_runs_are_marked_failed_and_others_complete(tmp_path, stdlib_tiny_data_dir,
                                                             compile_cache):
    sweep = testing.tiny_sweep(stdlib_tiny_data_dir, name="fail", sizes=(3.4e3,))
    sweep.resources.population = 1  # each run alone (populations: the next test)
    sweep.axes = ({"optim.lr": (3e-3, 1e6, 3e-3),
                   "data.tfds_name": ("stdlib_corpus/tiny", "stdlib_corpus/tiny", "no_such_data")},)
    root = tmp_path / "root"
    result = runner.run_sweep(sweep, root, workers=2, max_retries=1,
                              compile_cache_dir=compile_cache, progress=False)
    ok, diverged, missing = result["runs"]
    assert result["status"] == "failed"
    assert result["counts"]["completed"] == 1 and result["counts"]["failed"] == 2
    assert ok["status"] == "completed" and ok["attempts"] == 1
    assert _steps(root / ok["dir"])[-1] == 20
    # divergence: train() raised FloatingPointError; not retried (it would diverge again)
    assert diverged["status"] == "failed" and diverged["attempts"] == 1
    assert diverged["error"].startswith("FloatingPointError")
    status = manifest_lib.run_status(root / diverged["dir"])
    assert status["status"] == "failed" and "FloatingPointError" in status["error"]
    assert "FloatingPointError" in (root / diverged["dir"] / "train.log").read_text()
    # a crash before training: retried once, then failed with the cause from its kept log
    assert missing["status"] == "failed" and missing["attempts"] == 2
    assert "no_such_data" in missing["error"]
    assert (root / missing["dir"] / "train.log").read_text().count("===== ") == 2
    assert manifest_lib.run_status(root / missing["dir"])["status"] == "failed"
    on_disk = manifest_lib.read_manifest(root)
    assert [e["status"] for e in on_disk["runs"]] == ["completed", "failed", "failed"]

    from scaling.cli import sweep_status

    table = sweep_status.render(sweep_status.collect(root))
    assert "completed 1" in table and "failed 2" in table and "FloatingPointError" in table


@pytest.mark.slow
def test_runner_trains_runs_of_one_shape_as_a_population(tmp_path, stdlib_tiny_data_dir,
                                                         compile_cache):
    sweep = testing.tiny_sweep(stdlib_tiny_data_dir, name="pop", sizes=(3.4e3,), steps=10)
    sweep.axes = ({"optim.lr": (3e-3, 1e6, 1e-2)},)
    sweep.resources.population = 2  # three compatible runs: a population of 2, then one alone
    root = tmp_path / "root"
    result = runner.run_sweep(sweep, root, workers=1, max_retries=1,
                              compile_cache_dir=compile_cache, progress=False)
    ok, diverged, alone = result["runs"]
    assert [r["status"] for r in result["runs"]] == ["completed", "failed", "completed"]
    # the population's log is its first member's; the other member's log points to it
    assert "population of 2" in (root / diverged["dir"] / "train.log").read_text()
    assert "population of 2 members" in (root / ok["dir"] / "train.log").read_text()
    assert "population" not in (root / alone["dir"] / "train.log").read_text()
    # the diverged member failed alone, as a divergence (not retried); its neighbour completed
    assert diverged["attempts"] == 1 and diverged["error"].startswith("FloatingPointError")
    assert ok["attempts"] == 1 and _steps(root / ok["dir"])[-1] == 10
    assert alone["attempts"] == 1 and _steps(root / alone["dir"])[-1] == 10
    # member 0 of the population logged what the same run trains alone
    solo = testing.tiny_sweep(stdlib_tiny_data_dir, name="pop", sizes=(3.4e3,), steps=10)
    solo.axes = ({"optim.lr": (3e-3,)},)
    solo.resources.population = 1
    runner.run_sweep(solo, tmp_path / "solo", workers=1, compile_cache_dir=compile_cache,
                     progress=False)
    rows = [json.loads(x) for x in (root / ok["dir"] / "metrics.jsonl").read_text().splitlines()]
    solo_dir = tmp_path / "solo" / manifest_lib.read_manifest(tmp_path / "solo")["runs"][0]["dir"]
    solo_rows = [json.loads(x) for x in (solo_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in solo_rows]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in solo_rows], abs=1e-4)


def test_worker_module_runs_without_a_double_import_warning():
    # the runner launches `python -m scaling.sweeps.worker`; its log must not open with runpy's
    # "found in sys.modules ... unpredictable behaviour" warning
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m",
                           "scaling.sweeps.worker", "--help"], cwd=REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "usage: python -m scaling.sweeps.worker" in proc.stdout
    from scaling import sweeps

    assert sweeps.run_sweep is runner.run_sweep and sweeps.expand is spec.expand
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        getattr(sweeps, "nope")


def test_runs_start_longest_first_and_populations_keep_that_order():
    sweep = spec.load_sweep(str(REPO_ROOT / "configs" / "sweeps" / "isoflop_tiny.py"))
    sweep.seeds = (0, 1)
    runs = spec.expand(sweep)  # the cheapest budget first
    assert runs[0].budget == min(sweep.flops)
    order = runner.start_order(runs)
    assert sorted(order, key=lambda r: r.id) == sorted(runs, key=lambda r: r.id)
    assert [r.budget for r in order] == sorted((r.budget for r in runs), reverse=True)
    assert order[0].budget == max(sweep.flops)
    # among runs of one budget the sweep's own order is kept (stable)
    top = [r.id for r in runs if r.budget == order[0].budget]
    assert [r.id for r in order if r.budget == order[0].budget] == top
    queue = [(r, 1) for r in order]
    first = runner.take_population(queue, 16, REPO_ROOT / "no-such-root")
    assert {r.budget for r, _ in first} == {max(sweep.flops)} and len(first) == 2  # two seeds


def test_population_limit_and_grouping(tmp_path):
    sweep = testing.tiny_sweep(tmp_path, sizes=(3.4e3, 6.7e3))
    sweep.axes = ({"optim.lr": (3e-3, 1e-2, 3e-2)},)
    runs = spec.expand(sweep)
    sweep.resources.population = 2
    assert runner.population_limit(sweep) == 2
    queue = [(r, 1) for r in runs]
    groups = []
    while queue:
        groups.append([(r.config.model.n_layers, r.config.model.d_model) for r, _ in
                       runner.take_population(queue, 2, tmp_path)])
    # same shape and length only, at most two
    assert sorted(len(g) for g in groups) == [1, 1, 2, 2]
    assert all(len(set(g)) == 1 for g in groups) and sum(map(len, groups)) == len(runs)
    assert len({g[0] for g in groups}) == 2
    sweep.resources.processes = 2
    assert runner.population_limit(sweep) == 1  # multi-process runs train alone
    sweep.resources.processes, sweep.resources.population = 1, -1
    with pytest.raises(spec.SweepError, match="resources.population"):
        spec.expand(sweep)


@pytest.mark.slow
def test_two_process_run_matches_one_process(tmp_path, stdlib_tiny_data_dir, compile_cache):
    # the 2-process sweep runs through the CLI in the background while the 1-process one runs here
    cfg = tmp_path / "mp_cfg.py"
    cfg.write_text("from scaling.sweeps.testing import tiny_sweep\n\n\ndef get_config():\n"
                   f"    s = tiny_sweep({str(stdlib_tiny_data_dir)!r}, name='mp', sizes=(3.4e3,), "
                   "log_every=1)\n    s.resources.processes = 2\n"
                   "    s.resources.devices_per_process = 1\n    return s\n")
    cmd = [sys.executable, "-m", "scaling.cli", "sweep", "--config", str(cfg), "--root",
           str(tmp_path / "p2"), "--compile_cache_dir", compile_cache, "--noprogress"]
    two = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        one = testing.tiny_sweep(stdlib_tiny_data_dir, name="mp", sizes=(3.4e3,), log_every=1)
        one.resources.processes = 1
        one.resources.devices_per_process = 2
        result = runner.run_sweep(one, tmp_path / "p1", compile_cache_dir=compile_cache,
                                  progress=False)
        out, _ = two.communicate(timeout=300)
    finally:
        if two.poll() is None:
            two.kill()
            two.wait()
    assert result["status"] == "completed"
    assert two.returncode == 0, out
    (entry,) = result["runs"]
    losses = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"p{processes}" / entry["dir"]  # same config: same id, same name
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[processes] = {r["step"]: r["loss"] for r in rows}
        assert json.loads((run_dir / "run.json").read_text())["id"] == entry["id"]
    p1_log = (tmp_path / "p2" / entry["dir"] / "train.p1.log").read_text()
    assert "process 1 of 2, 2 global devices" in p1_log
    assert list(losses[1]) == list(losses[2]) == list(range(1, 21))
    diff = max(abs(losses[1][s] - losses[2][s]) for s in losses[1])
    print(f"max |loss(2 processes) - loss(1 process)| = {diff:.3g}")
    assert diff <= MULTIPROCESS_LOSS_TOL
