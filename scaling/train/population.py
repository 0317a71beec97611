"""Population training: K compatible runs trained by one vmapped step in one process.

`train_population(configs, workdirs)` trains each member into its own run directory with the same
files a single run writes (config.json, run.json, metrics.jsonl, eval.jsonl, status.json, tb/,
checkpoints/), so `scaling evaluate` and `scaling analyze` read them unchanged. Each member reads
its own data stream (its own seed and budget; members with one data config and seed, as in an LR
sweep, share one read of it: `population_data.Streams`) and has its own checkpoints and status:
a member that diverges is frozen on device and marked failed at that step while the others go
on; a member whose budget is spent is marked completed and no longer updated. A killed
population resumes every member from its own latest checkpoint (they must be at one step);
members already completed or failed are left out. The compiled side is in `population_step.py`.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from scaling import checkpoint as ckpt_lib
from scaling import config as config_lib
from scaling import data as data_lib
from scaling import metrics_writer
from scaling import perf
from scaling.models import lora as lora_lib
from scaling.train import init_from as init_from_lib
from scaling.train import loop
from scaling.train import preemption as preemption_lib
from scaling.train import population_data as pop_data
from scaling.train import population_step as pop_lib
from scaling.train import setup as setup_lib

log = logging.getLogger(__name__)

FINISHED = ("completed", "failed")


def _read_status(workdir: pathlib.Path) -> dict[str, Any]:
    path = workdir / "status.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise pop_lib.PopulationError(f"{path} is not valid JSON: {err}") from err


class _Member:
    """Host-side pieces of one member: its config, directory, files, iterator and counters."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, run: dict,
                 num_steps: int) -> None:
        self.config = config
        self.workdir = workdir
        self.run = run
        self.num_steps = num_steps
        self.save_at = set(ckpt_lib.save_steps(config, num_steps))
        self.done = False
        self.status = "running"
        self.last_row: dict[str, float] = {}
        self.window_start = time.perf_counter()  # throughput window: since this time and step
        self.window_step = 0
        self.checkpointer: ckpt_lib.Checkpointer | None = None
        self.data_iter: Any = None
        self.evaluator: Callable[..., list[dict]] | None = None
        self.metrics_file: metrics_writer.JsonlWriter | None = None
        self.eval_file: metrics_writer.JsonlWriter | None = None
        self.tb: metrics_writer.TensorBoardWriter | None = None
        self.source: init_from_lib.Source | None = None  # train.init_from, on a fresh start

    def should_eval(self, step: int) -> bool:
        """Returns True when this member evaluates after `step` (as a single run would)."""
        t = self.config.train
        return ((t.eval_at_checkpoints and step in self.save_at)
                or (t.eval_every > 0 and (step % t.eval_every == 0 or step == self.num_steps)))

    def summary(self, step: int | None = None) -> dict[str, Any]:
        """Returns the member's summary, shaped like `loop.train`'s."""
        return {"step": step if step is not None else self.last_row.get("step", 0),
                "status": self.status, "loss": self.last_row.get("loss"),
                "workdir": str(self.workdir)}


def _prepare(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[pathlib.Path]
             ) -> list[_Member]:
    """Validates and resolves every member; raises before anything compiles."""
    if len(configs) != len(workdirs):
        raise pop_lib.PopulationError(
            f"{len(configs)} configs but {len(workdirs)} workdirs; give one workdir per member")
    if len({w.absolute() for w in workdirs}) != len(workdirs):
        raise pop_lib.PopulationError("two members share a workdir; each needs its own")
    for i, c in enumerate(configs):
        config_lib.validate(c, jax.device_count())
        why = pop_lib.trains_alone(c)
        if why:
            raise pop_lib.PopulationError(
                f"member {i} has {why}, so it cannot train inside a population: train it alone "
                "(resources.population=1)")
    pop_lib.check_members(configs)  # shapes differ: a clear error before data or devices
    resolved = [data_lib.resolve(c, w) for c, w in zip(configs, workdirs)]
    for c in resolved:
        config_lib.validate(c, jax.device_count())
    pop_lib.check_members(resolved)
    if resolved[0].finetune.lora_rank > 0:  # an unknown LoRA module: ConfigError, nothing written
        setup_lib.abstract_params(resolved[0])
    sources = [_fresh_source(c, w) for c, w in zip(resolved, workdirs)]
    members = []
    for c, w, source in zip(resolved, workdirs, sources):
        n = config_lib.train_steps(c)
        m = _Member(c, w, loop.prepare_workdir(c, w, n), n)
        if source is not None:  # recorded as a single run records it
            m.source = source
            m.run["init_from"] = source.record()
            if jax.process_index() == 0:
                loop.write_json_atomic(w / "run.json", m.run)
        members.append(m)
    return members


