"""Ray backend: each run of a sweep is one Ray task (or one task per process) with its resources.

`scaling sweep --backend ray --address HOST:PORT` connects to a running Ray cluster. Each run
becomes a task requesting `resources.cpus` CPUs, `resources.gpus` GPUs and `resources.tpu_chips`
of the custom resource "TPU" per process; the task starts the same worker subprocess as the local
backend (`python -m scaling.sweeps.worker RUN_DIR`, log appended to RUN_DIR/train.log), so the
semantics are the local ones: skip completed runs, resume from checkpoints, retries, failures
recorded by the driver, which alone writes the manifest.

A run with `resources.processes = P > 1` gets a placement group of P bundles (strategy
`PACK`, or `STRICT_SPREAD` when `resources.tpu_chips > 0`: one process per TPU host). A small
probe task on bundle 0 picks the coordinator address (that node's IP and a free port), then P
tasks start with SCALING_COORDINATOR_ADDRESS / SCALING_NUM_PROCESSES / SCALING_PROCESS_ID set for
`jax.distributed.initialize`. If one process fails the others are cancelled.

The `scaling` package is shipped to the cluster with the job (Ray `py_modules`); run
directories and the compilation cache must be on a filesystem every node sees (the sweep root's
absolute path is used as is).
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Any

import ml_collections

from scaling.sweeps import launch as launch_lib
from scaling.sweeps import worker as worker_lib

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 60.0


def _run_process(run_dirs: list[str], name: str, attempt: int, process_id: int,
                 num_processes: int, coordinator: str | None, devices_per_process: int,
                 cache_dir: str | None) -> dict[str, Any]:
    """Ray task body: runs one worker process of a run (or population); returns {'code', 'host'}."""
    import signal
    import socket
    import subprocess

    env = launch_lib.worker_env(dict(os.environ), devices_per_process=devices_per_process,
                                cache_dir=cache_dir, coordinator=coordinator,
                                num_processes=num_processes, process_id=process_id)
    env[worker_lib.PARENT_ENV] = str(os.getpid())
    path = pathlib.Path(run_dirs[0])
    with open(path / launch_lib.log_name(process_id), "a", encoding="utf-8") as logf:
        logf.write(launch_lib.attempt_header(name, attempt, process_id, num_processes)
                   .replace("=====\n", f"on {socket.gethostname()} (ray) =====\n"))
        logf.flush()
        proc = subprocess.Popen(launch_lib.worker_command(*run_dirs), stdout=logf,
                                stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:  # the task was cancelled: let the run checkpoint, then go
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    return {"code": int(code), "host": socket.gethostname()}


def _probe_coordinator() -> tuple[str, int]:
    """Ray task body: returns (this node's IP, a free TCP port) for the jax coordinator."""
    import ray

    ip = ray.util.get_node_ip_address()
    return ip, launch_lib.free_port("0.0.0.0")


class RayBackend:
    """Submits runs as Ray tasks; `workers` caps runs in flight (0: as the cluster allows)."""

    def __init__(self, address: str | None, workers: int, resources: ml_collections.ConfigDict,
                 cache_dir: str | None):
        import ray

        self.ray = ray
        self.workers = int(workers or 0)
        self.resources = resources
        self.cache_dir = cache_dir
        package_dir = str(pathlib.Path(launch_lib.package_root()) / "scaling")
        ray.init(address=address, runtime_env={"py_modules": [package_dir],
                                               "excludes": ["__pycache__", "*.pyc"]},
                 log_to_driver=False, logging_level=logging.WARNING, ignore_reinit_error=True)
        self._process = ray.remote(max_retries=0)(_run_process)
        self._probe = ray.remote(max_retries=0, num_cpus=0)(_probe_coordinator)
        self._waiting: dict[Any, tuple[launch_lib.Job, str, int]] = {}
        self._jobs: list[launch_lib.Job] = []

    def _options(self) -> dict[str, Any]:
        r = self.resources
        opts: dict[str, Any] = {"num_cpus": float(r.cpus), "num_gpus": float(r.gpus)}
        if r.tpu_chips > 0:
            opts["resources"] = {"TPU": float(r.tpu_chips)}
        return opts

    def has_capacity(self) -> bool:
        """Returns True unless `workers` runs are already in flight."""
        return self.workers <= 0 or len(self._jobs) < self.workers

    def active(self) -> int:
        """Returns the number of runs in flight."""
        return len(self._jobs)

    def _submit(self, job: launch_lib.Job, process_id: int, coordinator: str | None,
                strategy: Any = None) -> None:
        opts = self._options()
        if strategy is not None:
            opts["scheduling_strategy"] = strategy
        num = int(self.resources.processes)
        ref = self._process.options(**opts).remote(
            [str(d) for d in job.run_dirs], job.label, job.number or job.attempt, process_id, num,
            coordinator,
            int(self.resources.devices_per_process), self.cache_dir)
        job.handle["refs"][process_id] = ref
        self._waiting[ref] = (job, "task", process_id)

    def start(self, job: launch_lib.Job) -> None:
        """Submits `job` (one task, or a placement group then a task per process); returns None."""
        job.handle = {"refs": {}, "codes": {}, "pg": None}
        self._jobs.append(job)
        num = int(self.resources.processes)
        if num == 1:
            launch_lib.note_population_logs(job, 0)
            self._submit(job, 0, None)
            return
        from ray.util.placement_group import placement_group

        bundle = {"CPU": float(self.resources.cpus)}
        if self.resources.gpus > 0:
            bundle["GPU"] = float(self.resources.gpus)
        if self.resources.tpu_chips > 0:
            bundle["TPU"] = float(self.resources.tpu_chips)
        strategy = "STRICT_SPREAD" if self.resources.tpu_chips > 0 else "PACK"
        pg = placement_group([dict(bundle) for _ in range(num)], strategy=strategy)
        job.handle["pg"] = pg
        self._waiting[pg.ready()] = (job, "pg", 0)

    def _strategy(self, job: launch_lib.Job, index: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(placement_group=job.handle["pg"],
                                                placement_group_bundle_index=index)

    def _code(self, ref: Any) -> int:
        try:
            return int(self.ray.get(ref)["code"])
        except self.ray.exceptions.TaskCancelledError:
            return worker_lib.EXIT_INTERRUPTED
        except self.ray.exceptions.RayError as err:  # the task or its node died
            log.warning("ray task failed: %s", err)
            return worker_lib.EXIT_FAILED

    def _release(self, job: launch_lib.Job) -> None:
        if job.handle.get("pg") is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(job.handle["pg"])
            job.handle["pg"] = None
        if job in self._jobs:
            self._jobs.remove(job)

    def poll(self, timeout: float) -> list[tuple[launch_lib.Job, int]]:
        """Returns runs whose processes all ended within `timeout` s, with the worst exit code."""
        if not self._waiting:
            time.sleep(timeout)
            return []
        refs = list(self._waiting)
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        done = []
        for ref in ready:
            job, kind, pid = self._waiting.pop(ref)
            num = int(self.resources.processes)
            if kind == "pg":
                probe = self._probe.options(scheduling_strategy=self._strategy(job, 0)).remote()
                self._waiting[probe] = (job, "probe", 0)
            elif kind == "probe":
                ip, port = self.ray.get(ref)
                for i in range(num):
                    self._submit(job, i, f"{ip}:{port}", self._strategy(job, i))
            else:
                code = self._code(ref)
                job.handle["codes"][pid] = code
                if code != 0:  # one process failed: the others would wait forever
                    for other, oref in job.handle["refs"].items():
                        if other not in job.handle["codes"]:
                            self.ray.cancel(oref)
                if len(job.handle["codes"]) == num:
                    bad = [c for c in job.handle["codes"].values() if c != 0]
                    self._release(job)
                    done.append((job, bad[0] if bad else 0))
        return done

    def interrupt_all(self) -> list[tuple[launch_lib.Job, int]]:
        """Cancels every task (each worker gets SIGTERM and checkpoints); returns the jobs."""
        for ref, (_, kind, _) in list(self._waiting.items()):
            if kind == "task":
                self.ray.cancel(ref)
        out = []
        deadline = time.time() + CANCEL_GRACE_S + 10
        for job in list(self._jobs):
            codes = []
            for ref in job.handle["refs"].values():
                ready, _ = self.ray.wait([ref], timeout=max(0.1, deadline - time.time()))
                codes.append(self._code(ref) if ready else worker_lib.EXIT_INTERRUPTED)
            bad = [c for c in codes if c != 0]
            self._release(job)
            out.append((job, bad[0] if bad else worker_lib.EXIT_INTERRUPTED))
        self._waiting.clear()
        return out

    def close(self) -> None:
        """Cancels tasks left, removes placement groups, disconnects from Ray; returns None."""
        for ref, (_, kind, _) in list(self._waiting.items()):
            if kind == "task":
                self.ray.cancel(ref, force=True)
        for job in list(self._jobs):
            self._release(job)
        self._waiting.clear()
        self.ray.shutdown()
