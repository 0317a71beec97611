"""The Ray backend against a real single-node Ray cluster started by the test on 127.0.0.1.

The cluster is `ray start --head --block` in its own process; the test stops it by terminating
that process (which shuts down the raylet, GCS and workers it started) rather than `ray stop`,
which would also stop any other Ray instance of the same user on the machine.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from scaling.sweeps import manifest as manifest_lib
from scaling.sweeps import launch, runner, spec, testing

ray = pytest.importorskip("ray")


def _wait_for_port(port: int, proc: subprocess.Popen, log: pathlib.Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"ray start exited:\n{log.read_text()}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.time() < deadline, f"Ray GCS did not come up:\n{log.read_text()}"
        time.sleep(0.5)


@pytest.fixture
def ray_cluster(tmp_path):
    """Yields the address HOST:PORT of a 2-CPU Ray head node on 127.0.0.1; stops it after."""
    port = launch.free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are long
    log = tmp_path / "ray_start.log"
    cmd = [str(pathlib.Path(sys.executable).with_name("ray")), "start", "--head",
           "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
           f"--ray-client-server-port={launch.free_port()}",
           f"--dashboard-agent-listen-port={launch.free_port()}", "--block"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", RAY_USAGE_STATS_ENABLED="0")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        _wait_for_port(port, proc, log, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group `ray start` leads, nothing else
            proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def compile_cache(tmp_path_factory) -> str:
    """Returns a JAX compilation cache directory shared by the sweep tests of this session."""
    path = tmp_path_factory.getbasetemp() / "sweeps_compile_cache"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.mark.slow
def test_ray_backend_runs_a_sweep_on_a_local_cluster(tmp_path, stdlib_tiny_data_dir, ray_cluster,
                                                     compile_cache):
    sweep = testing.tiny_sweep(stdlib_tiny_data_dir, name="ray")
    sweep.resources.cpus = 1  # 2 runs side by side on the 2-CPU cluster
    root = tmp_path / "root"
    runs = spec.expand(sweep)
    result = runner.run_sweep(sweep, root, backend="ray", address=ray_cluster,
                              compile_cache_dir=compile_cache, progress=False)
    logs = {e["name"]: (root / e["dir"] / "train.log").read_text() for e in result["runs"]}
    assert result["status"] == "completed", logs
    manifest = manifest_lib.read_manifest(root)
    assert [e["id"] for e in manifest["runs"]] == [r.id for r in runs]
    assert [e["status"] for e in manifest["runs"]] == ["completed"] * len(runs)
    for r in runs:
        run_dir = root / r.dir
        assert manifest_lib.run_status(run_dir)["status"] == "completed"
        assert manifest_lib.last_metrics(run_dir)["step"] == r.steps
        assert "(ray) =====" in logs[r.name]  # trained by a Ray task

    # same semantics as local: a second invocation finds everything completed and starts nothing
    again = runner.run_sweep(sweep, root, backend="ray", address=ray_cluster,
                             compile_cache_dir=compile_cache, progress=False)
    assert again["status"] == "completed"
    assert [e["attempts"] for e in again["runs"]] == [1] * len(runs)



@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SCALING_TEST_RAY_MULTIPROCESS"),
                    reason="about a minute on 2 busy cores; set SCALING_TEST_RAY_MULTIPROCESS=1")
def test_ray_backend_multiprocess_run(tmp_path, stdlib_tiny_data_dir, ray_cluster, compile_cache):
    # a 2-process run: a placement group of 2 one-CPU bundles, jax.distributed over gloo
    mp = testing.tiny_sweep(stdlib_tiny_data_dir, name="ray_mp", sizes=(3.4e3,))
    mp.resources.processes = 2
    mp.resources.cpus = 1
    result = runner.run_sweep(mp, tmp_path / "mp", backend="ray", address=ray_cluster,
                              compile_cache_dir=compile_cache, progress=False)
    (entry,) = result["runs"]
    run_dir = tmp_path / "mp" / entry["dir"]
    assert result["status"] == "completed", (run_dir / "train.log").read_text()
    assert "process 1 of 2, 2 global devices" in (run_dir / "train.p1.log").read_text()
    assert "(ray) =====" in (run_dir / "train.p1.log").read_text()
