"""Pre-tokenized data: `scaling data prepare` shards, the same batches as tokenizing in memory,
resume without tokenizing, bounded memory, and clear errors for missing or corrupt files."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from scaling import config as config_lib
from scaling import data
from scaling.cli import main as cli_main
from scaling.data import prepare as prepare_lib
from scaling.data import prepared as prepared_lib
from scaling.data import text as text_lib
from scaling.data import tokenizers
from tests.helpers import assert_batches_equal, take

T = 16
B = 4


@pytest.fixture(scope="module")
def data_dir(stdlib_tiny_data_dir) -> str:
    return str(stdlib_tiny_data_dir)


@pytest.fixture(autouse=True)
def _fresh_cache():
    text_lib.clear_cache()
    prepared_lib.clear_cache()
    yield
    text_lib.clear_cache()
    prepared_lib.clear_cache()


def make_config(data_dir: str, **data_overrides):
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = data_dir
    c.data.seq_len = T
    c.data.shuffle_window_tokens = 64 * T
    c.data.eval_tokens = 2048
    c.train.batch_size = B
    for k, v in data_overrides.items():
        c.data[k] = v
    return c


@pytest.fixture(scope="module")
def prepared_dir(data_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("prep") / "byte"
    # small records and 3 shards: rows cross records, documents and shards
    prepare_lib.prepare(make_config(data_dir), out, shards=3, record_tokens=300)
    return out


def with_prepared(c, directory):
    c = c.copy_and_resolve_references()
    c.data.prepared_dir = str(directory)
    return c


def test_manifest_counts_match_the_dataset(prepared_dir, data_dir):
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    tok = tokenizers.ByteTokenizer()
    for split in ("train", "validation"):
        info = manifest["splits"][split]
        source = text_lib.open_text_source("stdlib_corpus/tiny", split, "text", data_dir)
        lengths = [len(tok.encode(source.text(i))) for i in range(len(source))]
        assert info["num_docs"] == len(source) and len(info["shards"]) == 3
        np.testing.assert_array_equal(np.load(prepared_dir / info["index"]), lengths)
        assert info["stream_tokens"] == sum(n + 1 for n in lengths if n)
        assert info["stream_tokens"] == text_lib.token_stream(
            "stdlib_corpus/tiny", split, "text", data_dir, tok, 0, True).total()
        assert sum(s["records"] for s in info["shards"]) == sum(-(-n // 300) for n in lengths)
    assert manifest["tokenizer"]["fingerprint"] == tok.fingerprint()
    assert prepare_lib.verify(prepared_dir) == []


@pytest.mark.parametrize("overrides", [
    {},  # the whole split, windows of 64 rows
    {"num_tokens": 40 * B * T, "epochs": 3.0},  # a budget repeated in reshuffled epochs
    {"num_tokens": 40 * B * T, "shuffle": False},  # stream order
    {"num_tokens": 40 * B * T, "random_crop": True},
])
def test_prepared_batches_equal_in_memory_batches(data_dir, prepared_dir, overrides):
    augment = {"random_crop": overrides.pop("random_crop")} if "random_crop" in overrides else {}
    c = make_config(data_dir, **overrides)
    for k, v in augment.items():
        c.data.augment[k] = v
    p = with_prepared(c, prepared_dir)
    steps = 130  # past the first epoch of the budgets above
    assert_batches_equal(take(data.make_train_iterator(p, process_index=0, process_count=1), steps),
                         take(data.make_train_iterator(c, process_index=0, process_count=1), steps))
    assert_batches_equal(data.make_eval_batches(p), data.make_eval_batches(c))
    assert data.num_unique_tokens(p) == data.num_unique_tokens(c)
    for proc in range(2):  # each process's slice
        assert_batches_equal(
            take(data.make_train_iterator(p, process_index=proc, process_count=2), 5),
            take(data.make_train_iterator(c, process_index=proc, process_count=2), 5))


def test_resume_reads_without_tokenizing_and_memory_stays_bounded(data_dir, prepared_dir,
                                                                  monkeypatch):
    c = with_prepared(make_config(data_dir, num_tokens=60 * B * T, epochs=2.0), prepared_dir)
    reference = take(data.make_train_iterator(c, process_index=0, process_count=1), 100)
    it = data.make_train_iterator(c, process_index=0, process_count=1)
    take(it, 70)
    state = json.loads(json.dumps(it.get_state()))
    prepared_lib.clear_cache()

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a prepared run tokenized text")

    monkeypatch.setattr(tokenizers.ByteTokenizer, "encode", no_tokenizing)
    monkeypatch.setattr(tokenizers.ByteTokenizer, "encode_batch", no_tokenizing)
    resumed = data.make_train_iterator(c, process_index=0, process_count=1)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 30), reference[70:100])
    # the record cache is bounded, whatever the budget
    stream = prepared_lib.open_stream(prepared_dir, "train", "stdlib_corpus/tiny", "text",
                                      tokenizers.ByteTokenizer(), c.seed, True)
    small = prepared_lib.PreparedStream(stream.source, tokenizers.ByteTokenizer(), 0, True,
                                        cache_bytes=4096)
    small.ensure(small.total())
    np.testing.assert_array_equal(small.get(0, 5000), stream.get(0, 5000))
    assert small.cache_nbytes <= 4096 + 2 * 300


def test_trained_tokenizer_is_saved_with_the_shards_and_reused(data_dir, tmp_path):
    c = make_config(data_dir, num_tokens=20 * B * T, tokenizer="bpe", tokenizer_vocab_size=300)
    out = tmp_path / "bpe"
    prepare_lib.prepare(c, out, splits=["train"])
    saved = out / "tokenizer" / "bpe.json"
    assert saved.exists()
    p = with_prepared(c, out)
    memory = c.copy_and_resolve_references()
    memory.data.tokenizer_path = str(saved)  # the in-memory run with the same tokenizer
    assert_batches_equal(take(data.make_train_iterator(p, process_index=0, process_count=1), 12),
                         take(data.make_train_iterator(memory, process_index=0, process_count=1),
                              12))
    # a byte-level run cannot read BPE shards
    byte_run = with_prepared(make_config(data_dir), out)
    with pytest.raises(prepared_lib.PreparedDataError, match="tokenized with 'bpe"):
        data.make_train_iterator(byte_run, process_index=0, process_count=1)


def test_config_mismatches_and_missing_pieces_are_clear_errors(data_dir, prepared_dir, tmp_path):
    c = make_config(data_dir)
    with pytest.raises(prepared_lib.PreparedDataError, match="no manifest.json"):
        data.make_train_iterator(with_prepared(c, tmp_path), process_index=0, process_count=1)
    other = with_prepared(c, prepared_dir)
    other.data.text_key = "path"
    with pytest.raises(prepared_lib.PreparedDataError, match="config.data.text_key='path'"):
        data.make_train_iterator(other, process_index=0, process_count=1)
    test_split = with_prepared(c, prepared_dir)
    test_split.data.eval_split = "test"
    with pytest.raises(prepared_lib.PreparedDataError, match="no split 'test'"):
        data.make_eval_batches(test_split)
    # nothing is written over an existing directory
    with pytest.raises(prepared_lib.PreparedDataError, match="not an empty directory"):
        prepare_lib.prepare(c, prepared_dir)
    assert prepare_lib.verify(prepared_dir) == []


def test_truncated_or_corrupt_shards_are_named(data_dir, prepared_dir, tmp_path):
    c = make_config(data_dir)
    broken = tmp_path / "broken"
    shutil.copytree(prepared_dir, broken)
    shard = broken / "train" / "tokens-00001-of-00003.array_record"
    blob = bytearray(shard.read_bytes())
    shard.write_bytes(bytes(blob[:-10]))  # truncated: refused when opened
    with pytest.raises(prepared_lib.PreparedDataError, match="tokens-00001-of-00003.*bytes"):
        data.make_train_iterator(with_prepared(c, broken), process_index=0, process_count=1)
    prepared_lib.clear_cache()
    blob[len(blob) // 2] ^= 0xFF  # same size, one byte flipped: refused when read
    shard.write_bytes(bytes(blob))
    assert [p for p in prepare_lib.verify(broken) if "tokens-00001" in p and "corrupt" in p]
    stream = prepared_lib.open_stream(broken, "train", c.data.tfds_name, "text",
                                      tokenizers.ByteTokenizer(), 0, False)
    stream.ensure(stream.total())
    with pytest.raises(prepared_lib.PreparedDataError, match="cannot read records"):
        stream.get(0, stream.total())
    (broken / "validation" / "tokens-00000-of-00003.array_record").unlink()
    assert any("missing" in p for p in prepare_lib.verify(broken))


def test_cli_prepares_with_parallel_workers_and_verifies(data_dir, prepared_dir, tmp_path,
                                                         capsys):
    from tests.conftest import REPO_ROOT

    out = tmp_path / "cli"
    rc = cli_main(["scaling", "data", "prepare", "--config", str(REPO_ROOT / "configs" /
                                                                 "lm_tiny.py"),
                   "--config.data.tfds_name=stdlib_corpus/tiny",
                   f"--config.data.tfds_data_dir={data_dir}", "--out", str(out),
                   "--workers", "2", "--shards", "3", "--record_tokens", "300"])
    assert rc == 0, capsys.readouterr()
    assert "train: 45 documents" in capsys.readouterr().out
    # two worker processes write the same files as one process did
    for split in ("train", "validation"):
        a = json.loads((out / "manifest.json").read_text())["splits"][split]
        b = json.loads((prepared_dir / "manifest.json").read_text())["splits"][split]
        assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
        assert a["index_sha256"] == b["index_sha256"]
    assert cli_main(["scaling", "data", "verify", str(out)]) == 0
    (out / "train" / "index.npy").write_bytes(b"")
    assert cli_main(["scaling", "data", "verify", str(out)]) == 1
    assert "index.npy" in capsys.readouterr().out
    assert cli_main(["scaling", "data", "prepare", "--config", str(REPO_ROOT / "configs" /
                                                                   "lm_tiny.py"),
                     "--out", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_training_from_prepared_shards_matches_and_resumes_exactly(data_dir, prepared_dir,
                                                                   tmp_path):
    from scaling.train import loop

    c = make_config(data_dir, num_tokens=30 * 8 * T)
    c.train.batch_size = 8  # one row per (fake) device
    c.model.max_seq_len = T
    c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 16, 1, 2, 2
    c.model.d_ff = 32
    c.train.log_every = 1
    c.train.progress = False
    c.checkpoint.every = 0
    c.checkpoint.log_max = 4
    c.optim.warmup_steps = 2
    memory = loop.train(c, tmp_path / "memory")
    p = with_prepared(c, prepared_dir)
    loop.train(p, tmp_path / "prepared", stop_after=11)
    resumed = loop.train(p, tmp_path / "prepared")
    assert resumed["status"] == memory["status"] == "completed"

    def losses(run: str) -> list[float]:
        rows = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r)["loss"] for r in rows if "loss" in json.loads(r)]

    assert len(losses("memory")) == 30
    assert losses("prepared") == losses("memory")
    saved = json.loads((tmp_path / "prepared" / "config.json").read_text())
    assert saved["data"]["prepared_dir"] == str(prepared_dir)
