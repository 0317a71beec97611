"""The training loop: the only place in training with side effects (files, signals, progress).

`train(config, workdir)` resolves and validates the config, builds the mesh, model, optimizer and
data iterator, resumes from the latest checkpoint if there is one, and runs the jitted, sharded
train step until the step budget is spent. It writes the run directory:

    workdir/config.json     resolved config
    workdir/run.json        run id, name, axes, N (total, non-embedding), FLOPs/token, steps
    workdir/metrics.jsonl   one JSON object per logged step (flushed per line, fsync'd at saves)
    workdir/eval.jsonl      evaluation rows (when evaluation is on)
    workdir/status.json     pending | running | completed | failed | interrupted
    workdir/tb/             TensorBoard event files
    workdir/checkpoints/    orbax checkpoints at the configured steps

SIGTERM (preemption) makes the loop save a checkpoint and return cleanly, at a step every process
of the run agrees on (`scaling.train.preemption`). The host never waits for the device per step:
a logged step's metrics are fetched after the next step is dispatched, the next batch is put on
the device while the current step runs, and the host waits only where it must (checkpoint,
evaluation, the last step).
A resume first compares the checkpoint's config with the requested one (`check_resume`) and
refuses a change that alters the run before anything in the directory is written. On resume, a
checkpoint whose evaluation rows are missing (a kill between save and evaluation) is evaluated
before training goes on. Non-finite steps are handled by `train.on_nonfinite` (see
`scaling.train.divergence`); no checkpoint is written from a state that has seen one.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import Any, Callable

import jax
import ml_collections

from scaling import checkpoint as ckpt_lib
from scaling import config as config_lib
from scaling import data as data_lib
from scaling import metrics_writer
from scaling import perf
from scaling.models import accounting
from scaling.models import lora as lora_lib
from scaling.train import divergence
from scaling.train import init_from as init_from_lib
from scaling.train import preemption as preemption_lib
from scaling.train import setup as setup_lib
from scaling.train import step as step_lib

log = logging.getLogger(__name__)

RUN_FORMAT_VERSION = 1


def write_json_atomic(path: pathlib.Path, value: Any) -> None:
    """Writes `value` as JSON to `path` via a temporary file and rename (never half-written)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_status(workdir: pathlib.Path, status: str, step: int, error: str | None = None,
                 **details: Any) -> None:
    """Writes `workdir/status.json` atomically (status, step, error, time and any `details`)."""
    if jax.process_index() != 0:
        return
    write_json_atomic(workdir / "status.json",
                      {"status": status, "step": int(step), "error": error, "time": time.time(),
                       **details})


def run_description(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Returns N (total, non-embedding), FLOPs per token and tokens per step for a resolved config."""
    return accounting.run_numbers(config)


def prepare_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                    num_steps: int) -> dict[str, Any]:
    """Writes config.json and run.json (keeping fields a sweep already wrote); returns run.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    run_path = workdir / "run.json"
    run = {}
    if run_path.exists():
        try:
            run = json.loads(run_path.read_text())
        except json.JSONDecodeError:
            log.warning("%s is corrupt; rewriting it", run_path)
    run.update({"version": RUN_FORMAT_VERSION, "id": config_lib.config_hash(config),
                "name": config.name or workdir.name, "num_steps": num_steps})
    run.setdefault("axes", {})
    run.update(run_description(config))
    if config.model.kind == "transformer":  # the backend's choice when model.scan_unroll is auto
        run["scan_unroll"] = config_lib.scan_unroll(config.model, jax.default_backend())
    if jax.process_index() == 0:
        (workdir / "config.json.tmp").write_text(config_lib.to_json(config))
        os.replace(workdir / "config.json.tmp", workdir / "config.json")
        write_json_atomic(run_path, run)
    return run


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled or jax.process_index() != 0,
                unit="step", dynamic_ncols=True, mininterval=1.0)


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          stop_after: int | None = None,
          evaluator: Callable[..., list[dict]] | None = None) -> dict[str, Any]:
    """Trains (or resumes) the run in `workdir`; returns a summary with the final step and loss.

    `stop_after` ends the loop early after that many total steps without marking the run completed
    (used to simulate interruptions); `evaluator(params, step, state_info) -> rows` runs at
    checkpoint steps when `train.eval_at_checkpoints` is set.
    """
    workdir = pathlib.Path(workdir)
    config_lib.validate(config, jax.device_count())  # before touching data or devices
    # from here on SIGTERM ends the run as "interrupted", at a step all processes agree on
    with preemption_lib.Preemption(config.train.log_every) as preemption:
        config = data_lib.resolve(config, workdir)
        config_lib.validate(config, jax.device_count())
        checkpointer = ckpt_lib.Checkpointer(workdir, config)
        try:
            latest = checkpointer.latest_step()
            if latest is not None:  # nothing in the run directory is written before this check
                ckpt_lib.check_resume(checkpointer.read_config(latest), config, latest, workdir)
            source = None  # init_from and LoRA modules: checked before anything is written
            if latest is None and config.train.init_from:
                source = init_from_lib.resolve(config.train.init_from)
            if latest is None and (source is not None or config.finetune.lora_rank > 0):
                params = setup_lib.abstract_params(config)  # raises on an unknown LoRA module
                if source is not None:
                    init_from_lib.check_shapes(source, params, added=lora_lib.is_adapter)
            teacher = None  # distillation: a resume reloads the teacher step it started with
            if config.distill.teacher:
                teacher = setup_lib.resolve_teacher(
                    config, workdir if latest is not None else None, jax.device_count())
        except BaseException:
            checkpointer.close()
            raise
        return _train_checked(config, workdir, checkpointer, latest, preemption,
                              stop_after=stop_after, evaluator=evaluator, source=source,
                              teacher=teacher)


