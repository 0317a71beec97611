"""Runs a sweep: prepares the run directories and manifest, then trains the runs on a backend.

    run_sweep(sweep, root, backend="local", workers=1)

1. `spec.expand` validates the whole sweep and expands it into runs; nothing is written or
   started if it raises `SweepError`.
2. `prepare` writes sweep.json, one run directory per run (config.json, run.json with the run's
   axes, status.json 'pending') and merges the runs into root/manifest.json by id.
3. The scheduler starts every run that is not completed (and not diverged, unless
   `retry_failed`) on the backend and records each transition in the manifest (rewritten
   atomically). Runs start with the most compute (FLOPs) first (`start_order`): with more runs
   than workers, a sweep then ends on short runs, not on one long run holding the last worker
   while the others idle. A run that fails is retried up to `max_retries` times (a non-finite loss or an
   invalid config.json is not retried: it would fail again); it is then marked failed with its log (run_dir/train.log)
   kept, and the other runs go on. A partial run resumes from its latest checkpoint (the training
   loop does that). SIGINT/SIGTERM to the runner stop the workers with SIGTERM, which makes each
   save a checkpoint, and mark them interrupted; a SIGKILLed runner takes its workers down with it
   (parent-death signal) and the next invocation resumes them.

Backends (`scaling.sweeps.launch`): `local` runs `workers` runs at a time as subprocesses (`python -m
scaling.sweeps.worker RUN_DIR`), a multi-process run as `resources.processes` subprocesses joined by
jax.distributed on 127.0.0.1; `ray` (`scaling.sweeps.ray_backend`) submits the same worker as Ray tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import signal
import sys
import time
from typing import Any, Iterator

import ml_collections

from scaling import config as config_lib
from scaling.sweeps import manifest as manifest_lib
from scaling.sweeps import spec as spec_lib
from scaling.sweeps import worker as worker_lib
from scaling.sweeps.launch import Backend, Job, LocalBackend, log_name, worker_command
from scaling.sweeps.spec import Run, SweepError

log = logging.getLogger(__name__)

RUN_FORMAT_VERSION = 1
LOCK_NAME = ".sweep.lock"
# resources.population = 0 (auto): the most runs of one shape and length trained as one population.
AUTO_POPULATION = {"cpu": 8, "gpu": 16, "tpu": 16}


# ------------------------------------------------------------------------------- preparation


def plan_table(runs: list[Run]) -> str:
    """Returns the dry-run table: name, N, D, C (FLOPs), steps, batch, lr, shape and id."""
    header = ["name", "N", "D", "C", "steps", "batch", "lr", "shape", "id"]
    rows = []
    for r in runs:
        shape = "x".join(str(r.shape[k]) for k in ("n_layers", "d_model", "n_heads", "d_ff")
                         if k in r.shape) or "x".join(str(v) for v in r.shape.values())
        rows.append([r.name, spec_lib.format_count(r.n), spec_lib.format_count(r.d),
                     f"{r.c:.3e}", str(r.steps), str(r.batch), f"{r.lr:.3g}", shape, r.id])
    return format_table(header, rows)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Returns rows as an aligned plain-text table with a header line."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else \
        [len(h) for h in header]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _run_json(run: Run) -> dict[str, Any]:
    return {"version": RUN_FORMAT_VERSION, "id": run.id, "name": run.name, "axes": run.axes,
            "n_params": run.n_total, "n_params_nonembed": run.n,
            "flops_per_token": run.flops_per_token, "tokens_per_step": run.tokens_per_step,
            "num_steps": run.steps}


def _check_conflicts(root: pathlib.Path, runs: list[Run]) -> None:
    for run in runs:
        existing = manifest_lib.read_json(root / run.dir / "run.json")
        if existing is not None and existing.get("id") not in (None, run.id):
            raise SweepError(f"{root / run.dir} holds run id {existing.get('id')}, but this "
                             f"sweep's run {run.name} has id {run.id} (its config changed); use "
                             "another --root or remove that directory")


def _status_for_manifest(run_dir: pathlib.Path) -> str:
    status = manifest_lib.run_status(run_dir)["status"]
    return "interrupted" if status == "running" else status  # no runner holds it now


def prepare(root: str | os.PathLike, sweep: ml_collections.ConfigDict,
            runs: list[Run]) -> dict[str, Any]:
    """Writes sweep.json, the run directories and the merged manifest; returns the manifest."""
    root = pathlib.Path(root)
    _check_conflicts(root, runs)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".manifest.json.*.tmp"):  # left by a runner killed mid-write
        stale.unlink(missing_ok=True)
    (root / "sweep.json.tmp").write_text(spec_lib.sweep_to_json(sweep))
    os.replace(root / "sweep.json.tmp", root / "sweep.json")
    for run in runs:
        run_dir = root / run.dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.json").exists():
            (run_dir / "config.json.tmp").write_text(config_lib.to_json(run.config))
            os.replace(run_dir / "config.json.tmp", run_dir / "config.json")
        existing = manifest_lib.read_json(run_dir / "run.json") or {}
        updated = {**existing, **json.loads(json.dumps(_run_json(run)))}
        if updated != existing:  # a finished run's files stay untouched
            manifest_lib.write_json_atomic(run_dir / "run.json", updated)
        if not (run_dir / "status.json").exists():
            manifest_lib.write_json_atomic(run_dir / "status.json",
                                           {"status": "pending", "step": 0, "error": None,
                                            "time": time.time()})
    manifest = manifest_lib.read_manifest(root)
    manifest = manifest_lib.merge(manifest, [r.manifest_entry() for r in runs])
    manifest["name"] = sweep.name
    by_id = {r.id: r for r in runs}
    for entry in manifest["runs"]:
        if entry["id"] in by_id:
            entry["status"] = _status_for_manifest(root / entry["dir"])
            entry.setdefault("attempts", 0)
    manifest_lib.write_manifest(root, manifest)
    return manifest


@contextlib.contextmanager
def root_lock(root: pathlib.Path) -> Iterator[None]:
    """Holds an exclusive lock on the sweep root (one runner per root); yields None."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    f = open(root / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another sweep runner is using {root}") from None
        yield
    finally:
        f.close()


