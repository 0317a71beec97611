"""Checkpoint retention keeps the log-spaced steps; the resume check lists what changed."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from scaling import checkpoint as ckpt_lib
from scaling import config as config_lib


def test_retention_never_deletes_log_spaced_checkpoints(tmp_path):
    c = config_lib.default_config()
    c.checkpoint.log_max = 8
    c.checkpoint.max_to_keep = 2
    checkpointer = ckpt_lib.Checkpointer(tmp_path, c)
    try:
        for step in (1, 2, 4, 8, 10, 20, 30, 40):
            checkpointer.save(step, {"w": jnp.full((3,), float(step))}, {"pos": step}, c)
        # the newest two plus every log-spaced one; 10 and 20 were deleted by retention
        assert checkpointer.all_steps() == [1, 2, 4, 8, 30, 40]
        assert checkpointer.latest_step() == 40
    finally:
        checkpointer.close()


def test_retention_off_keeps_everything(tmp_path):
    c = config_lib.default_config()
    c.checkpoint.log_max = 2
    checkpointer = ckpt_lib.Checkpointer(tmp_path, c)
    try:
        for step in (1, 2, 3, 5, 7):
            checkpointer.save(step, {"w": jnp.zeros(2)}, {}, c)
        assert checkpointer.all_steps() == [1, 2, 3, 5, 7]
    finally:
        checkpointer.close()


def test_check_resume_refuses_changes_that_alter_the_run():
    saved = config_lib.default_config()
    new = config_lib.default_config()
    new.optim.lr = 1e-4
    new.train.num_steps = 999
    new.model.d_model = 128
    new.train.log_every = 1  # allowed
    with pytest.raises(ckpt_lib.ResumeError) as info:
        ckpt_lib.check_resume(saved, new, 40, "runs/x")
    assert info.value.fields == ["model.d_model", "optim.lr", "train.num_steps"]
    message = str(info.value)
    assert "optim.lr: 0.003 → 0.0001" in message
    assert "model.d_model: 64 → 128" in message and "train.num_steps: 200 → 999" in message
    assert "train.log_every" not in message.split("Only")[0]
    assert "step 40" in message
    assert isinstance(info.value, config_lib.ConfigError)  # the CLI prints it in one block


def test_check_resume_allows_the_documented_fields():
    saved = config_lib.default_config()
    new = config_lib.default_config()
    new.train.log_every, new.train.eval_every, new.train.progress = 1, 50, False
    new.train.on_nonfinite = "rewind"
    new.mesh.data, new.mesh.fsdp = 2, 4
    new.name = "renamed"
    allowed = ckpt_lib.check_resume(saved, new, 10, "runs/x")
    assert sorted(allowed) == ["mesh.data", "mesh.fsdp", "name", "train.eval_every",
                               "train.log_every", "train.on_nonfinite", "train.progress"]
    assert set(allowed) <= set(ckpt_lib.RESUME_MUTABLE_FIELDS)
