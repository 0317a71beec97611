"""Shared builders for the compression tests: a tiny trained run and reading a checkpoint's params."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from scaling import checkpoint as ckpt_lib
from scaling import config as config_lib
from scaling.evaluate import evaluate_run
from scaling.train import setup as setup_lib
from scaling.train.loop import train


def tiny_run_config(data_dir: pathlib.Path, num_steps: int = 12) -> Any:
    """Returns a tiny Transformer config on `stdlib_corpus/tiny` with an addition task mixed in."""
    c = config_lib.default_config()
    c.data.source = "mixture"
    c.data.task.name = "addition"
    c.data.task.mix_rate = 0.3
    c.data.task.eval_examples = 32
    c.data.task.params = {"n_digits": 2}
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(data_dir)
    c.data.seq_len = c.model.max_seq_len = 32
    c.data.eval_tokens = 2048
    c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.d_ff = 32, 2, 2, 64
    c.train.batch_size, c.train.num_steps, c.train.progress = 8, num_steps, False
    c.checkpoint.log_max = 4
    c.checkpoint.log_spaced = True
    return c


def shared_tiny_run(tmp_path_factory: Any, data_dir: pathlib.Path, num_steps: int = 12) -> pathlib.Path:
    """Returns the tiny run (checkpoints 1, 2, 4 and `num_steps`, the last one evaluated).

    Trained once per test session (per worker) in the session's base temporary directory, so the
    compression test modules share it; a completed run found there is reused as it is.
    """
    workdir = tmp_path_factory.getbasetemp() / f"compress_tiny_run_{num_steps}"
    status = workdir / "status.json"
    if not (status.exists() and json.loads(status.read_text())["status"] == "completed"
            and (workdir / "eval.jsonl").exists()):
        train(tiny_run_config(data_dir, num_steps), workdir)
        evaluate_run(workdir, str(num_steps), progress=False)
    return workdir


def load_params(run_dir: pathlib.Path, step: int) -> Any:
    """Returns the params of checkpoint `step` of a run as a tree of NumPy arrays."""
    config = config_lib.load_json(run_dir / "config.json")
    trainer = setup_lib.build(config)
    checkpointer = ckpt_lib.Checkpointer(run_dir, config)
    try:
        params = checkpointer.restore_params(step, trainer.abstract_state, trainer.shardings)
    finally:
        checkpointer.close()
    return jax.device_get(params)