# -------------------------------------------------------------------------------- scheduling


def _is_diverged(status: dict[str, Any], code: int | None) -> bool:
    return code == worker_lib.EXIT_DIVERGED or \
        str(status.get("error") or "").startswith("FloatingPointError")


def last_exception(log_path: pathlib.Path, max_bytes: int = 65536) -> str | None:
    """Returns the last 'SomeError: message' line of a log (the worker's traceback), or None."""
    import re

    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    pattern = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*$")
    for line in reversed(tail.splitlines()):
        if pattern.match(line.strip()):
            return line.strip()[:500]
    return None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Stop:
    """Turns SIGINT/SIGTERM to the runner into a flag (restored on exit)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def make_backend(name: str, workers: int, sweep: ml_collections.ConfigDict,
                 cache_dir: str | None, address: str | None) -> Backend:
    """Returns the backend `name` ('local' or 'ray') configured for the sweep's resources."""
    if name == "local":
        return LocalBackend(workers or 1, sweep.resources, cache_dir)
    if name == "ray":
        from scaling.sweeps import ray_backend

        return ray_backend.RayBackend(address, workers, sweep.resources, cache_dir)
    raise SweepError(f"--backend={name!r}: must be 'local' or 'ray'")


def pending_commands(sweep: ml_collections.ConfigDict, root: str | os.PathLike,
                     compile_cache_dir: str | None = None) -> list[str]:
    """Prepares the sweep in `root` without training; returns a shell command per unfinished run.

    For external schedulers (e.g. one SLURM array task per line; set SCALING_DISTRIBUTED=auto and
    launch with srun for multi-host runs). The runs' status.json files stay authoritative:
    `scaling sweep-status` and a later `scaling sweep` see what these commands did.
    """
    import shlex

    runs = spec_lib.expand(sweep)
    root = pathlib.Path(root).absolute()
    if compile_cache_dir is None:
        compile_cache_dir = str(root / "compile_cache") if sweep.compile_cache else ""
    with root_lock(root):
        prepare(root, sweep, runs)
    prefix = f"SCALING_COMPILE_CACHE_DIR={shlex.quote(compile_cache_dir)} " \
        if compile_cache_dir else ""
    return [prefix + shlex.join(worker_command(root / r.dir)) for r in runs
            if manifest_lib.run_status(root / r.dir)["status"] != "completed"]


