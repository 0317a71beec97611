"""Post-training quantization (`scaling compress --quantize`): levels per channel/group, loss, records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.compression import compression_table
from analysis.runs import load_runs
from scaling import config as config_lib
from scaling.cli import compress as compress_cli
from scaling.compress import CompressionError, compress_run, quant_spec
from scaling.compress.quantize import quantize_weight
from scaling.compress.weights import WeightView
from scaling.evaluate import evaluate_run
from tests.compress_helpers import load_params, shared_tiny_run


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, stdlib_tiny_data_dir):
    """Returns a tiny trained Transformer run directory (last checkpoint 12, evaluated)."""
    return shared_tiny_run(tmp_path_factory, stdlib_tiny_data_dir)


def _eval(run_dir, step: int) -> dict[str, float]:
    rows = [json.loads(x) for x in (run_dir / "eval.jsonl").read_text().splitlines()]
    return {r["metric"]: r["value"] for r in rows if r["step"] == step}


def _levels_per_group(w_LIO: np.ndarray, group: int) -> int:
    """Returns the largest count of distinct values in one (layer, channel, group) of W_LIO."""
    L, I, O = w_LIO.shape
    g = group or I
    blocks = w_LIO.reshape(L, I // g, g, O)
    return max(len(np.unique(blocks[l, j, :, o])) for l in range(L) for j in range(I // g)
               for o in range(O))


@pytest.mark.parametrize("scheme, group", [("int4", 16), ("int3", 0), ("int8", 32)])
def test_quantized_weights_take_at_most_2_to_the_bits_levels(scheme, group):
    rng = np.random.default_rng(0)
    view = WeightView(path="layers/mlp/wo", shape=(2, 64, 24), layers=2, inputs=64, outputs=24)
    w = rng.normal(size=view.shape).astype(np.float32)
    spec = quant_spec(scheme, group)
    deq, nbytes = quantize_weight(w, view, spec)
    assert deq.shape == w.shape and deq.dtype == w.dtype
    levels = _levels_per_group(view.to_matrix(deq), group)
    # uses the grid (more than half its levels, or of the group's values), never more than it
    assert min(2 ** spec.bits, group or 64) // 2 < levels <= 2 ** spec.bits
    # a per-channel scale is shared by the whole channel: more levels within a channel when grouped
    if group and 2 ** spec.bits < 64:
        assert _levels_per_group(view.to_matrix(deq), 0) > 2 ** spec.bits
    # the error of a round-to-nearest grid is at most one step (scale = absmax / (2^(bits-1) - 0.5))
    g = group or 64
    absmax = np.abs(w.reshape(2, 64 // g, g, 24)).max(axis=2, keepdims=True)
    step = absmax / (2 ** (spec.bits - 1) - 0.5)
    assert np.all(np.abs((deq - w).reshape(2, 64 // g, g, 24)) <= step * (1 + 1e-5))
    assert nbytes == (w.size * {8: 8, 4: 4, 3: 4}[spec.bits]) // 8 + 4 * 2 * 24 * (64 // g)


def test_int8_checkpoint_evaluates_close_to_float_and_records_its_scheme(source_run, tmp_path):
    out = tmp_path / "int8"
    run = compress_run(source_run, out, step=12, quant=quant_spec("int8"))
    rec = run["compression"]
    assert rec["source_step"] == 12 and rec["source_id"] == json.loads(
        (source_run / "run.json").read_text())["id"]
    q = rec["quantize"]
    assert (q["scheme"], q["bits"], q["granularity"], q["group_size"]) == ("int8", 8, "per-channel", 0)
    assert q["library"].startswith("qwix") and "layers/attn/q" in q["tensors"]
    assert "embedding" not in q["tensors"]
    assert run["axes"]["quant_bits"] == 8 and run["id"] != rec["source_id"]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    # evaluated like any other run: loss and task metrics in eval.jsonl at the source's step
    f, c = _eval(source_run, 12), _eval(out, 12)
    assert set(c) == set(f) and "addition/exact_match" in c
    assert abs(c["val/loss"] - f["val/loss"]) < 0.01 * f["val/loss"]
    # the analysis pairs it with its float source: ΔL at the same step, N and D of the source
    table = compression_table(load_runs([source_run, out]))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["quant_bits"] == 8 and row["step"] == 12 and row["source_run"] == rec["source_id"]
    assert row["delta_loss"] == pytest.approx(c["val/loss"] - f["val/loss"])
    # `scaling evaluate` re-evaluates it to the same numbers
    again = {r["metric"]: r["value"] for r in evaluate_run(out, "last", progress=False)}
    assert again["val/loss"] == pytest.approx(c["val/loss"], rel=1e-6)
    # the stored weights are on the int8 grid, the embedding untouched
    src, dst = load_params(source_run, 12), load_params(out, 12)
    np.testing.assert_array_equal(src["embedding"], dst["embedding"])
    assert not np.array_equal(src["layers"]["attn"]["q"], dst["layers"]["attn"]["q"])
    wo = dst["layers"]["mlp"]["wo"]  # [L, F, D]: channels are the D outputs
    assert _levels_per_group(wo, 0) <= 256


def test_int4_grouped_run_via_cli_is_on_a_16_level_grid(source_run, tmp_path, capsys):
    out = tmp_path / "int4"
    rc = compress_cli.main(["scaling compress", f"{source_run}:12", "--out", str(out),
                            "--quantize", "int4", "--group_size", "16"])
    assert rc == 0, capsys.readouterr().err
    assert "4-bit per-group" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["compression"]["quantize"]["group_size"] == 16
    q = run["compression"]["quantize"]
    # 4 bits per weight plus one float32 scale per 16 weights
    assert q["weight_bytes"] == q["n_weights"] // 2 + 4 * q["n_weights"] // 16
    assert q["float32_bytes"] == 4 * q["n_weights"]
    src, dst = load_params(source_run, 12), load_params(out, 12)
    w = dst["layers"]["attn"]["q"]  # [L, D, H, K]: inputs D, outputs H*K
    assert _levels_per_group(w.reshape(w.shape[0], w.shape[1], -1), 16) <= 16
    # the grid's rounding error: at most half a step of absmax/7.5 per group, and not zero
    f = src["layers"]["attn"]["q"].reshape(w.shape[0], -1, 16, w.shape[2] * w.shape[3])
    err = np.abs(w.reshape(f.shape) - f)
    assert 0 < err.max() and np.all(err <= np.abs(f).max(axis=2, keepdims=True) / 7.5 * 0.5 + 1e-7)
    c = _eval(out, 12)
    assert np.isfinite(c["val/loss"]) and "addition/exact_match" in c


def test_bad_quantization_requests_are_clear_errors(source_run, tmp_path, capsys):
    with pytest.raises(CompressionError, match="unknown scheme"):
        quant_spec("int5")
    with pytest.raises(CompressionError, match="--storage=int2 holds only 2"):
        quant_spec("int4", storage="int2")
    with pytest.raises(CompressionError, match="does not divide"):
        compress_run(source_run, tmp_path / "g", quant=quant_spec("int4", 24))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "run.json").write_text("{}")
    cases = [(["--quantize", "fp4"], "--quantize='fp4': unknown scheme"),
             (["--quantize", "int4", "--storage", "int2"], "holds only 2"),
             (["--quantize", "int8"], "already holds a run"),
             ([], "nothing to do")]
    for flags, message in cases:
        out = taken if message == "already holds a run" else tmp_path / "x"
        rc = compress_cli.main(["scaling compress", str(source_run), "--out", str(out), *flags])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, (flags, err)
    rc = compress_cli.main(["scaling compress", f"{source_run}:7", "--out", str(tmp_path / "y"),
                            "--quantize", "int8", "--noevaluate"])
    assert rc == 2 and "no checkpoint at step 7" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "run.json").exists()
    assert config_lib.load_json(source_run / "config.json").name != "x"