def _fresh_source(config: ml_collections.ConfigDict, workdir: pathlib.Path
                  ) -> init_from_lib.Source | None:
    """Returns the `train.init_from` source of a member that starts fresh (None without one, or
    when the member resumes: a resume reads its own checkpoint, never the source); raises
    ConfigError naming the field (missing run or step, another shape) before anything compiles."""
    if not config.train.init_from:
        return None
    if (workdir / "checkpoints").is_dir():
        checkpointer = ckpt_lib.Checkpointer(workdir, config)
        try:
            if checkpointer.latest_step() is not None:
                return None
        finally:
            checkpointer.close()
    source = init_from_lib.resolve(config.train.init_from)
    init_from_lib.check_shapes(source, setup_lib.abstract_params(config), added=lora_lib.is_adapter)
    return source


def train_population(configs: Sequence[ml_collections.ConfigDict],
                     workdirs: Sequence[str | pathlib.Path], *, stop_after: int | None = None,
                     evaluators: Sequence[Callable[..., list[dict]] | None] | None = None
                     ) -> list[dict[str, Any]]:
    """Trains (or resumes) each member into its workdir; returns one `loop.train`-like summary each.

    `stop_after` ends every member after that many total steps without marking it completed (to
    simulate interruptions); `evaluators[i]` replaces member i's inline evaluator.
    """
    workdirs = [pathlib.Path(w) for w in workdirs]
    members = _prepare(configs, workdirs)
    for m in members:
        previous = _read_status(m.workdir).get("status")
        if previous in FINISHED:
            m.status, m.done = previous, True
            log.info("member %s is already %s; left out", m.workdir, previous)
    active = [i for i, m in enumerate(members) if not m.done]
    if not active:
        return [m.summary() for m in members]
    live = [members[i] for i in active]
    for m in live:
        loop.write_status(m.workdir, "running", 0)
    step = 0
    try:
        step = _train_active(live, [evaluators[i] if evaluators else None for i in active],
                             stop_after)
    except BaseException as err:
        for m in live:
            if not m.done:
                m.status = "failed"
                loop.write_status(m.workdir, "failed", step, f"{type(err).__name__}: {err}")
        raise
    finally:
        for m in live:
            if m.checkpointer is not None:
                m.checkpointer.close()
            for f in (m.metrics_file, m.eval_file, m.tb):
                if f is not None:
                    f.close()
    return [m.summary() for m in members]


def _restore_or_init(pop: pop_lib.Population, live: list[_Member]) -> Any:
    """Returns the stacked state: every member from its latest checkpoint, or freshly initialized."""
    latest = [m.checkpointer.latest_step() for m in live]
    if len(set(latest)) > 1:
        listing = ", ".join(f"{m.workdir.name}: {s}" for m, s in zip(live, latest))
        raise pop_lib.PopulationError(
            f"members are at different checkpoint steps ({listing}); a population resumes only "
            "from one common step: train the members alone, or restart them")
    if latest[0] is None:
        states = []
        for i, m in enumerate(live):
            state = pop_lib.init_member(pop, i)
            if m.source is not None:  # as `setup.Trainer.init_state_from`: params only
                state = state.replace(params=init_from_lib.load_params(
                    m.source, state.params, pop.shardings.params))
            states.append(state)
        return pop_lib.stack_states(pop, states)
    ckpt_lib.log_restore(latest[0])
    states = []
    for m in live:
        state, data_state = m.checkpointer.restore(latest[0], pop.abstract_state, pop.shardings)
        m.data_iter.set_state(data_state)
        for name in ("metrics.jsonl", "eval.jsonl"):
            if jax.process_index() == 0:
                metrics_writer.truncate_jsonl(m.workdir / name, latest[0])
        states.append(state)
    return pop_lib.stack_states(pop, states)