def run_sweep(sweep: ml_collections.ConfigDict, root: str | os.PathLike,
              **kwargs: Any) -> dict[str, Any]:
    """Trains every unfinished run of the sweep in `root`; returns {'counts', 'runs', 'status'}.

    Keyword arguments are those of `train_runs`. With `sweep.tune.enabled` the LR grid of a size
    whose optimum sits at an edge is extended and trained until the optimum is interior or
    `tune.max_extend` is reached, then tuned.json is written (`scaling.sweeps.tuning`); the
    result then also has 'tuning' (what tuned.json holds, None if some run neither completed nor
    diverged).
    """
    runs = spec_lib.expand(sweep)  # raises SweepError before anything is written
    result = train_runs(sweep, runs, root, **kwargs)
    if not sweep.tune.enabled:
        return result
    from scaling.sweeps import tuning

    root = pathlib.Path(root).absolute()
    ranges: dict[float, tuple[int, int]] = {}
    while True:
        try:
            table = tuning.results_table(root, runs, sweep.tune.metric)
        except SweepError as err:
            log.error("%s; tuned.json not written", err)
            return dict(result, tuning=None)
        new, flags = tuning.extend_grid(tuning.optima_with_targets(table), ranges,
                                        int(sweep.tune.lr_points), int(sweep.tune.max_extend))
        init = tuning.initial_range(int(sweep.tune.lr_points))
        if new == {target: ranges.get(target, init) for target in new}:
            break  # every optimum is interior, or its size cannot be extended further
        changed = sum(new[target] != ranges.get(target, init) for target in new)
        ranges = new
        runs = spec_lib.expand(sweep, lr_steps=ranges)
        log.info("tuning: extending the LR grid of %d size(s) by one point", changed)
        result = train_runs(sweep, runs, root, **kwargs)
    return dict(result, tuning=tuning.write_tuned(root, sweep, table, new, flags))


