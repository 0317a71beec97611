"""One-shot magnitude pruning (`scaling compress --prune/--pattern`): sparsity, N:M, records, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaling.cli import compress as compress_cli
from scaling.compress import CompressionError, compress_run, prune_spec, quant_spec
from scaling.compress.prune import n_m_mask, unstructured_mask
from tests.compress_helpers import load_params, shared_tiny_run


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, stdlib_tiny_data_dir):
    """Returns a tiny trained Transformer run directory (last checkpoint 12, evaluated)."""
    return shared_tiny_run(tmp_path_factory, stdlib_tiny_data_dir)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_unstructured_mask_reaches_the_sparsity_in_every_layer_and_drops_the_smallest(sparsity):
    w = np.random.default_rng(1).normal(size=(3, 40, 25))
    mask = unstructured_mask(w, sparsity)
    for layer in range(3):
        kept = mask[layer]
        assert np.sum(~kept) == round(sparsity * 1000)
        if 0 < sparsity:
            assert np.abs(w[layer][kept]).min() >= np.abs(w[layer][~kept]).max()


def test_n_m_mask_keeps_n_largest_of_every_m_consecutive_inputs():
    w = np.random.default_rng(2).normal(size=(2, 16, 5))
    mask = n_m_mask(w, 2, 4)
    blocks = mask.reshape(2, 4, 4, 5)
    assert np.all(blocks.sum(axis=2) == 2)
    wb = np.abs(w).reshape(2, 4, 4, 5)
    kept_min = np.where(blocks, wb, np.inf).min(axis=2)
    dropped_max = np.where(blocks, -np.inf, wb).max(axis=2)
    assert np.all(kept_min >= dropped_max)
    with pytest.raises(CompressionError, match="multiple of 3"):
        n_m_mask(w, 1, 3)


def _zeros(w: np.ndarray) -> float:
    return float(np.mean(w == 0))


def test_unstructured_pruning_reaches_the_sparsity_and_records_nonzero_n(source_run, tmp_path):
    out = tmp_path / "s05"
    run = compress_run(source_run, out, prune=prune_spec(0.5), quant=quant_spec("int8"))
    p = run["compression"]["prune"]
    assert p["sparsity"] == pytest.approx(0.5, abs=1e-12) and p["target_sparsity"] == 0.5
    src = json.loads((source_run / "run.json").read_text())
    assert p["n_params_nonembed_nonzero"] == src["n_params_nonembed"] - p["n_zeros"]
    assert p["n_zeros"] == p["n_pruned_weights"] // 2
    assert run["axes"]["sparsity"] == pytest.approx(0.5) and run["axes"]["quant_bits"] == 8
    assert run["name"].endswith("-s0.5+int8")
    params = load_params(out, 12)
    for path in ("attn/q", "attn/k", "attn/v", "attn/o", "mlp/wi_gate", "mlp/wi_up", "mlp/wo"):
        block, leaf = path.split("/")
        w = params["layers"][block][leaf]
        for layer in range(w.shape[0]):  # every layer at the target, zeros kept by int8
            assert _zeros(w[layer]) == pytest.approx(0.5), path
    assert _zeros(params["embedding"]) == 0.0
    rows = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert {r["metric"] for r in rows} >= {"val/loss", "addition/exact_match"}


def test_two_four_pattern_via_cli(source_run, tmp_path, capsys):
    out = tmp_path / "24"
    rc = compress_cli.main(["scaling compress", f"{source_run}:4", "--out", str(out), "--pattern", "2:4",
                            "--noevaluate"])
    assert rc == 0, capsys.readouterr().err
    assert "sparsity 0.5" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["compression"]["source_step"] == 4 and run["axes"]["prune_pattern"] == "2:4"
    assert not (out / "eval.jsonl").exists()
    o = load_params(out, 4)["layers"]["attn"]["o"]  # [L, H, K, D]: inputs H*K, outputs D
    per_block = (o.reshape(o.shape[0], -1, 4, o.shape[-1]) != 0).sum(axis=2)
    assert np.all(per_block <= 2) and np.mean(per_block) > 1.9


@pytest.mark.parametrize("flags, message", [
    (["--prune", "1.0"], "--prune=1: sparsity must lie in [0, 1)"),
    (["--prune=-0.1"], "--prune=-0.1: sparsity must lie in [0, 1)"),
    (["--prune", "0.75", "--pattern", "2:4"], "disagrees with --pattern=2:4"),
    (["--pattern", "4:2"], "need 0 < N < M"),
    (["--pattern", "2of4"], "expected 'unstructured' or N:M"),
    (["--pattern", "5:7"], "not a multiple of 7"),
])
def test_bad_pruning_requests_are_clear_errors(source_run, tmp_path, capsys, flags, message):
    rc = compress_cli.main(["scaling compress", str(source_run), "--out", str(tmp_path / "p"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


# ----------------------------------------------------------------------------- gradual pruning


def test_cubic_schedule_ramps_from_start_to_end():
    from scaling.compress.gradual import target_sparsity

    s = [float(target_sparsity(t, 0.8, 10, 20)) for t in (0, 9, 10, 15, 20, 30)]
    assert s == pytest.approx([0.0, 0.0, 0.0, 0.8 * (1 - 0.5 ** 3), 0.8, 0.8])
    assert [float(target_sparsity(t, 0.5, 3, 3)) for t in (2, 3, 9)] == [0.0, 0.5, 0.5]


@pytest.mark.parametrize("field, value, message", [
    ("sparsity", 1.0, "must be a finite number in [0, 1)"),
    ("pattern", "4:2", "need 0 < N < M"),
    ("sparsity", 0.3, "disagrees with prune.pattern='2:4'"),
])
def test_bad_gradual_pruning_config_is_a_field_error(field, value, message):
    from scaling import config as config_lib
    from tests.helpers import tiny_lm_config

    c = tiny_lm_config()
    if field == "sparsity" and value == 0.3:
        c.prune.pattern = "2:4"
    c.prune[field] = value
    with pytest.raises(config_lib.ConfigError, match=f"prune.{field}") as err:
        config_lib.validate(c, 8)
    assert message in str(err.value)


def test_n_m_pattern_that_does_not_tile_the_inputs_fails_before_compiling():
    from scaling import config as config_lib
    from scaling.train import setup as setup_lib
    from tests.helpers import tiny_lm_config

    c = tiny_lm_config()  # d_model 32: 32 inputs per attention weight, not a multiple of 5
    c.prune.pattern = "2:5"
    config_lib.validate(c, 8)
    with pytest.raises(config_lib.ConfigError, match="prune.pattern.*not a multiple of 5"):
        setup_lib.build(c)


def _layer_zeros(params) -> list[float]:
    """Returns the fraction of zeros of every layer of every pruned weight."""
    out = []
    for block, leaves in (("attn", ("q", "k", "v", "o")), ("mlp", ("wi_gate", "wi_up", "wo"))):
        for leaf in leaves:
            w = params["layers"][block][leaf]
            out += [float(np.mean(w[layer] == 0)) for layer in range(w.shape[0])]
    return out


def test_gradual_pruning_reaches_the_sparsity_and_the_mask_survives_training_and_resume(
        tmp_path, stdlib_tiny_data_dir):
    from scaling.compress.gradual import target_sparsity
    from scaling.train.loop import train
    from tests.compress_helpers import tiny_run_config

    c = tiny_run_config(stdlib_tiny_data_dir, num_steps=10)
    c.prune.sparsity, c.prune.start_step, c.prune.end_step, c.prune.every = 0.5, 2, 6, 2
    c.checkpoint.every = 4  # checkpoints 1, 2, 4, 8 and 10
    workdir = tmp_path / "gradual"
    train(c, workdir, stop_after=8)  # interrupted at step 8
    assert json.loads((workdir / "status.json").read_text())["status"] != "completed"
    mid = _layer_zeros(load_params(workdir, 4))  # mid-ramp: the cubic schedule's sparsity at step 4
    assert min(mid) == pytest.approx(float(target_sparsity(4, 0.5, 2, 6)), abs=2e-3)
    assert max(mid) == pytest.approx(min(mid), abs=2e-3)
    assert max(_layer_zeros(load_params(workdir, 1))) < 0.01  # nothing pruned before the start
    at8 = load_params(workdir, 8)
    assert _layer_zeros(at8) == pytest.approx([0.5] * len(_layer_zeros(at8)), abs=1e-9)
    train(c, workdir)  # resume: masks come back with the optimizer state
    assert json.loads((workdir / "status.json").read_text())["status"] == "completed"
    at10 = load_params(workdir, 10)
    for block, leaf in (("attn", "q"), ("mlp", "wo")):
        w8, w10 = at8["layers"][block][leaf], at10["layers"][block][leaf]
        np.testing.assert_array_equal(w8 == 0, w10 == 0)  # the same mask after two more updates
        assert not np.array_equal(w8, w10)  # while the kept weights still train
    assert np.mean(at10["embedding"] == 0) == 0.0
