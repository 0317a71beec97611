"""How a sweep's runs are launched: the job record, the backend protocol and the local backend.

A `Job` is one attempt of one run (or of a population of runs trained as one process). A backend
starts jobs, polls them and stops them with SIGTERM so that each saves a checkpoint; `LocalBackend`
runs them as subprocesses here (`python -m scaling.sweeps.worker RUN_DIR...`), a multi-process run as
`resources.processes` subprocesses joined by jax.distributed on 127.0.0.1. The Ray backend
(`scaling.sweeps.ray_backend`) launches the same worker command with the same environment.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any, Protocol

import ml_collections

from scaling.sweeps import worker as worker_lib
from scaling.sweeps.spec import Run

TERMINATE_GRACE_S = 60.0


@dataclasses.dataclass
class Job:
    """One attempt of one run on a backend."""

    run: Run
    run_dir: pathlib.Path
    attempt: int  # attempts in this invocation (1, 2, ...): what the retry limit counts
    number: int = 0  # attempts of the run over all invocations: the manifest's and log's number
    started: float = dataclasses.field(default_factory=time.time)
    handle: Any = None  # backend-specific
    members: list["Job"] = dataclasses.field(default_factory=list)  # a population's runs

    @property
    def run_dirs(self) -> list[pathlib.Path]:
        """Returns the run directories this job trains (several for a population)."""
        return [m.run_dir for m in self.members] or [self.run_dir]

    @property
    def label(self) -> str:
        """Returns the run's name, or the population's member names joined by '+'."""
        return "+".join(m.run.name for m in self.members) or self.run.name


class Backend(Protocol):
    """Where attempts run: the scheduler starts jobs while `has_capacity()` and polls them."""

    def has_capacity(self) -> bool:
        """Returns True if another job can start now."""

    def start(self, job: Job) -> None:
        """Starts `job` without waiting for it; returns None."""

    def poll(self, timeout: float) -> list[tuple[Job, int]]:
        """Returns the jobs that finished within `timeout` seconds, with their exit codes."""

    def active(self) -> int:
        """Returns the number of jobs started and not yet finished."""

    def interrupt_all(self) -> list[tuple[Job, int]]:
        """Stops every job with SIGTERM (so it checkpoints), waits; returns them with exit codes."""

    def close(self) -> None:
        """Releases the backend's resources; returns None."""


def package_root() -> str:
    """Returns the directory containing the `scaling` package (for the workers' PYTHONPATH)."""
    import scaling

    return str(pathlib.Path(scaling.__file__).resolve().parents[1])


def worker_env(base: dict[str, str], *, devices_per_process: int = 0,
               cache_dir: str | None = None, coordinator: str | None = None,
               num_processes: int = 1, process_id: int = 0,
               pythonpath: str | None = None) -> dict[str, str]:
    """Returns the environment for one worker process (base env plus sweep settings)."""
    env = dict(base)
    pythonpath = pythonpath or package_root()
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([pythonpath] + [p for p in parts if p != pythonpath])
    if devices_per_process > 0:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        flags.append(f"--xla_force_host_platform_device_count={int(devices_per_process)}")
        env["XLA_FLAGS"] = " ".join(flags)
    if cache_dir:
        env["SCALING_COMPILE_CACHE_DIR"] = str(cache_dir)
    else:
        env.pop("SCALING_COMPILE_CACHE_DIR", None)
    for key in ("SCALING_COORDINATOR_ADDRESS", "SCALING_NUM_PROCESSES", "SCALING_PROCESS_ID"):
        env.pop(key, None)
    if num_processes > 1:
        env["SCALING_COORDINATOR_ADDRESS"] = str(coordinator)
        env["SCALING_NUM_PROCESSES"] = str(num_processes)
        env["SCALING_PROCESS_ID"] = str(process_id)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def log_name(process_id: int) -> str:
    """Returns the log file name of a run's process (train.log for process 0)."""
    return "train.log" if process_id == 0 else f"train.p{process_id}.log"