def train_runs(sweep: ml_collections.ConfigDict, runs: list[Run], root: str | os.PathLike, *,
               backend: str = "local", workers: int = 0, address: str | None = None,
               max_retries: int | None = None, retry_failed: bool = False,
               compile_cache_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Trains every unfinished run of `runs` (expanded from `sweep`) in `root`; returns a dict.

    The dict: {'counts', 'runs', 'status'}. `workers`: runs at a time (0: 1 for local, unlimited
    for Ray); `max_retries`: extra attempts per failed run (None: sweep.max_retries);
    `retry_failed`: also retry runs that diverged in an earlier invocation; `compile_cache_dir`:
    the shared JAX compilation cache (None: root/compile_cache when sweep.compile_cache, '' : off).
    """
    root = pathlib.Path(root).absolute()
    retries = sweep.max_retries if max_retries is None else max_retries
    if compile_cache_dir is None:
        compile_cache_dir = str(root / "compile_cache") if sweep.compile_cache else ""
    with root_lock(root):
        manifest = prepare(root, sweep, runs)
        entries = {e["id"]: e for e in manifest["runs"]}
        queue: list[tuple[Run, int]] = []
        for run in start_order(runs):
            status = manifest_lib.run_status(root / run.dir)
            if status["status"] == "completed":
                continue
            if status["status"] == "failed" and _is_diverged(status, None) and not retry_failed:
                log.info("skipping %s: it diverged before (use --retry_failed)", run.name)
                continue
            queue.append((run, 1))
        done_before = sum(1 for r in runs if entries[r.id]["status"] == "completed")
        bk = make_backend(backend, workers, sweep, compile_cache_dir or None, address)
        limit = population_limit(sweep)
        counts = {s: 0 for s in manifest_lib.STATUSES}
        final_status = "completed"

        def update(run: Run, **fields: Any) -> None:
            entries[run.id].update(fields)
            manifest_lib.write_manifest(root, manifest)

        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), initial=done_before, unit="run", desc=sweep.name,
                   disable=not progress, dynamic_ncols=True, file=sys.stderr)
        try:
            with _Stop() as stop:
                while (queue or bk.active()) and not stop.requested:
                    while queue and bk.has_capacity() and not stop.requested:
                        group = take_population(queue, limit, root)
                        members = [Job(run=r, run_dir=root / r.dir, attempt=a,
                                       number=int(entries[r.id].get("attempts", 0)) + 1)
                                   for r, a in group]
                        job = members[0] if len(members) == 1 else dataclasses.replace(
                            members[0], members=members)
                        bk.start(job)
                        for m in members:
                            entries[m.run.id]["attempts"] = m.number
                            update(m.run, status="running", error=None)
                        log.info("started %s (attempt %d)%s", job.label, job.number,
                                 f" as one population of {len(members)}"
                                 if len(members) > 1 else "")
                    for job, code in bk.poll(0.5):
                        for member, member_code in member_outcomes(job, code):
                            retry = _finish(member, member_code, retries, update, stopping=False)
                            if retry:
                                queue.append((member.run, member.attempt + 1))
                            else:
                                bar.update(1)
                        bar.set_postfix(running=bk.active(), queued=len(queue), refresh=False)
                if stop.requested:
                    final_status = "interrupted"
                    for job, code in bk.interrupt_all():
                        for member, member_code in member_outcomes(job, code):
                            _finish(member, member_code, 0, update, stopping=True)
        finally:
            bar.close()
            bk.close()
        for run in runs:
            counts[entries[run.id]["status"]] = counts.get(entries[run.id]["status"], 0) + 1
        if final_status == "completed" and counts["completed"] < len(runs):
            final_status = "failed"
    return {"status": final_status, "counts": counts, "runs": [entries[r.id] for r in runs]}


def start_order(runs: list[Run]) -> list[Run]:
    """Returns the runs in the order the scheduler starts them: the most training FLOPs (an
    IsoFLOP run: its budget) first, the sweep's own order among equals (longest-processing-time
    first keeps the sweep's last runs short)."""
    return sorted(runs, key=lambda run: -(run.c if run.budget is None else run.budget))


def population_limit(sweep: ml_collections.ConfigDict) -> int:
    """Returns the most runs one population may hold: `resources.population`, or for 0 (auto)
    AUTO_POPULATION on accelerators and on the CPU; 1 for multi-process runs."""
    x = sweep.resources
    if int(x.processes) > 1:
        return 1
    if int(x.population) > 0:
        return int(x.population)
    import jax

    return AUTO_POPULATION.get(jax.default_backend(), AUTO_POPULATION["cpu"])


def latest_checkpoint_step(run_dir: pathlib.Path) -> int:
    """Returns the run's latest checkpoint step from its directory listing (0: none)."""
    ckpt = run_dir / "checkpoints"
    steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
    return max(steps, default=0)


def population_key(run: Run, root: pathlib.Path) -> tuple | None:
    """Returns what runs of one population share (program, length, resume step); None: alone."""
    from scaling.train import population_step

    if population_step.trains_alone(run.config):  # a teacher, rewind
        return None
    # weight decay too: members that differ in it keep it in the optimizer state, and such a
    # checkpoint would not resume as a single run if the run were retried alone
    return (population_step.program_key(run.config), run.steps,
            float(run.config.optim.weight_decay), latest_checkpoint_step(root / run.dir))


def take_population(queue: list[tuple[Run, int]], limit: int, root: pathlib.Path
                    ) -> list[tuple[Run, int]]:
    """Removes and returns the queue's first run and up to `limit - 1` later runs that can train
    with it as one population (same program, steps, weight decay and resume step)."""
    first = queue.pop(0)
    key = population_key(first[0], root) if limit > 1 else None
    if key is None:
        return [first]
    group = [first]
    for item in list(queue):
        if len(group) >= limit:
            break
        if population_key(item[0], root) == key:
            queue.remove(item)
            group.append(item)
    return group


def member_outcomes(job: Job, code: int) -> list[tuple[Job, int]]:
    """Returns (run, exit code) per run of a finished job; a population member's code is 0 when
    its own status says completed, the job's code otherwise."""
    if not job.members:
        return [(job, code)]
    out = []
    for member in job.members:
        done = manifest_lib.run_status(member.run_dir)["status"] == "completed"
        out.append((member, 0 if done and code != worker_lib.EXIT_USAGE else code))
    return out


def _finish(job: Job, code: int, retries: int, update: Any, stopping: bool) -> bool:
    """Records an attempt's outcome in the manifest; returns True if the run should be retried."""
    run_dir = job.run_dir
    status = manifest_lib.run_status(run_dir)
    if status["status"] == "completed":
        if code != 0:
            log.warning("run %s completed but its worker ended with %s", job.run.name,
                        _describe_exit(code))
        update(job.run, status="completed", error=None)
        log.info("completed %s", job.run.name)
        return False
    if stopping:
        update(job.run, status="interrupted", error=None)
        return False
    if status["status"] == "interrupted":  # SIGTERM from outside (preemption): resume it
        if job.attempt <= retries:
            log.warning("run %s was interrupted; resuming it", job.run.name)
            update(job.run, status="pending", error=None)
            return True
        update(job.run, status="interrupted", error=None)
        return False
    error = status.get("error") if status["status"] == "failed" else None
    if not error:
        error = f"worker {_describe_exit(code)}"
        cause = last_exception(run_dir / log_name(0))
        error = f"{error}: {cause}" if cause else error
    if status["status"] not in ("failed", "interrupted"):  # killed before it could say so
        manifest_lib.write_json_atomic(run_dir / "status.json", {
            "status": "failed", "step": int(status.get("step") or 0), "error": error,
            "time": time.time()})
    diverged = _is_diverged(status, code)
    bad_input = code == worker_lib.EXIT_USAGE  # its config.json is invalid: it would fail again
    if not diverged and not bad_input and job.attempt <= retries:
        log.warning("run %s attempt %d failed (%s); retrying", job.run.name, job.attempt, error)
        update(job.run, status="pending", error=error)
        return True
    log.error("run %s failed: %s (log kept in %s)", job.run.name, error, run_dir / log_name(0))
    update(job.run, status="failed", error=error)
    return False
