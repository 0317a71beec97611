"""Population training: members equal their single runs, resume exactly, fail alone."""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import re
import types

import numpy as np
import orbax.checkpoint as ocp
import pytest

from scaling import config as config_lib
from scaling.train import population_data, population_step
from scaling.train.loop import train
from scaling.train.population import train_population

# Four members: different peak LR, seed (init + data order), weight decay and length; the last
# differs from the first only in its LR, so the two read one data stream.
MEMBERS = [dict(lr=1e-2, seed=0, wd=0.1, steps=12), dict(lr=3e-3, seed=1, wd=0.1, steps=12),
           dict(lr=1e-2, seed=2, wd=0.0, steps=8), dict(lr=3e-3, seed=0, wd=0.1, steps=12)]
K = len(MEMBERS)
# vmapped matmuls may sum in another order than single ones: float32 round-off, grown over steps
LOSS_ATOL, PARAM_ATOL = 1e-4, 1e-4


def _config(data_dir: pathlib.Path, lr: float, seed: int, wd: float, steps: int
            ) -> config_lib.ml_collections.ConfigDict:
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(data_dir)
    c.data.seq_len = c.model.max_seq_len = 32
    c.model.d_model, c.model.n_layers, c.model.n_heads = 32, 1, 2
    c.train.batch_size = 8
    c.train.num_steps = steps
    c.train.log_every = 1
    c.train.progress = False
    c.checkpoint.log_max = 4
    c.checkpoint.every = 0
    c.optim.lr, c.optim.weight_decay, c.optim.warmup_steps = lr, wd, 2
    c.seed = seed
    return c


def _rows(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _status(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "status.json").read_text())


