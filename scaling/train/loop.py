"""The training loop: the only place in training with side effects (files, signals, progress).

`train(config, workdir)` resolves and validates the config, builds the mesh, model, optimizer and
data iterator, resumes from the latest checkpoint if there is one, and runs the jitted, sharded
train step until the step budget is spent. It writes the run directory:

    workdir/config.json     resolved config
    workdir/run.json        run id, name, axes, N (total, non-embedding), FLOPs/token, steps
    workdir/metrics.jsonl   one JSON object per logged step (flushed per line)
    workdir/eval.jsonl      evaluation rows (when evaluation is on)
    workdir/status.json     pending | running | completed | failed | interrupted
    workdir/tb/             TensorBoard event files
    workdir/checkpoints/    orbax checkpoints at the configured steps

SIGTERM (preemption) makes the loop save a checkpoint at the current step and return cleanly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import signal
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from scaling import checkpoint as ckpt_lib
from scaling import config as config_lib
from scaling import data as data_lib
from scaling import metrics_writer
from scaling import perf
from scaling.models import accounting
from scaling.train import setup as setup_lib

log = logging.getLogger(__name__)

RUN_FORMAT_VERSION = 1


def write_json_atomic(path: pathlib.Path, value: Any) -> None:
    """Writes `value` as JSON to `path` via a temporary file and rename (never half-written)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_status(workdir: pathlib.Path, status: str, step: int, error: str | None = None) -> None:
    """Writes `workdir/status.json` atomically."""
    if jax.process_index() != 0:
        return
    write_json_atomic(workdir / "status.json",
                      {"status": status, "step": int(step), "error": error, "time": time.time()})


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
    if jax.process_index() == 0:
        (workdir / "config.json.tmp").write_text(config_lib.to_json(config))
        os.replace(workdir / "config.json.tmp", workdir / "config.json")
        write_json_atomic(run_path, run)
    return run


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_Preemption":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


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
    config = data_lib.resolve(config, workdir)
    config_lib.validate(config, jax.device_count())
    num_steps = config_lib.train_steps(config)
    run = prepare_workdir(config, workdir, num_steps)
    write_status(workdir, "running", 0)
    checkpointer = None
    metrics_file = eval_file = tb = None
    step = 0
    try:

        trainer = setup_lib.build(config)

        if evaluator is None:
            from scaling import evaluate as evaluate_lib

            evaluator = evaluate_lib.make_inline_evaluator(config, workdir, trainer.mesh,
                                                           trainer.model)
        checkpointer = ckpt_lib.Checkpointer(workdir, config)
        data_iter = data_lib.make_train_iterator(config, workdir)
        latest = checkpointer.latest_step()
        if latest is not None:
            ckpt_lib.log_restore(latest)
            state, data_state = checkpointer.restore(latest, trainer.abstract_state,
                                                       trainer.shardings)
            data_iter.set_state(data_state)
            for name in ("metrics.jsonl", "eval.jsonl"):
                if jax.process_index() == 0:
                    metrics_writer.truncate_jsonl(workdir / name, latest)
        else:
            state = trainer.init_state()
        start_step = int(jax.device_get(state.step))

        jitted = None  # compiled on the first batch, whose array ranks fix the batch shardings

        save_at = set(ckpt_lib.save_steps(config, num_steps))
        per_device_peak, peak_source = perf.peak_flops_per_device(config.train.peak_flops,
                                                                  config.model.dtype)
        peak_total = perf.total_peak_flops(per_device_peak)
        log.info("run %s: N=%.3g (non-embedding), %.3g total params, %.3g FLOPs/token, %d steps; "
                 "peak %.3g FLOP/s (%s)", run["name"], run["n_params_nonembed"], run["n_params"],
                 run["flops_per_token"], num_steps, peak_total, peak_source)

        metrics_file = metrics_writer.JsonlWriter(workdir / "metrics.jsonl") \
            if jax.process_index() == 0 else None
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

        last_metrics: dict[str, float] = {}
        step = start_step
        status = "running"
        window_start, window_steps = time.perf_counter(), 0
        with _Preemption() as preemption, _progress(num_steps, start_step,
                                                    config.train.progress) as bar:
            while step < end_step:
                batch_np = next(data_iter)
                if jitted is None:
                    jitted = trainer.jit_train_step(batch_np)
                state, metrics = jitted(state, batch_np)
                step += 1
                window_steps += 1
                if step == start_step + 1:  # exclude compilation from the throughput window
                    jax.block_until_ready(metrics)
                    window_start, window_steps = time.perf_counter(), 0
                if step % config.train.log_every == 0 or step in save_at or step == end_step:
                    row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    row.update(step=step, tokens=step * tokens_per_step,
                               flops=step * flops_per_step, time=time.time())
                    if window_steps:
                        elapsed = time.perf_counter() - window_start
                        tokens_per_s = window_steps * tokens_per_step / max(elapsed, 1e-9)
                        row.update(tokens_per_s=tokens_per_s,
                                   mfu=tokens_per_s * run["flops_per_token"] / peak_total)
                    if metrics_file is not None:
                        metrics_file.write(row)
                        tb.write_scalars(step, row)
                    last_metrics = row
                    window_start, window_steps = time.perf_counter(), 0
                    if not math.isfinite(row["loss"]):
                        raise FloatingPointError(f"loss is {row['loss']} at step {step}")
                    bar.set_postfix(loss=f"{row['loss']:.4f}",
                                    tok_s=f"{row.get('tokens_per_s', 0.0):.3g}", refresh=False)
                bar.update(1)
                if step in save_at or preemption.requested:
                    checkpointer.save(step, state, data_iter.get_state(), config)
                if evaluator is not None and should_eval(step):
                    rows = evaluator(state.params, step, run)
                    if eval_file is not None:
                        eval_file.write_many(rows)
                if preemption.requested:
                    status = "interrupted"
                    log.warning("SIGTERM: saved a checkpoint at step %d; exiting", step)
                    break
            else:
                status = "completed" if step >= num_steps else "running"
        checkpointer.wait()
        write_status(workdir, status if status != "running" else "interrupted", step)
    except BaseException as err:
        write_status(workdir, "failed", step, f"{type(err).__name__}: {err}")
        raise
    finally:
        if checkpointer is not None:
            checkpointer.close()
        for f in (metrics_file, eval_file, tb):
            if f is not None:
                f.close()
    return {"step": step, "status": status, "loss": last_metrics.get("loss"),
            "workdir": str(workdir)}
