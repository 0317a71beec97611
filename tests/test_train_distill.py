"""Distillation in training (`distill.*`): a student of another size trained on a teacher run's
logits matches the teacher far better than the same student trained alone; mix 0 is the plain run;
run.json records the teacher; a resume reloads the recorded teacher step and continues exactly;
microbatches split the teacher's logits with the batch; bad input fails before anything compiles."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling import config as config_lib
from scaling import data as data_lib
from scaling.compress.distill import distillation_loss, kd_per_token
from scaling.train import loop
from scaling.train import population_step
from scaling.train import setup as setup_lib
from tests.compress_helpers import load_params
from tests.helpers import random_batch, tiny_lm_config

STEPS = 30


def task_config(**overrides):
    """Returns a tiny Transformer (d32, 2 layers) on the addition task; checkpoints 1, 2, 10, 20, 30."""
    return tiny_lm_config(**{"data.source": "task", "data.task.name": "addition",
                             "data.task.eval_examples": 64, "train.num_steps": STEPS,
                             "train.progress": False, "train.log_every": 1,
                             "checkpoint.log_max": 2, "checkpoint.every": 10, **overrides})


def student_config(teacher: pathlib.Path | str | None, **overrides):
    """Returns the student: half the teacher's width, one layer, another seed; distilled from
    `teacher` (T = 1, mix = 1 unless overridden) when given."""
    distill = {"distill.teacher": str(teacher), "distill.temperature": 1.0,
               "distill.mix": 1.0} if teacher is not None else {}
    return task_config(**{"model.d_model": 16, "model.n_layers": 1, "model.d_ff": 32, "seed": 1,
                          **distill, **overrides})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Returns the teacher run, a student distilled from it (T = 1, mix = 1) and the same
    student trained alone. The teacher is trained with label smoothing 0.5, so its next-token
    distributions differ clearly from what the data alone teaches."""
    root = tmp_path_factory.mktemp("distill")
    out = {"teacher": root / "teacher", "distilled": root / "distilled", "alone": root / "alone"}
    teacher = task_config(**{"train.label_smoothing": 0.5})
    assert loop.train(teacher, out["teacher"])["status"] == "completed"
    assert loop.train(student_config(out["teacher"]), out["distilled"])["status"] == "completed"
    assert loop.train(student_config(None), out["alone"])["status"] == "completed"
    return out


def metrics_rows(run_dir: pathlib.Path) -> list[dict]:
    """Returns the run's metrics.jsonl rows."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def flat_params(run_dir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    """Returns {path: value} of the params saved at `step` of `run_dir`."""
    leaves = jax.tree_util.tree_flatten_with_path(load_params(run_dir, step))[0]
    return {jax.tree_util.keystr(path): np.asarray(v) for path, v in leaves}


def held_out_kl(teacher_dir: pathlib.Path, student_dir: pathlib.Path) -> float:
    """Returns KL(teacher ‖ student) at T = 1 (nats/token) over the task's held-out answer tokens."""
    t_config = config_lib.load_json(teacher_dir / "config.json")
    s_config = config_lib.load_json(student_dir / "config.json")
    t_model, s_model = setup_lib.run_model(t_config), setup_lib.run_model(s_config)
    t_params, s_params = load_params(teacher_dir, STEPS), load_params(student_dir, STEPS)
    batches = data_lib.make_eval_batches(s_config)
    inputs, weights = (np.concatenate([b[k] for b in batches]) for k in ("inputs", "weights"))

    @jax.jit
    def kl_sum(inputs_BT: jax.Array, weights_BT: jax.Array) -> jax.Array:
        t_logits = t_model.apply({"params": t_params}, inputs_BT, deterministic=True)
        s_logits = s_model.apply({"params": s_params}, inputs_BT, deterministic=True)
        return jnp.sum(kd_per_token(s_logits, t_logits, 1.0) * weights_BT)

    return float(kl_sum(inputs, weights)) / float(np.sum(weights))


def test_a_distilled_student_matches_its_teacher_far_better_than_one_trained_alone(runs):
    distilled = held_out_kl(runs["teacher"], runs["distilled"])
    alone = held_out_kl(runs["teacher"], runs["alone"])
    assert distilled < 0.3 * alone, (distilled, alone)  # measured: 0.043 vs 0.53 nats/token
    rows = metrics_rows(runs["distilled"])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:  # `loss` stays the data cross-entropy, so curves compare with students alone
        assert r["distill_ce"] == pytest.approx(r["loss"], rel=1e-6)
        assert r["objective"] == pytest.approx(r["distill_kd"], rel=1e-5)  # mix = 1
    assert rows[-1]["distill_kd"] < 0.5 * rows[0]["distill_kd"]
    assert "distill_kd" not in metrics_rows(runs["alone"])[0]