def _params(workdir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    manager = ocp.CheckpointManager(workdir.absolute() / "checkpoints", item_names=("state",))
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    leaves = ocp.tree.to_flat_dict(state["state"]["params"])
    manager.close()
    return {"/".join(map(str, k)): np.asarray(v) for k, v in leaves.items()}


@contextlib.contextmanager
def _log_records(name: str):
    """Yields the list of records logged to logger `name` (at INFO and above) inside the block."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def population_and_singles(tmp_path_factory, stdlib_tiny_data_dir):
    root = tmp_path_factory.mktemp("population")
    configs = [_config(stdlib_tiny_data_dir, **m) for m in MEMBERS]
    pop_dirs = [root / f"pop{i}" for i in range(len(configs))]
    with _log_records("scaling.train.population") as records:
        summaries = train_population(configs, pop_dirs)
    # members 0 and 3 share one stream: 3 streams are read, not 4
    assert any(f"population of {K} members from step 0 to 12 (3 data streams)" in r.getMessage()
               for r in records), [r.getMessage() for r in records]
    single_dirs = [root / f"single{i}" for i in range(len(configs))]
    for c, d in zip(configs, single_dirs):
        train(c, d)
    return configs, pop_dirs, single_dirs, summaries


def test_members_equal_their_single_runs(population_and_singles):
    _, pop_dirs, single_dirs, summaries = population_and_singles
    assert [s["status"] for s in summaries] == ["completed"] * K
    for m, pop_dir, single_dir in zip(MEMBERS, pop_dirs, single_dirs):
        pop_rows, single_rows = _rows(pop_dir), _rows(single_dir)
        assert [r["step"] for r in pop_rows] == list(range(1, m["steps"] + 1))
        assert [r["step"] for r in pop_rows] == [r["step"] for r in single_rows]
        for key in ("loss", "grad_norm", "lr", "param_norm"):
            np.testing.assert_allclose([r[key] for r in pop_rows], [r[key] for r in single_rows],
                                       atol=LOSS_ATOL, rtol=1e-4, err_msg=f"{pop_dir} {key}")
        assert pop_rows[-1]["tokens"] == single_rows[-1]["tokens"] == m["steps"] * 8 * 32
        steps = sorted(int(p.name) for p in (pop_dir / "checkpoints").iterdir())
        assert steps == sorted(int(p.name) for p in (single_dir / "checkpoints").iterdir())
        pop_params, single_params = _params(pop_dir, steps[-1]), _params(single_dir, steps[-1])
        assert pop_params.keys() == single_params.keys()
        for name in pop_params:
            np.testing.assert_allclose(pop_params[name], single_params[name], atol=PARAM_ATOL,
                                       err_msg=name)
        assert _status(pop_dir)["status"] == "completed"
        assert _status(pop_dir)["step"] == m["steps"]
        run = json.loads((pop_dir / "run.json").read_text())
        assert run == {**json.loads((single_dir / "run.json").read_text()), "name": pop_dir.name}
    # the members really differ: another LR, seed or decay gives another curve
    losses = [_rows(d)[7]["loss"] for d in pop_dirs]
    assert len({round(x, 4) for x in losses}) == K


def test_killed_population_resumes_exactly(population_and_singles, tmp_path):
    configs, pop_dirs, _, _ = population_and_singles
    dirs = [tmp_path / f"m{i}" for i in range(len(configs))]
    first = train_population(configs, dirs, stop_after=6)  # latest checkpoint: step 4
    assert [s["status"] for s in first] == ["interrupted"] * K
    assert [_rows(d)[-1]["step"] for d in dirs] == [6] * K
    summaries = train_population(configs, dirs)
    assert [s["status"] for s in summaries] == ["completed"] * K
    for resumed, straight in zip(dirs, pop_dirs):
        a, b = _rows(resumed), _rows(straight)
        assert [r["step"] for r in a] == [r["step"] for r in b]  # steps 5, 6 re-logged once
        for key in ("loss", "grad_norm", "param_norm"):
            assert [r[key] for r in a] == [r[key] for r in b], (resumed, key)
        last = max(int(p.name) for p in (straight / "checkpoints").iterdir())
        pa, pb = _params(resumed, last), _params(straight, last)
        for name in pa:
            np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


def test_diverging_member_fails_alone(population_and_singles, tmp_path):
    configs, pop_dirs, _, _ = population_and_singles
    bad = configs[1].copy_and_resolve_references()
    bad.optim.lr = 1e30  # step 1 runs at LR 0 (warmup); step 2's update overflows the parameters
    members = [configs[0], bad, *configs[2:]]
    dirs = [tmp_path / f"m{i}" for i in range(K)]
    summaries = train_population(members, dirs)
    assert [s["status"] for s in summaries] == ["completed", "failed"] + ["completed"] * (K - 2)
    status = _status(dirs[1])
    assert status["status"] == "failed" and status["step"] == 2
    assert "param_norm" in status["error"] and "not finite" in status["error"]
    # its checkpoints stop at the last finite state
    assert sorted(int(p.name) for p in (dirs[1] / "checkpoints").iterdir()) == [1]
    for i in (0, *range(2, K)):  # the others are untouched by their neighbour's divergence
        assert [r["loss"] for r in _rows(dirs[i])] == [r["loss"] for r in _rows(pop_dirs[i])]
    # a later call leaves the finished members alone
    again = train_population(members, dirs)
    assert [s["status"] for s in again] == ["completed", "failed"] + ["completed"] * (K - 2)


def test_members_of_different_shape_are_an_error_before_compiling(tmp_path,
                                                                  stdlib_tiny_data_dir):
    a = _config(stdlib_tiny_data_dir, **MEMBERS[0])
    b = _config(stdlib_tiny_data_dir, **MEMBERS[1])
    b.model.d_model = 64
    dirs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(population_step.PopulationError, match=r"config\.model\.d_model"):
        train_population([a, b], dirs)
    assert not any(d.exists() for d in dirs)
    c = _config(stdlib_tiny_data_dir, **MEMBERS[1])
    c.optim.name = "lion"
    with pytest.raises(population_step.PopulationError, match=r"config\.optim\.name"):
        population_step.check_members([a, c])
    with pytest.raises(population_step.PopulationError, match="workdir"):
        train_population([a, a], [tmp_path / "x", tmp_path / "x"])


def test_skip_policy_counts_skipped_steps_and_fails_a_member_past_the_limit(
        population_and_singles, tmp_path):
    configs, pop_dirs, _, _ = population_and_singles
    members = [c.copy_and_resolve_references() for c in configs]
    for c in members:
        c.train.on_nonfinite, c.train.max_skipped_steps = "skip", 3
    members[1].optim.lr = 1e30  # every update from step 2 on overflows: skipped, then failed
    dirs = [tmp_path / f"m{i}" for i in range(K)]
    summaries = train_population(members, dirs)
    assert [s["status"] for s in summaries] == ["completed", "failed"] + ["completed"] * (K - 2)
    status = _status(dirs[1])
    assert "more than 3 skipped steps" in status["error"]
    assert status["error"].startswith("FloatingPointError") and status["skipped_steps"] == 4
    assert status["step"] == 5  # steps 2, 3, 4 skipped; the 4th skip (step 5) stops it
    for i in (0, *range(2, K)):  # finite members are unaffected by the policy
        assert [r["loss"] for r in _rows(dirs[i])] == [r["loss"] for r in _rows(pop_dirs[i])]


def test_rewind_policy_is_refused_before_compiling(tmp_path, stdlib_tiny_data_dir):
    a = _config(stdlib_tiny_data_dir, **MEMBERS[0])
    a.train.on_nonfinite = "rewind"
    with pytest.raises(population_step.PopulationError, match="on_nonfinite='rewind'"):
        train_population([a, _config(stdlib_tiny_data_dir, **MEMBERS[1])],
                         [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()


def test_members_that_start_from_a_checkpoint_equal_their_single_runs(
        population_and_singles, stdlib_tiny_data_dir, tmp_path):
    """`train.init_from` members (from two steps of one source run) take the source's parameters
    with a fresh optimizer and schedule, exactly as the same runs trained alone: a fine-tuning
    sweep's data sizes and seeds train together."""
    from scaling.sweeps import runner, spec, testing

    source = population_and_singles[1][0]
    steps = sorted(int(p.name) for p in (source / "checkpoints").iterdir())
    configs = []
    for lr, seed, spec_ in ((3e-3, 3, str(source)), (1e-3, 4, f"{source}:{steps[0]}")):
        c = _config(stdlib_tiny_data_dir, lr=lr, seed=seed, wd=0.1, steps=6)
        c.train.init_from = spec_
        configs.append(c)
    pop_dirs = [tmp_path / f"pop{i}" for i in range(2)]
    summaries = train_population(configs, pop_dirs)
    assert [s["status"] for s in summaries] == ["completed"] * 2
    for c, pop_dir, step in zip(configs, pop_dirs, (steps[-1], steps[0])):
        single_dir = tmp_path / f"single-{pop_dir.name}"
        train(c, single_dir)
        pop_rows, single_rows = _rows(pop_dir), _rows(single_dir)
        for key in ("loss", "grad_norm", "lr", "param_norm"):
            np.testing.assert_allclose([r[key] for r in pop_rows], [r[key] for r in single_rows],
                                       atol=LOSS_ATOL, rtol=1e-4, err_msg=f"{pop_dir} {key}")
        pop_params, single_params = _params(pop_dir, 6), _params(single_dir, 6)
        for name in single_params:
            np.testing.assert_allclose(pop_params[name], single_params[name], atol=PARAM_ATOL,
                                       err_msg=name)
        run = json.loads((pop_dir / "run.json").read_text())
        assert run["init_from"] == {"run": str(source.absolute()), "step": step}
        assert run == {**json.loads((single_dir / "run.json").read_text()), "name": pop_dir.name}
    # the source's parameters, not a fresh init: the first loss is the trained model's
    fresh = _rows(population_and_singles[1][2])[0]["loss"]  # member 2 trained from scratch
    assert _rows(pop_dirs[0])[0]["loss"] < fresh - 0.5
    # a missing source is a clear error naming the field, before any member directory is written
    bad = _config(stdlib_tiny_data_dir, **MEMBERS[0])
    bad.train.init_from = str(tmp_path / "nope")
    with pytest.raises(config_lib.ConfigError, match=r"train\.init_from.*no such run directory"):
        train_population([configs[0], bad], [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # and the sweep runner groups such runs into populations
    sweep = testing.tiny_sweep(stdlib_tiny_data_dir, sizes=(3.4e3,))
    sweep.axes = ({"optim.lr": (3e-3, 1e-2)},)
    sweep.base.train.init_from = str(source)
    queue = [(r, 1) for r in spec.expand(sweep)]
    assert len(runner.take_population(queue, 2, tmp_path)) == 2


def test_lora_members_equal_their_single_runs_and_leave_the_base_bit_identical(
        population_and_singles, stdlib_tiny_data_dir, tmp_path):
    source = population_and_singles[1][0]
    last = max(int(p.name) for p in (source / "checkpoints").iterdir())
    configs = []
    for lr, seed in ((1e-2, 5), (3e-3, 6)):
        c = _config(stdlib_tiny_data_dir, lr=lr, seed=seed, wd=0.1, steps=4)
        c.train.init_from = str(source)
        c.finetune.lora_rank = 4
        configs.append(c)
    pop_dirs = [tmp_path / f"lora{i}" for i in range(2)]
    assert [s["status"] for s in train_population(configs, pop_dirs)] == ["completed"] * 2
    base = _params(source, last)
    for pop_dir in pop_dirs:  # the frozen base: bit-identical to the source in every member
        ours = _params(pop_dir, 4)
        assert ours.keys() > base.keys()
        for name in base:
            np.testing.assert_array_equal(ours[name], base[name], err_msg=name)
    train(configs[0], tmp_path / "single")  # member 0 alone: the same curve and adapters
    np.testing.assert_allclose([r["loss"] for r in _rows(pop_dirs[0])],
                               [r["loss"] for r in _rows(tmp_path / "single")], atol=LOSS_ATOL, rtol=1e-4)
    ours, theirs = _params(pop_dirs[0], 4), _params(tmp_path / "single", 4)
    assert ours.keys() == theirs.keys()
    for name in ours.keys() - base.keys():
        np.testing.assert_allclose(ours[name], theirs[name], atol=PARAM_ATOL, err_msg=name)
    # the two members' adapters differ (another LR and seed)
    other = _params(pop_dirs[1], 4)
    assert any(not np.allclose(ours[k], other[k]) for k in ours.keys() - base.keys())


@pytest.mark.parametrize("field, value, says", [
    ("distill.teacher", "teacher/run", "config.distill.teacher='teacher/run'"),
])
def test_runs_that_distill_train_alone(tmp_path, stdlib_tiny_data_dir, field, value, says):
    """The population step has no teacher forward pass: a member with a teacher would silently
    train without it, so it is refused and the runner keeps it alone."""
    from scaling.sweeps import runner, spec, testing

    a, b = (_config(stdlib_tiny_data_dir, **MEMBERS[i]) for i in (0, 1))
    for c in (a, b):
        section, key = field.split(".")
        c[section][key] = value
    with pytest.raises(population_step.PopulationError, match=re.escape(f"member 0 has {says}")):
        train_population([a, b], [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()
    sweep = testing.tiny_sweep(stdlib_tiny_data_dir, sizes=(3.4e3,))
    sweep.axes = ({"optim.lr": (3e-3, 1e-2)},)
    assert len(runner.take_population([(r, 1) for r in spec.expand(sweep)], 2, tmp_path)) == 2
    section, key = field.split(".")
    sweep.base[section][key] = value
    queue = [(r, 1) for r in spec.expand(sweep)]
    assert [len(runner.take_population(queue, 2, tmp_path)) for _ in range(2)] == [1, 1]


class _CountingIterator:
    """Yields {'x': [n]} for n = 0, 1, ... and counts the batches read."""

    def __init__(self) -> None:
        self.read = 0

    def __next__(self) -> dict[str, np.ndarray]:
        self.read += 1
        return {"x": np.asarray([self.read - 1])}

    def get_state(self) -> dict[str, int]:
        return {"next_row": self.read}


def test_streams_read_each_distinct_stream_once_per_step(stdlib_tiny_data_dir):
    """Members with one data config and seed share a stream: it is read once per step while one
    of them trains, the others' iterators are never read, and each checkpoints its stream's
    position; another seed or data budget is another stream."""
    base = dict(lr=1e-2, seed=0, wd=0.1, steps=12)
    configs = [_config(stdlib_tiny_data_dir, **base),
               _config(stdlib_tiny_data_dir, **dict(base, lr=3e-3, steps=3)),  # shares 0's
               _config(stdlib_tiny_data_dir, **dict(base, seed=1)),
               _config(stdlib_tiny_data_dir, **dict(base, lr=3e-3, wd=0.0))]  # shares 0's
    configs[3].data.num_tokens = 4096  # ... but another budget: its own stream
    assert population_data.stream_leaders(configs) == [0, 0, 2, 3]
    members = [types.SimpleNamespace(config=c, data_iter=_CountingIterator(), done=False,
                                     num_steps=n, workdir=pathlib.Path(f"m{i}"))
               for i, (c, n) in enumerate(zip(configs, (2, 3, 2, 2)))]
    streams = population_data.Streams(members)
    seen = []
    for step in range(4):
        batch_K = streams.next_K(step)
        seen.append(batch_K["x"][:, 0].tolist())
        if step == 2:
            members[0].done = members[2].done = members[3].done = True
    # steps 1-3: stream 0 advances for member 1 (3 steps); streams 2 and 3 stop after 2 steps
    assert seen == [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 1, 1], [2, 2, 1, 1]]
    assert [m.data_iter.read for m in members] == [3, 0, 2, 2]
    assert [streams.state(i) for i in range(4)] == [{"next_row": 3}] * 2 + [{"next_row": 2}] * 2