def _train_checked(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                   checkpointer: ckpt_lib.Checkpointer, latest: int | None,
                   preemption: preemption_lib.Preemption, *, stop_after: int | None,
                   evaluator: Callable[..., list[dict]] | None,
                   source: init_from_lib.Source | None = None,
                   teacher: setup_lib.TeacherSpec | None = None) -> dict[str, Any]:
    """Runs the loop once the resume check passed; every exit writes status.json."""
    metrics_file = eval_file = tb = None
    step = latest or 0
    status = "running"
    details: dict[str, Any] = {}
    last_metrics: dict[str, float] = {}
    try:
        num_steps = config_lib.train_steps(config)
        run = prepare_workdir(config, workdir, num_steps)
        if source is not None:
            run["init_from"] = source.record()
        if teacher is not None:
            run["distill"] = teacher.record(config)
        if (source is not None or teacher is not None) and jax.process_index() == 0:
            write_json_atomic(workdir / "run.json", run)
        write_status(workdir, "running", step)
        trainer = setup_lib.build(config)
        if teacher is not None:
            trainer = trainer.with_teacher(
                setup_lib.load_teacher(teacher, trainer.mesh, trainer.rules))

        if evaluator is None:
            from scaling import evaluate as evaluate_lib

            evaluator = evaluate_lib.make_inline_evaluator(config, workdir, trainer.mesh,
                                                           trainer.model)
        data_iter = data_lib.make_train_iterator(config, workdir)
        if latest is not None:
            ckpt_lib.log_restore(latest)
            state, data_state = checkpointer.restore(latest, trainer.abstract_state,
                                                       trainer.shardings)
            data_iter.set_state(data_state)
            for name in ("metrics.jsonl", "eval.jsonl"):
                if jax.process_index() == 0:
                    metrics_writer.truncate_jsonl(workdir / name, latest)
        elif source is not None:
            state = trainer.init_state_from(source)
        else:
            state = trainer.init_state()
        start_step = int(jax.device_get(state.step))
        step = start_step

        jitted = None  # compiled on the first batch, whose array ranks fix the batch shardings

        save_at = set(ckpt_lib.save_steps(config, num_steps))
        per_device_peak, peak_source = perf.peak_flops_per_device(config.train.peak_flops,
                                                                  config.model.dtype)
        peak_total = perf.total_peak_flops(per_device_peak)
        log.info("run %s: N=%.3g (non-embedding), %.3g total params, %.3g FLOPs/token, %d steps; "
                 "peak %.3g FLOP/s (%s)", run["name"], run["n_params_nonembed"], run["n_params"],
                 run["flops_per_token"], num_steps, peak_total, peak_source)

        def open_metrics() -> metrics_writer.JsonlWriter | None:
            return (metrics_writer.JsonlWriter(workdir / "metrics.jsonl")
                    if jax.process_index() == 0 else None)

        metrics_file = open_metrics()
        eval_file = metrics_writer.JsonlWriter(workdir / "eval.jsonl") \
            if jax.process_index() == 0 and evaluator is not None else None
        tb = metrics_writer.TensorBoardWriter(workdir / "tb") if jax.process_index() == 0 else None

        tokens_per_step = run["tokens_per_step"]
        flops_per_step = run["flops_per_token"] * tokens_per_step
        end_step = num_steps if stop_after is None else min(num_steps, stop_after)
        every = config.train.eval_every

        def should_eval(s: int) -> bool:
            return ((config.train.eval_at_checkpoints and s in save_at)
                    or (every > 0 and (s % every == 0 or s == num_steps)))

        def evaluate(params: Any, s: int) -> None:
            rows = evaluator(params, s, run)
            if eval_file is not None:
                eval_file.write_many(rows)  # one write: a step's rows land together or not at all

        if evaluator is not None and latest is not None:
            # A kill between a checkpoint's save and its evaluation: evaluate it now.
            # (every process reads the log: the run directory is on a shared filesystem, as
            # orbax needs for multi-process checkpoints)
            done = metrics_writer.logged_steps(workdir / "eval.jsonl")
            for s in checkpointer.all_steps():
                if s <= latest and should_eval(s) and s not in done:
                    log.info("evaluating checkpoint %d, whose evaluation is missing", s)
                    evaluate(checkpointer.restore_params(s, trainer.abstract_state,
                                                         trainer.shardings), s)

        guard = divergence.Guard(config.train.on_nonfinite, config.train.max_skipped_steps)
        rewinds: list[dict[str, Any]] = []
        window = {"start": time.perf_counter(), "step": start_step}
        pending: tuple[int, dict[str, Any]] | None = None  # a logged step not yet fetched

        def log_row(s: int, metrics: dict[str, Any]) -> divergence.Event | None:
            """Checks steps <= s for non-finite values (raises, or returns a rewind Event),
            then writes step s's row; waits for step s only."""
            nonlocal last_metrics
            event = guard.check(upto=s)
            if event is not None:
                return event
            if guard.bad_steps:
                details["skipped_steps"] = guard.bad_steps
            row = {k: float(v) for k, v in jax.device_get(metrics).items()}
            row.update(step=s, tokens=s * tokens_per_step, flops=s * flops_per_step,
                       time=time.time())
            now = time.perf_counter()
            if s > window["step"]:
                tokens_per_s = (s - window["step"]) * tokens_per_step / max(
                    now - window["start"], 1e-9)
                row.update(tokens_per_s=tokens_per_s,
                           mfu=tokens_per_s * run["flops_per_token"] / peak_total)
            window.update(start=now, step=s)
            if metrics_file is not None:
                metrics_file.write(row)
                tb.write_scalars(s, row)
            last_metrics = row
            bar.update(s - bar.n)
            bar.set_postfix(loss=f"{row['loss']:.4f}",
                            tok_s=f"{row.get('tokens_per_s', 0.0):.3g}", refresh=False)
            return None

        batch = trainer.step_batch(next(data_iter)) if step < end_step else None
        with _progress(num_steps, start_step, config.train.progress) as bar:
            while step < end_step:
                if step == start_step and preemption.stopped_before_start():
                    status = "interrupted"  # SIGTERM before the first step: nothing new to save
                    log.warning("SIGTERM before step %d; exiting", step + 1)
                    break
                if jitted is None:
                    jitted = trainer.jit_train_step(batch)
                state, metrics = jitted(state, batch)
                step += 1
                guard.note(step, metrics["nonfinite"])
                data_state = data_iter.get_state()  # the position after this step's batch
                if step == start_step + 1:  # exclude compilation from the throughput window
                    jax.block_until_ready(metrics)
                    window.update(start=time.perf_counter(), step=step)
                preempted = preemption.reached(step)  # the same answer on every process
                saving = step in save_at or preempted
                evaluating = evaluator is not None and should_eval(step)
                logged = (step % config.train.log_every == 0 or step in save_at
                          or step == end_step)
                if step < end_step and not preempted:
                    # the next batch is read while this step runs
                    batch = trainer.step_batch(next(data_iter))
                # The previous logged step is fetched now that this one is queued behind it, so
                # the device never waits for the host's logging (nanodo's pattern).
                event = log_row(*pending) if pending is not None else None
                pending = None
                if event is None and (saving or evaluating or step == end_step):
                    # the host waits for this step anyway: check it now, always before a save
                    event = guard.check(upto=step) if not logged else log_row(step, metrics)
                    if event is None and guard.bad_steps:
                        details["skipped_steps"] = guard.bad_steps
                elif event is None and logged:
                    pending = (step, metrics)
                if event is not None:  # rewind
                    state, step = _rewind(config, trainer, checkpointer, data_iter, state,
                                          event, rewinds)
                    details["rewinds"] = rewinds
                    guard.reset()
                    if metrics_file is not None:
                        metrics_file.close()
                        metrics_writer.truncate_jsonl(workdir / "metrics.jsonl", step)
                        metrics_file = open_metrics()
                    if eval_file is not None:
                        eval_file.close()
                        metrics_writer.truncate_jsonl(workdir / "eval.jsonl", step)
                        eval_file = metrics_writer.JsonlWriter(workdir / "eval.jsonl")
                    write_status(workdir, "running", step, **details)
                    bar.reset(total=num_steps)
                    bar.update(step)
                    batch = trainer.step_batch(next(data_iter))
                    window.update(start=time.perf_counter(), step=step)
                    continue
                if saving:
                    if metrics_file is not None:  # the log reaches the disk before its checkpoint
                        metrics_file.sync()
                        tb.flush()
                    checkpointer.save(step, state, data_state, config)
                if evaluating:
                    evaluate(state.params, step)
                if preempted:
                    status = "interrupted"
                    log.warning("SIGTERM: saved a checkpoint at step %d; exiting", step)
                    break
            else:
                status = "completed" if step >= num_steps else "running"
        checkpointer.wait()
        if status == "running":
            status = "interrupted"
        write_status(workdir, status, step, **details)
    except KeyboardInterrupt as err:
        status = "interrupted"
        _write_final_status(workdir, status, step, f"KeyboardInterrupt: {err}", details)
        raise
    except FloatingPointError as err:
        status = "failed"
        if hasattr(err, "quantities"):
            details["nonfinite"] = {"step": err.step, "quantities": err.quantities}
        _write_final_status(workdir, status, step, f"{type(err).__name__}: {err}", details)
        raise
    except BaseException as err:
        status = "failed"
        _write_final_status(workdir, status, step, f"{type(err).__name__}: {err}", details)
        raise
    finally:
        checkpointer.close()
        for f in (metrics_file, eval_file, tb):
            if f is not None:
                f.close()
    return {"step": step, "status": status, "loss": last_metrics.get("loss"),
            "workdir": str(workdir)}


