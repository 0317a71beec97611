"""Divergence policy end to end: a batch that makes step 6 non-finite under stop | skip | rewind.

The poison is a NaN in step 6's loss weights (a corrupt batch): the loss, the gradients and the
updated parameters of that step are all non-finite, while every other step is ordinary.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import pytest

from scaling import checkpoint as ckpt_lib
from scaling import config as config_lib
from scaling import optim
from scaling.train import loop
from scaling.train import setup as setup_lib

BAD_STEP = 6


def small_config(data_dir: pathlib.Path, **overrides: Any) -> ml_collections.ConfigDict:
    """Returns a 12-step run of a one-layer LM; checkpoints at 1, 2, 4, 8 and 12."""
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(data_dir)
    c.data.seq_len = c.model.max_seq_len = 32
    c.data.eval_tokens = 2048
    c.model.d_model, c.model.n_layers, c.model.n_heads = 32, 1, 2
    c.train.batch_size = 8
    c.train.num_steps = 12
    c.train.log_every = 5
    c.train.progress = False
    c.checkpoint.log_max = 8
    c.checkpoint.every = 0
    c.optim.lr, c.optim.warmup_steps = 1e-2, 2
    for dotted, value in overrides.items():
        node = c
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture
def poison_step(monkeypatch):
    """Makes the BAD_STEP-th call of the train step (counted over the process) see NaN weights."""
    original = setup_lib.Trainer.jit_train_step
    calls = {"n": 0}

    def jit_train_step(self, example_batch):
        run = original(self, example_batch)

        def poisoned(state, batch_np):
            calls["n"] += 1
            if calls["n"] == BAD_STEP:
                batch_np = dict(batch_np, weights=np.full_like(batch_np["weights"], np.nan))
            return run(state, batch_np)

        return poisoned

    monkeypatch.setattr(setup_lib.Trainer, "jit_train_step", jit_train_step)
    return calls


def _restore(workdir: pathlib.Path, config: ml_collections.ConfigDict, step: int) -> Any:
    resolved = json.loads((workdir / "config.json").read_text())
    resolved = config_lib.from_dict(resolved)
    trainer = setup_lib.build(resolved)
    checkpointer = ckpt_lib.Checkpointer(workdir, resolved)
    try:
        state, _ = checkpointer.restore(step, trainer.abstract_state, trainer.shardings)
    finally:
        checkpointer.close()
    return state


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _metrics(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_stop_fails_before_saving_and_keeps_a_finite_latest(tmp_path, stdlib_tiny_data_dir,
                                                            poison_step):
    config = small_config(stdlib_tiny_data_dir)
    with pytest.raises(FloatingPointError, match=f"at step {BAD_STEP}"):
        loop.train(config, tmp_path)
    # the check ran at step 8 (a save step) before that save: nothing from the bad state is kept
    assert _checkpoint_steps(tmp_path) == [1, 2, 4]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and status["step"] == 8
    assert status["nonfinite"] == {"step": BAD_STEP,
                                   "quantities": ["loss", "grad_norm", "param_norm"]}
    assert status["error"].startswith("FloatingPointError: ")  # how the sweep runner sees it
    assert f"non-finite loss, grad_norm, param_norm at step {BAD_STEP}" in status["error"]
    state = _restore(tmp_path, config, 4)
    leaves = jax.tree.leaves(jax.device_get(state.params))
    assert all(np.isfinite(leaf).all() for leaf in leaves)
    assert int(state.step) == 4


def test_skip_drops_the_bad_update_and_completes(tmp_path, stdlib_tiny_data_dir, poison_step):
    config = small_config(stdlib_tiny_data_dir, **{"train.on_nonfinite": "skip",
                                                   "train.log_every": 1})
    summary = loop.train(config, tmp_path)
    assert summary["status"] == "completed" and summary["step"] == 12
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 13))
    by_step = {r["step"]: r for r in rows}
    assert by_step[BAD_STEP]["nonfinite"] == 7 and by_step[BAD_STEP]["loss"] is None
    assert all(r["nonfinite"] == 0 and np.isfinite(r["loss"]) for s, r in by_step.items()
               if s != BAD_STEP)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "completed" and status["skipped_steps"] == 1
    assert _checkpoint_steps(tmp_path) == [1, 2, 4, 8, 12]
    state = _restore(tmp_path, config, 12)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(state.params)))


def test_skip_fails_past_max_skipped_steps(tmp_path, stdlib_tiny_data_dir, poison_step):
    config = small_config(stdlib_tiny_data_dir, **{"train.on_nonfinite": "skip",
                                                   "train.max_skipped_steps": 0})
    with pytest.raises(FloatingPointError, match="max_skipped_steps=0"):
        loop.train(config, tmp_path)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"


def test_rewind_restores_the_latest_checkpoint_with_a_lower_lr(tmp_path, stdlib_tiny_data_dir,
                                                               poison_step):
    config = small_config(stdlib_tiny_data_dir, **{"train.on_nonfinite": "rewind",
                                                   "train.log_every": 1})
    summary = loop.train(config, tmp_path)
    assert summary["status"] == "completed" and summary["step"] == 12
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["rewinds"] == [{"at_step": BAD_STEP, "to_step": 4, "lr_factor": 0.5,
                                  "quantities": ["loss", "grad_norm", "param_norm"]}]
    rows = _metrics(tmp_path)
    # the log has each step once: the rows after the checkpoint were replaced by the replay
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(r["nonfinite"] == 0 for r in rows)
    # the replayed steps use half the schedule's LR; the steps before the checkpoint the full one
    hp = optim.schedule_hparams(config)
    for r in rows:
        full = float(optim.schedule_lr(r["step"] - 1, hp, config.optim.schedule))
        expected = full if r["step"] <= 4 else 0.5 * full
        assert r["lr"] == pytest.approx(expected, rel=1e-5), r["step"]
    state = _restore(tmp_path, config, 12)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(state.params)))


def test_rewind_without_a_checkpoint_fails(tmp_path, stdlib_tiny_data_dir, poison_step):
    config = small_config(stdlib_tiny_data_dir, **{"train.on_nonfinite": "rewind",
                                                   "checkpoint.log_spaced": False})
    with pytest.raises(FloatingPointError, match="no checkpoint to rewind to"):
        loop.train(config, tmp_path)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