def _log_row(m: _Member, metrics: dict[str, np.ndarray], i: int, step: int,
             peak_total: float) -> dict[str, Any]:
    """Returns member i's metrics.jsonl row at `step`, with the fields a single run writes."""
    tokens_per_step = m.run["tokens_per_step"]
    row = {k: float(v[i]) for k, v in metrics.items()}
    row.update(step=step, tokens=step * tokens_per_step,
               flops=step * m.run["flops_per_token"] * tokens_per_step, time=time.time())
    now = time.perf_counter()
    if step > m.window_step:
        tokens_per_s = (step - m.window_step) * tokens_per_step / max(now - m.window_start, 1e-9)
        row.update(tokens_per_s=tokens_per_s,
                   mfu=tokens_per_s * m.run["flops_per_token"] / peak_total)
    m.window_start, m.window_step = now, step
    return row


def _train_active(live: list[_Member], evaluators: list, stop_after: int | None) -> int:
    """Runs the population loop over the not-yet-finished members; returns the last step.

    As in the single run's loop, the next batch is read while a step runs, and a step that
    only logs is fetched after the next one is queued behind it, so the device does not wait
    for the host's logging; a step that saves, evaluates or ends a member is handled at once."""
    from scaling import evaluate as evaluate_lib

    pop = pop_lib.build([m.config for m in live])
    eval_step = evaluate_lib.jit_eval_step(pop.model)  # one program for every member
    for m, evaluator in zip(live, evaluators):
        m.checkpointer = ckpt_lib.Checkpointer(m.workdir, m.config)
        m.data_iter = data_lib.make_train_iterator(m.config, m.workdir)
        if evaluator is None:
            evaluator = evaluate_lib.make_inline_evaluator(m.config, m.workdir, pop.mesh,
                                                           pop.model, eval_step)
        m.evaluator = evaluator
    state_K = _restore_or_init(pop, live)  # truncates the JSONL files: open them only after it
    for m in live:
        if jax.process_index() == 0:
            m.metrics_file = metrics_writer.JsonlWriter(m.workdir / "metrics.jsonl")
            m.tb = metrics_writer.TensorBoardWriter(m.workdir / "tb")
            if m.evaluator is not None:
                m.eval_file = metrics_writer.JsonlWriter(m.workdir / "eval.jsonl")
    start_step = int(jax.device_get(state_K.step[0]))
    control = pop_lib.initial_control([m.num_steps for m in live], pop.mesh)
    per_device_peak, _ = perf.peak_flops_per_device(live[0].config.train.peak_flops,
                                                    live[0].config.model.dtype)
    peak_total = perf.total_peak_flops(per_device_peak)
    end_step = max(m.num_steps for m in live)
    if stop_after is not None:
        end_step = min(end_step, stop_after)
    log_every = live[0].config.train.log_every
    streams = pop_data.Streams(live)
    jitted = None
    step = start_step
    pending: tuple | None = None  # a step that only logs, fetched after the next is queued
    log.info("population of %d members from step %d to %d (%d data streams)", len(live),
             start_step, end_step, len(streams.groups))
    batch_K = streams.next_K(step) if step < end_step else None
    with preemption_lib.Preemption(log_every) as preemption:
        while step < end_step and not all(m.done for m in live):
            if jitted is None:
                jitted = pop_lib.jit_population_step(pop, batch_K)
            state_K, metrics_K, control = jitted(state_K, batch_K, control)
            step += 1
            if step == start_step + 1:  # exclude compilation from the throughput windows
                jax.block_until_ready(metrics_K)
                for m in live:
                    m.window_start, m.window_step = time.perf_counter(), step
            preempted = preemption.reached(step)  # the same answer on every process
            due = _due(live, step, end_step, log_every, preempted)
            positions = ([streams.state(i) for i in range(len(live))] if due.save_i else None)
            if step < end_step and not preempted:  # the next batch is read while this step runs
                batch_K = streams.next_K(step)
            if pending is not None:
                _after_step(live, *pending)
                pending = None
            if due.now:
                _after_step(live, state_K, metrics_K, control, step, due, peak_total,
                            positions)
            elif due.log_i:
                pending = (None, metrics_K, control, step, due, peak_total, None)
            if preempted:
                log.warning("SIGTERM: saved checkpoints at step %d; exiting", step)
                break
    if pending is not None:
        _after_step(live, *pending)
    for m in live:
        if m.checkpointer is not None:
            m.checkpointer.wait()
        if not m.done:
            m.status = "interrupted"
            loop.write_status(m.workdir, "interrupted", step)
    return step