def attempt_header(name: str, attempt: int, process_id: int, num_processes: int) -> str:
    """Returns the line written to a run's log before each attempt."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f"\n===== {stamp} run {name} attempt {attempt} process {process_id}/{num_processes} "
            "=====\n")


def worker_command(*run_dirs: str | os.PathLike) -> list[str]:
    """Returns the command line that trains run directories (several: one population)."""
    return [sys.executable, "-m", "scaling.sweeps.worker", *map(str, run_dirs)]


def note_population_logs(job: Job, process_id: int) -> None:
    """Appends to every member's log but the first a line naming the log the population writes."""
    for member in job.members[1:]:
        with open(member.run_dir / log_name(process_id), "a", encoding="utf-8") as logf:
            logf.write(attempt_header(member.run.name, member.number or member.attempt,
                                      process_id, 1)
                       + f"trained in a population of {len(job.members)} ({job.label}); its log "
                       f"is {job.run_dir / log_name(process_id)}\n")


class LocalBackend:
    """Runs up to `workers` runs at a time as local subprocesses (all processes of a run here)."""

    def __init__(self, workers: int, resources: ml_collections.ConfigDict,
                 cache_dir: str | None):
        self.workers = max(1, int(workers))
        self.resources = resources
        self.cache_dir = cache_dir
        self._jobs: list[Job] = []

    def has_capacity(self) -> bool:
        """Returns True while fewer than `workers` runs are active."""
        return len(self._jobs) < self.workers

    def active(self) -> int:
        """Returns the number of active runs."""
        return len(self._jobs)

    def start(self, job: Job) -> None:
        """Starts all processes of `job`'s run (logs to run_dir/train[.pK].log); returns None."""
        procs = []
        num = int(self.resources.processes)
        coordinator = f"127.0.0.1:{free_port()}" if num > 1 else None
        for pid in range(num):
            env = worker_env(dict(os.environ),
                             devices_per_process=self.resources.devices_per_process,
                             cache_dir=self.cache_dir, coordinator=coordinator,
                             num_processes=num, process_id=pid)
            env[worker_lib.PARENT_ENV] = str(os.getpid())
            note_population_logs(job, pid)
            with open(job.run_dir / log_name(pid), "a", encoding="utf-8") as logf:
                logf.write(attempt_header(job.label, job.number or job.attempt, pid, num))
                logf.flush()
                procs.append(subprocess.Popen(worker_command(*job.run_dirs), stdout=logf,
                                              stderr=subprocess.STDOUT, env=env,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
        job.handle = {"procs": procs, "term_sent": None}
        self._jobs.append(job)

    def _check(self, job: Job) -> int | None:
        procs: list[subprocess.Popen] = job.handle["procs"]
        codes = [p.poll() for p in procs]
        bad = [c for c in codes if c not in (None, 0)]
        if all(c is not None for c in codes):
            return bad[0] if bad else 0
        if bad:  # one process of a multi-process run died: stop the others
            if job.handle["term_sent"] is None:
                job.handle["term_sent"] = time.time()
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
            elif time.time() - job.handle["term_sent"] > TERMINATE_GRACE_S:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
        return None

    def poll(self, timeout: float) -> list[tuple[Job, int]]:
        """Returns the runs whose processes all exited (worst exit code), waiting up to timeout."""
        deadline = time.time() + timeout
        while True:
            done = []
            for job in list(self._jobs):
                code = self._check(job)
                if code is not None:
                    self._jobs.remove(job)
                    done.append((job, code))
            if done or time.time() >= deadline:
                return done
            time.sleep(min(0.1, max(0.0, deadline - time.time())))

    def interrupt_all(self) -> list[tuple[Job, int]]:
        """SIGTERMs every process (each saves a checkpoint), waits; returns jobs with exit codes."""
        for job in self._jobs:
            for p in job.handle["procs"]:
                if p.poll() is None:
                    p.terminate()
        out = []
        deadline = time.time() + TERMINATE_GRACE_S
        for job in list(self._jobs):
            codes = []
            for p in job.handle["procs"]:
                try:
                    codes.append(p.wait(timeout=max(0.1, deadline - time.time())))
                except subprocess.TimeoutExpired:
                    p.kill()
                    codes.append(p.wait())
            bad = [c for c in codes if c != 0]
            out.append((job, bad[0] if bad else 0))
        self._jobs.clear()
        return out

    def close(self) -> None:
        """Kills any worker process still running; returns None."""
        for job in self._jobs:
            for p in job.handle["procs"]:
                if p.poll() is None:
                    p.kill()
