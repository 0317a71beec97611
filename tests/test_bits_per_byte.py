"""Bits per byte: token byte lengths add up to the text's bytes for every tokenizer; evaluation
records val/bits_per_byte from its own nats; `scaling analyze --loss-metric val/bits_per_byte`
fits it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scaling.data import tokenizers as tok_lib

TEXTS = ["def f(x):\n    return x + 1\n", "  naïve café — ∑ αβγ 😀 \t tabs\n\nend",
         "import os\nprint(os.getcwd())  # comment", "ünïcödé " * 5]


def trained_texts():
    return [t * 20 for t in TEXTS] + ["class A:\n    pass\n" * 30, "for i in range(10): x += i\n" * 30]


def make(kind: str, tmp_path):
    if kind == "byte":
        return tok_lib.ByteTokenizer()
    if kind == "bpe":
        return tok_lib.BPETokenizer.train(trained_texts(), 300)
    if kind == "sentencepiece":
        return tok_lib.SentencePieceTokenizer.train(trained_texts(), 400)
    import transformers

    bpe = tok_lib.BPETokenizer.train(trained_texts(), 300)
    bpe.save(tmp_path / "bpe.json")
    transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "bpe.json"), eos_token="<eos>", bos_token="<bos>",
        pad_token="<pad>").save_pretrained(tmp_path / "hf")
    return tok_lib.HFTokenizer(tmp_path / "hf")


@pytest.mark.parametrize("kind", ["byte", "bpe", "sentencepiece", "hf"])
def test_token_bytes_add_up_to_the_text_bytes(kind, tmp_path):
    tok = make(kind, tmp_path)
    table = tok.token_bytes()
    assert table.shape == (tok.vocab_size,)
    assert table[tok.eos_id] == table[tok.pad_id] == 0
    for text in TEXTS:
        ids = tok.encode(text)
        assert int(table[ids].sum()) == len(text.encode("utf-8")), (kind, text)
    if kind != "byte":  # merges: more than one byte per token on text like the training text
        ids = tok.encode(TEXTS[0] * 3)
        assert table[ids].sum() / len(ids) > 1.2


def test_evaluator_records_bits_per_byte(stdlib_tiny_data_dir):
    import jax

    from scaling import config as config_lib
    from scaling import data as data_lib
    from scaling.evaluate import Evaluator
    from scaling.train import setup as setup_lib

    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(stdlib_tiny_data_dir)
    c.data.seq_len = c.model.max_seq_len = 32
    c.data.eval_tokens = 512
    c.model.d_model, c.model.n_layers, c.model.n_heads = 32, 1, 2
    c.train.batch_size = 8
    c = data_lib.resolve(c)
    config_lib.validate(c, len(jax.devices()))
    trainer = setup_lib.build(c)
    evaluator = Evaluator(c, None, trainer.mesh, trainer.model)
    metrics = evaluator.metrics(trainer.init_state().params)
    # independent count: byte ids 0..255 are one byte each, the EOS separators none
    targets = np.concatenate([b["targets"][b["weights"] > 0] for b in evaluator.val_batches])
    n_bytes = int(np.sum(targets < 256))
    assert 0 < n_bytes < len(targets)  # the held-out text has EOS separators
    assert metrics["val/bits_per_byte"] == pytest.approx(
        metrics["val/loss"] * len(targets) / math.log(2) / n_bytes, rel=1e-6)
    assert metrics["val/bytes_per_token"] == pytest.approx(n_bytes / len(targets), rel=1e-9)


def test_analyze_fits_bits_per_byte(tmp_path):
    from analysis.report import build_report
    from analysis.synthetic import make_sweep
    from scaling.cli.analyze import main as analyze_main

    root = make_sweep(tmp_path / "sweep", sizes=(2.5e5, 1e6, 4e6), budgets=(1e14, 1e15),
                      arms=("a",), arm_scale=(1.0,), tasks=False)
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        path = run_dir / "eval.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        extra = [dict(r, metric="val/bits_per_byte", value=r["value"] / math.log(2) / 3.5)
                 for r in rows if r["metric"] == "val/loss"]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    assert analyze_main(["scaling analyze", str(root), "--out", str(tmp_path / "rep"),
                         "--bootstrap", "0", "--loss-metric", "val/bits_per_byte"]) == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert {r["loss_metric"] for r in summary["runs"]} == {"val/bits_per_byte"}
    default = build_report(root, tmp_path / "rep_nats", bootstrap=0)
    nats = json.loads((default.parent / "summary.json").read_text())
    by_run = {r["run"]: r["loss"] for r in nats["runs"]}
    for r in summary["runs"]:
        assert r["loss"] == pytest.approx(by_run[r["run"]] / math.log(2) / 3.5, rel=1e-12)
    assert "(bits/byte)" in (tmp_path / "rep" / "report.md").read_text()
    with pytest.raises(ValueError, match="loss_metric"):
        build_report(root, tmp_path / "bad", loss_metric="val/token_accuracy")