class _Due(NamedTuple):
    """Which members log, save and evaluate after a step; `now`: handle it before the next step."""

    members: list[int]
    log_i: list[int]
    save_i: list[int]
    eval_i: list[int]
    now: bool


def _due(live: list[_Member], step: int, end_step: int, log_every: int, preempted: bool) -> _Due:
    """Returns what is due after `step` for the members still training."""
    members = [i for i, m in enumerate(live) if not m.done and step <= m.num_steps]
    log_i = [i for i in members if step % log_every == 0 or step in live[i].save_at
             or step == min(live[i].num_steps, end_step)]
    save_i = [i for i in members if step in live[i].save_at or preempted]
    eval_i = [i for i in members if live[i].evaluator is not None and live[i].should_eval(step)]
    ending = step == end_step or any(step == live[i].num_steps for i in members)
    return _Due(members, log_i, save_i, eval_i, bool(save_i or eval_i or ending or preempted))


def _after_step(live: list[_Member], state_K: Any, metrics_K: dict,
                control: dict, step: int, due: _Due, peak_total: float,
                positions: list[dict[str, Any]] | None) -> None:
    """Logs, checkpoints (`positions`: the members' data positions after `step`), evaluates
    and marks finished members after `step` (host side); `state_K` is None for a step that only
    logs; called only when output is due."""
    metrics, ctl = jax.device_get((metrics_K, control))  # the one sync, only when output is due
    for i in due.members:
        m = live[i]
        if m.done or ctl["alive_K"][i]:
            continue
        at, why = int(ctl["failed_at_K"][i]), pop_lib.describe_failure(
            int(ctl["failed_code_K"][i]), int(m.config.train.max_skipped_steps))
        m.status, m.done = "failed", True
        m.last_row = dict(m.last_row, step=at - 1)
        loop.write_status(m.workdir, "failed", at, f"FloatingPointError: {why} at step {at};"
                          f" the member was stopped (population training, "
                          f"train.on_nonfinite={m.config.train.on_nonfinite!r})",
                          skipped_steps=int(ctl["skipped_K"][i]))
        log.warning("member %s diverged at step %d (%s)", m.workdir.name, at, why)
    for i in due.log_i:
        m = live[i]
        if m.done:
            continue
        row = _log_row(m, metrics, i, step, peak_total)
        if m.metrics_file is not None:
            m.metrics_file.write(row)
            m.tb.write_scalars(step, row)
        m.last_row = row
    for i in due.save_i:
        m = live[i]
        if not m.done:
            m.checkpointer.save(step, pop_lib.member_state(state_K, i), positions[i], m.config)
    for i in due.eval_i:
        m = live[i]
        if not m.done:
            rows = m.evaluator(pop_lib.member_params(state_K, i), step, m.run)
            if m.eval_file is not None:
                m.eval_file.write_many(rows)
    for i in due.members:
        m = live[i]
        if not m.done and step == m.num_steps:
            m.checkpointer.wait()
            m.status, m.done = "completed", True
            loop.write_status(m.workdir, "completed", step)
