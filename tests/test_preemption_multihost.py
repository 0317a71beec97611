"""Preemption of a two-process run on CPU: SIGTERM reaches only one process, at a random moment.

Both processes must stop at the same step (no hang in a collective), leave one consistent
checkpoint at that step, report "interrupted", and a resume must end with exactly the
parameters of an uninterrupted two-process run. Real `jax.distributed` processes with gloo
collectives, one CPU device each.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, xla_flags

STEPS = 240
WORKER = textwrap.dedent("""
    import json, sys
    port, pid, data_dir, workdir, cache_dir, steps = sys.argv[1:7]
    from scaling import distributed
    distributed.initialize(f"127.0.0.1:{port}", 2, int(pid))
    from scaling.sweeps import cache
    cache.enable_compile_cache(cache_dir)
    from scaling import config as config_lib
    from scaling.train import loop
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = data_dir
    c.data.seq_len = c.model.max_seq_len = 16
    c.model.d_model, c.model.n_layers, c.model.n_heads = 16, 1, 2
    c.model.resid_dropout = 0.1  # the RNG stream must resume exactly too
    c.train.batch_size = 4
    c.train.num_steps = int(steps)
    c.train.log_every = 1
    c.train.progress = False
    c.checkpoint.log_max = 8
    c.checkpoint.every = 0
    c.optim.warmup_steps = 5
    summary = loop.train(c, workdir)
    print("SUMMARY " + json.dumps(summary), flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir: pathlib.Path, data_dir: pathlib.Path, cache_dir: pathlib.Path
           ) -> list[subprocess.Popen]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(1))
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i), str(data_dir),
                              str(workdir), str(cache_dir), str(STEPS)], cwd=REPO_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]


def _finish(procs: list[subprocess.Popen], timeout: float = 900) -> list[dict]:
    """Returns each process's summary; fails (and kills both) on a hang or a crash.

    The limit is generous for a loaded machine (compiling while other jobs run); a run that
    hangs in a collective never ends, so any finite limit catches it."""
    summaries = []
    deadline = time.time() + timeout
    for i, p in enumerate(procs):
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"process {i} hung (no exit within {timeout} s)")
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-4000:]}"
        lines = [line for line in out.splitlines() if line.startswith("SUMMARY ")]
        assert lines, out[-4000:]
        summaries.append(json.loads(lines[-1][len("SUMMARY "):]))
    return summaries


def _last_logged_step(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return max((json.loads(line)["step"] for line in path.read_text().splitlines()
                if line.strip().endswith("}")), default=0)


def _params(workdir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    """Returns the params of a checkpoint as numpy arrays (saved by 2 processes, read by 1)."""
    import jax
    import orbax.checkpoint as ocp

    path = (workdir / "checkpoints" / str(step) / "state").absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(path)
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    params = checkpointer.restore(path, restore_args=as_numpy)["params"]
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(params)}


def _checkpoints(workdir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir())


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(
        tmp_path, stdlib_tiny_data_dir):
    seed = int(os.environ.get("PREEMPTION_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    victim, after_step, delay = rng.randrange(2), rng.randrange(2, 40), rng.uniform(0.0, 0.5)
    why = f"(seed {seed}: SIGTERM to process {victim} {delay:.2f} s after step {after_step})"
    cache_dir = tmp_path / "compile_cache"
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "preempted"
    # the uninterrupted run first: it fills the compilation cache that the next two runs load
    assert [s["status"] for s in _finish(_start(ref_dir, stdlib_tiny_data_dir, cache_dir))] == [
        "completed"] * 2
    procs = _start(run_dir, stdlib_tiny_data_dir, cache_dir)
    deadline = time.time() + 900
    while _last_logged_step(run_dir) < after_step:
        assert all(p.poll() is None for p in procs), _finish(procs)
        assert time.time() < deadline, "training did not reach the signal step in time"
        time.sleep(0.02)
    time.sleep(delay)
    procs[victim].send_signal(signal.SIGTERM)
    summaries = _finish(procs)

    # both stopped at the same step, which both saved (one checkpoint, written by both)
    stopped = {s["step"] for s in summaries}
    assert [s["status"] for s in summaries] == ["interrupted"] * 2, (summaries, why)
    assert len(stopped) == 1, (summaries, why)
    (stop,) = stopped
    assert after_step <= stop < STEPS, why
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == stop
    saved = _checkpoints(run_dir)
    assert all(name.isdigit() for name in saved), saved  # no half-written checkpoint left
    assert max(int(name) for name in saved) == stop
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, stop + 1))

    # resuming (both processes) ends exactly where the uninterrupted run ends
    resumed = _finish(_start(run_dir, stdlib_tiny_data_dir, cache_dir))
    assert [s["status"] for s in resumed] == ["completed"] * 2
    ref, got = _params(ref_dir, STEPS), _params(run_dir, STEPS)
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{k} {why}")
    ref_rows = [json.loads(line) for line in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
