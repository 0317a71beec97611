"""The loop end to end on the offline corpus: loss falls, the run directory is complete."""

from __future__ import annotations

import json
import os
import signal

import jax.numpy as jnp
import pytest

from scaling import config as config_lib
from scaling.train import divergence
from scaling.train.loop import train
from scaling.train.preemption import Preemption


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, stdlib_tiny_data_dir):
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(stdlib_tiny_data_dir)
    c.data.seq_len = c.model.max_seq_len = 64
    c.data.eval_tokens = 4096
    c.model.d_model, c.model.n_layers, c.model.n_heads = 32, 2, 4
    c.train.batch_size = 8
    c.train.num_steps = 60
    c.train.log_every = 5
    c.train.eval_at_checkpoints = True
    c.train.eval_every = 25
    c.train.progress = False
    c.checkpoint.log_max = 32
    c.checkpoint.every = 0
    c.optim.lr, c.optim.warmup_steps = 1e-2, 5
    workdir = tmp_path_factory.mktemp("run")
    summary = train(c, workdir)
    return workdir, summary


def test_loss_decreases_and_run_completes(finished_run):
    workdir, summary = finished_run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "completed" and summary["step"] == 60
    first, last = rows[0]["loss"], rows[-1]["loss"]
    # byte-level text starts near ln(vocab) ~ 5.8 nats; 60 steps reach well below 3.5
    assert first > 4.5 and last < 3.5, (first, last)
    for key in ("loss", "grad_norm", "lr", "tokens", "flops", "tokens_per_s", "mfu"):
        assert key in rows[-1]
    assert rows[-1]["tokens"] == 60 * 8 * 64
    run = json.loads((workdir / "run.json").read_text())
    assert rows[-1]["flops"] == pytest.approx(run["flops_per_token"] * rows[-1]["tokens"])
    assert 0 < rows[-1]["mfu"] < 1


def test_run_directory_is_self_describing(finished_run):
    workdir, _ = finished_run
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["model"]["vocab_size"] > 256
    run = json.loads((workdir / "run.json").read_text())
    assert run["n_params_nonembed"] > 0 and run["n_params"] > run["n_params_nonembed"]
    assert json.loads((workdir / "status.json").read_text())["status"] == "completed"
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 2, 4, 8, 16, 32, 60]
    assert list((workdir / "tb").glob("events.out.tfevents.*"))


def test_inline_evaluation_at_every_checkpoint(finished_run):
    workdir, _ = finished_run
    rows = [json.loads(line) for line in (workdir / "eval.jsonl").read_text().splitlines()]
    val = {r["step"]: r["value"] for r in rows if r["metric"] == "val/loss"}
    # checkpoint steps plus every 25 steps (train.eval_every), each once
    assert sorted(val) == [1, 2, 4, 8, 16, 25, 32, 50, 60]
    assert len([r for r in rows if r["metric"] == "val/loss"]) == len(val)
    assert val[60] < val[1] - 1.0


def test_guard_reads_only_the_steps_up_to_the_fetched_one():
    # the loop checks step s's predecessors one step late: a bad step after s is not seen yet
    guard = divergence.Guard("skip", max_skipped_steps=5)
    for step, mask in ((1, 0), (2, 0), (3, 1), (4, 0), (5, 2)):
        guard.note(step, jnp.int32(mask))
    assert guard.check(upto=2) is None and guard.bad_steps == 0
    assert guard.check(upto=4) is None and guard.bad_steps == 1
    event = guard.read()
    assert (event.step, event.quantities, event.count) == (3, ["loss"], 2)
    stop = divergence.Guard("stop", max_skipped_steps=0)
    stop.note(7, jnp.int32(4))
    with pytest.raises(FloatingPointError, match="param_norm at step 7"):
        stop.check(upto=7)


def test_single_process_preemption_is_a_local_flag_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with Preemption() as preemption:
        assert preemption.mode == "local" and not preemption.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.reached(2) and preemption.stopped_before_start()
    assert signal.getsignal(signal.SIGTERM) == before
