"""`train.init_from = RUN_DIR[:STEP]`: parameters from another run's checkpoint, fresh optimizer
and schedule, the source recorded in run.json, clear errors before anything is written, and a
resume that reads the run's own checkpoint."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from scaling import config as config_lib
from scaling.train import init_from as init_from_lib
from scaling.train import loop
from scaling.train import setup as setup_lib
from tests.helpers import tiny_lm_config


def task_config(**overrides):
    """Returns a tiny Transformer on the addition task, 4 steps, checkpoints at 1, 2, 4."""
    c = tiny_lm_config(**{"data.source": "task", "data.task.name": "addition",
                          "train.num_steps": 4, "train.progress": False,
                          "checkpoint.log_max": 2, **overrides})
    return c


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> pathlib.Path:
    """Returns a completed 4-step run with checkpoints at steps 1, 2 and 4."""
    workdir = tmp_path_factory.mktemp("init_from") / "source"
    assert loop.train(task_config(), workdir)["status"] == "completed"
    return workdir


def checkpoint_params(run_dir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    """Returns {path: value} of the params saved at `step` of `run_dir`."""
    config = task_config()
    trainer = setup_lib.build(config)
    source = init_from_lib.Source(run_dir.absolute(), step)
    params = init_from_lib.load_params(source, trainer.abstract_state.params,
                                       trainer.shardings.params)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(k.key for k in path): np.asarray(v) for path, v in flat}


def test_parse_spec():
    assert init_from_lib.parse_spec("runs/a:12") == (pathlib.Path("runs/a"), 12)
    assert init_from_lib.parse_spec("runs/a") == (pathlib.Path("runs/a"), None)
    assert init_from_lib.parse_spec("runs/a:b") == (pathlib.Path("runs/a:b"), None)


def test_state_takes_the_source_params_with_a_fresh_optimizer(source_run):
    config = task_config(**{"train.init_from": f"{source_run}:2"})
    source = init_from_lib.resolve(config.train.init_from)
    assert source.step == 2
    trainer = setup_lib.build(config)
    state = trainer.init_state_from(source)
    fresh = trainer.init_state()
    saved = checkpoint_params(source_run, 2)
    ours = {"/".join(k.key for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    assert ours.keys() == saved.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], saved[k], err_msg=k)  # bit for bit
    # ...and they are not the fresh initialization (the source trained 2 steps)
    assert any(not np.array_equal(ours[k], np.asarray(v)) for k, v in
               zip(ours, jax.tree.leaves(fresh.params)))
    assert int(state.step) == 0
    # the optimizer state is fresh: same as an untrained run's (Adam moments zero, count 0)
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(fresh.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_reads_its_own_checkpoint_and_run_json_records_the_source(source_run, tmp_path):
    copy = tmp_path / "source_copy"
    shutil.copytree(source_run, copy)
    config = task_config(**{"train.init_from": str(copy)})  # no step: the newest
    workdir = tmp_path / "ft"
    assert loop.train(config, workdir, stop_after=2)["status"] == "interrupted"
    assert json.loads((workdir / "run.json").read_text())["init_from"] == {
        "run": str(copy.absolute()), "step": 4}
    shutil.rmtree(copy)  # a resume must not need the source any more
    out = loop.train(config, workdir)
    assert out["status"] == "completed" and out["step"] == 4
    assert json.loads((workdir / "run.json").read_text())["init_from"]["step"] == 4
    steps = [json.loads(line)["step"] for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # continued, not restarted


def test_missing_run_directory_is_a_clear_error(tmp_path):
    config = task_config(**{"train.init_from": str(tmp_path / "nope")})
    with pytest.raises(config_lib.ConfigError, match=r"train\.init_from.*no such run directory"):
        loop.train(config, tmp_path / "ft")
    assert not (tmp_path / "ft" / "run.json").exists()  # nothing written


def test_missing_step_lists_the_steps(source_run, tmp_path):
    config = task_config(**{"train.init_from": f"{source_run}:3"})
    with pytest.raises(config_lib.ConfigError,
                       match=r"no checkpoint at step 3; it has steps \[1, 2, 4\]"):
        loop.train(config, tmp_path / "ft")
    assert not (tmp_path / "ft" / "run.json").exists()


def test_shape_mismatch_names_the_parameter_and_both_shapes(source_run, tmp_path):
    config = task_config(**{"train.init_from": str(source_run), "model.d_ff": 48})
    with pytest.raises(config_lib.ConfigError) as err:
        loop.train(config, tmp_path / "ft")
    message = str(err.value)
    assert "train.init_from" in message
    assert "parameter layers/mlp/wo: shape (2, 64, 32)" in message
    assert "but (2, 48, 32) in this model" in message
    assert not (tmp_path / "ft" / "run.json").exists()


def test_missing_parameter_is_named(source_run, tmp_path):
    config = task_config(**{"train.init_from": str(source_run), "model.tie_embeddings": False})
    with pytest.raises(config_lib.ConfigError, match=r"parameter unembed \(32, \d+\) of this "
                                                     r"model is not in"):
        loop.train(config, tmp_path / "ft")


def test_cli_reports_a_bad_source_in_one_line(tmp_path, capsys):
    from scaling import cli

    code = cli.main(["scaling", "train", "--config", "configs/lm_tiny.py",
                     "--workdir", str(tmp_path / "run"), "--config.data.source=task",
                     "--config.data.task.name=addition",
                     f"--config.train.init_from={tmp_path / 'missing'}:8"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("config.train.init_from=" in line and "no such run directory" in line
               for line in err)
    assert not (tmp_path / "run" / "run.json").exists()