def _write_final_status(workdir: pathlib.Path, status: str, step: int, error: str,
                        details: dict[str, Any]) -> None:
    """Writes status.json on an exit by exception; a failure to write is logged, not raised, so
    the original exception is the one that propagates."""
    try:
        write_status(workdir, status, step, error, **details)
    except OSError as write_err:
        log.error("could not write %s/status.json (%s) after: %s", workdir, write_err, error)


def _rewind(config: ml_collections.ConfigDict, trainer: setup_lib.Trainer,
            checkpointer: ckpt_lib.Checkpointer, data_iter: Any, state: Any,
            event: divergence.Event, rewinds: list[dict[str, Any]]) -> tuple[Any, int]:
    """Restores the latest checkpoint with its LR times `train.rewind_lr_factor` (compounding
    over rewinds to the same checkpoint); returns (state, step). Raises FloatingPointError when
    there is no checkpoint or `train.max_rewinds` is spent."""
    t = config.train
    checkpointer.wait()
    latest = checkpointer.latest_step()
    if latest is None:
        raise divergence.divergence_error(event.step, event.quantities,
                                          " and there is no checkpoint to rewind to")
    if len(rewinds) >= t.max_rewinds:
        raise divergence.divergence_error(
            event.step, event.quantities,
            f" after {len(rewinds)} rewinds (train.max_rewinds={t.max_rewinds})")
    del state  # its buffers may be donated; the checkpoint replaces it
    restored, data_state = checkpointer.restore(latest, trainer.abstract_state,
                                                trainer.shardings)
    data_iter.set_state(data_state)
    factor = t.rewind_lr_factor ** (1 + sum(r["to_step"] == latest for r in rewinds))
    scaled = jax.jit(lambda s: step_lib.scale_lr(s, factor),
                     out_shardings=trainer.shardings)(restored)
    rewinds.append({"at_step": event.step, "quantities": event.quantities, "to_step": latest,
                    "lr_factor": factor})
    log.warning("non-finite %s at step %d: rewinding to checkpoint %d with the LR times %g",
                ", ".join(event.quantities), event.step, latest, factor)
    return scaled, latest