def test_mix_zero_reproduces_the_plain_run(runs, tmp_path):
    workdir = tmp_path / "mix0"
    config = student_config(runs["teacher"], **{"distill.mix": 0.0, "distill.temperature": 2.0})
    assert loop.train(config, workdir)["status"] == "completed"
    rows, plain = metrics_rows(workdir), metrics_rows(runs["alone"])
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in plain], rtol=1e-5)
    np.testing.assert_allclose([r["objective"] for r in rows], [r["loss"] for r in rows],
                               rtol=1e-6)
    assert all(r["distill_kd"] > 0 for r in rows)  # the teacher was there, with weight 0
    ours, theirs = flat_params(workdir, STEPS), flat_params(runs["alone"], STEPS)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_run_json_records_the_teacher_and_a_resume_continues_exactly(runs, tmp_path):
    record = json.loads((runs["distilled"] / "run.json").read_text())["distill"]
    assert record["teacher"] == {"run": str(runs["teacher"].absolute()), "step": STEPS}
    assert (record["temperature"], record["mix"]) == (1.0, 1.0)
    assert 0 < record["teacher_n_params_nonembed"]
    assert record["teacher_forward_flops_per_token"] > 0
    teacher = tmp_path / "teacher"  # no step given: the newest, which a resume must keep
    shutil.copytree(runs["teacher"], teacher)
    workdir = tmp_path / "student"
    config = student_config(teacher)
    assert loop.train(config, workdir, stop_after=15)["status"] == "interrupted"
    # a newer teacher step must not sneak into the resume: with the recorded step gone, the
    # resume fails (naming the step) instead of silently taking the newest one left
    hidden = tmp_path / "hidden"
    (teacher / "checkpoints" / str(STEPS)).rename(hidden)
    with pytest.raises(config_lib.ConfigError,
                       match=rf"distill\.teacher.*no checkpoint at step {STEPS}"):
        loop.train(config, workdir)
    hidden.rename(teacher / "checkpoints" / str(STEPS))
    assert loop.train(config, workdir)["status"] == "completed"
    ours, theirs = flat_params(workdir, STEPS), flat_params(runs["distilled"], STEPS)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6, atol=1e-7, err_msg=key)
    steps = [r["step"] for r in metrics_rows(workdir)]
    assert steps == list(range(1, STEPS + 1))


def one_distilled_step(config, batch) -> tuple[dict, dict, object]:
    """Returns (params after one step, metrics, trainer) of `config` with its teacher loaded,
    on one device (the distilled runs above train on eight)."""
    devices = jax.devices()[:1]
    config_lib.validate(config, len(devices))
    trainer = setup_lib.build(config, devices)
    spec = setup_lib.resolve_teacher(config, num_devices=len(devices))
    trainer = trainer.with_teacher(setup_lib.load_teacher(spec, trainer.mesh, trainer.rules))
    state, metrics = trainer.jit_train_step(batch)(trainer.init_state(), batch)
    return jax.device_get(state.params), jax.device_get(metrics), trainer


def test_microbatches_give_the_same_update_with_distillation(runs):
    # SGD, so the comparison sees the gradient without Adam's amplification of tiny components;
    # zero weights make the microbatches' token counts unequal
    overrides = {"distill.mix": 0.3, "distill.temperature": 2.0, "train.batch_size": 16,
                 "optim.name": "sgd", "optim.lr": 0.5, "optim.b1": 0.0}
    batch = random_batch(student_config(None, **overrides), seed=3)
    batch["weights"][:5, 6:] = 0.0
    p1, m1, trainer = one_distilled_step(student_config(runs["teacher"], **overrides), batch)
    p2, m2, _ = one_distilled_step(
        student_config(runs["teacher"], **overrides, **{"train.microbatches": 2}), batch)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for k in ("loss", "objective", "distill_kd", "distill_ce", "grad_norm"):
        assert float(m1[k]) == pytest.approx(float(m2[k]), rel=1e-5), k
    # the step's objective is distillation_loss of the student's and the teacher's logits
    teacher = trainer.teacher
    t_logits = teacher.model.apply({"params": teacher.params}, batch["inputs"], deterministic=True)
    s_logits = trainer.model.apply({"params": trainer.init_state().params}, batch["inputs"],
                                   deterministic=True)
    loss, parts = distillation_loss(s_logits, t_logits, batch["targets"], batch["weights"],
                                    temperature=2.0, mix=0.3)
    assert float(m1["objective"]) == pytest.approx(float(loss), rel=1e-5)
    assert float(m1["distill_kd"]) == pytest.approx(float(parts["kd"]), rel=1e-5)
    assert float(m1["loss"]) == pytest.approx(float(parts["ce"]), rel=1e-5)


def edited_teacher(runs, tmp_path: pathlib.Path, **fields) -> pathlib.Path:
    """Returns a copy of the teacher run whose config.json has `fields` (dotted) changed."""
    copy = tmp_path / "teacher_copy"
    shutil.copytree(runs["teacher"], copy)
    values = json.loads((copy / "config.json").read_text())
    for dotted, value in fields.items():
        *parents, leaf = dotted.split(".")
        node = values
        for p in parents:
            node = node[p]
        node[leaf] = value
    (copy / "config.json").write_text(json.dumps(values))
    return copy


@pytest.mark.parametrize("case", ["missing_dir", "missing_step", "vocabulary", "too_short",
                                  "temperature", "mix_high", "mix_low"])
def test_bad_input_is_a_clear_error_before_anything_compiles(runs, tmp_path, monkeypatch, case):
    teacher = runs["teacher"]
    field, overrides, match = "distill.teacher", {}, None
    if case == "missing_dir":
        overrides, match = {"distill.teacher": str(tmp_path / "nope")}, "no such run directory"
    elif case == "missing_step":
        overrides = {"distill.teacher": f"{teacher}:7"}
        match = r"no checkpoint at step 7; it has steps \[1, 2, 10, 20, 30\]"
    elif case == "vocabulary":
        copy = edited_teacher(runs, tmp_path, **{"model.vocab_size": 128})
        overrides = {"distill.teacher": str(copy)}
        match = "model.vocab_size: teacher 128, student 64"
    elif case == "too_short":  # learned on 8-token rows: cannot read the student's 16
        copy = edited_teacher(runs, tmp_path, **{"model.max_seq_len": 8, "data.seq_len": 8})
        overrides, match = {"distill.teacher": str(copy)}, "exceeds model.max_seq_len=8"
    elif case == "temperature":
        field, overrides, match = "distill.temperature", {"distill.temperature": 0.0}, "> 0"
    else:
        field, match = "distill.mix", r"in \[0, 1\]"
        overrides = {"distill.mix": 1.5 if case == "mix_high" else -0.1}

    def no_build(*args, **kwargs):
        raise AssertionError("setup.build was reached: the error came too late")

    monkeypatch.setattr(setup_lib, "build", no_build)
    workdir = tmp_path / "student"
    with pytest.raises(config_lib.ConfigError, match=match) as err:
        loop.train(student_config(teacher, **overrides), workdir)
    assert err.value.field == field and f"config.{field}=" in str(err.value)
    assert not (workdir / "run.json").exists()  # nothing written


def test_cli_reports_a_missing_teacher_in_one_line(tmp_path, capsys):
    from scaling import cli

    code = cli.main(["scaling", "train", "--config", "configs/lm_tiny.py",
                     "--workdir", str(tmp_path / "run"), "--config.data.source=task",
                     "--config.data.task.name=addition",
                     f"--config.distill.teacher={tmp_path / 'missing'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("config.distill.teacher=" in line and "no such run directory" in line
               for line in err)
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_population_refuses_a_distilled_member_and_the_runner_trains_it_alone(tmp_path):
    from scaling.sweeps import runner, spec, testing
    from scaling.train.population import train_population

    configs = [student_config(tmp_path / "teacher"), student_config(tmp_path / "teacher", seed=2)]
    with pytest.raises(population_step.PopulationError, match=r"member 0 has "
                                                              r"config\.distill\.teacher="):
        train_population(configs, [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a" / "run.json").exists()
    sweep = testing.tiny_sweep(tmp_path, sizes=(3.4e3,))
    sweep.axes = ({"optim.lr": (3e-3, 1e-2)},)
    sweep.resources.population = 2
    assert len(runner.take_population([(r, 1) for r in spec.expand(sweep)], 2, tmp_path)) == 2
    sweep.base.distill.teacher = str(tmp_path / "teacher")
    queue = [(r, 1) for r in spec.expand(sweep)]
    assert [len(runner.take_population(queue, 2, tmp_path)) for _ in range(2)] == [1, 1]
