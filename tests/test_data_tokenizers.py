"""Tokenizers: byte-level ids, BPE/SentencePiece trained offline and reloaded, local HF tokenizers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from scaling import config as config_lib
from scaling import data
from scaling.data import text as text_lib
from scaling.data import tokenizers
from scaling.data.corpora import stdlib_corpus

SAMPLE = 'def f(x):\n    """Docstring: ü€ 漢."""\n\treturn x  +  1  # ok\n\n'


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tfds")
    stdlib_corpus.ensure_built(d, "tiny")
    return str(d)


def make_config(data_dir: str, kind: str, vocab: int = 300):
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = data_dir
    c.data.tokenizer = kind
    c.data.tokenizer_vocab_size = vocab
    c.data.tokenizer_train_chars = 120_000
    c.data.seq_len = 32
    c.train.batch_size = 4
    return c


def test_byte_tokenizer_ids_and_round_trip():
    tok = tokenizers.ByteTokenizer()
    ids = tok.encode(SAMPLE)
    assert ids.dtype == np.int32 and ids.max() < 256
    assert list(ids) == list(SAMPLE.encode("utf-8"))
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258, 259)
    assert tok.decode(np.append(ids, [tok.eos_id, tok.pad_id])) == SAMPLE


def test_byte_encode_batch_equals_encoding_each_text():
    tok = tokenizers.ByteTokenizer()
    texts = ["a:3 q:7 ?q:", "7\n", "", "héllo → ✓", "x"]
    batch = tok.encode_batch(texts)
    assert len(batch) == len(texts)
    for text, ids in zip(texts, batch):
        assert ids.dtype == np.int32
        np.testing.assert_array_equal(ids, tok.encode(text))
        assert tok.decode(ids) == text
    assert tok.encode_batch([]) == []


@pytest.mark.parametrize("kind,vocab", [("bpe", 300), ("sentencepiece", 512)])
def test_trained_tokenizer_is_saved_then_reloaded(data_dir, tmp_path, kind, vocab):
    c = make_config(data_dir, kind, vocab)
    tok = tokenizers.make_tokenizer(c, tmp_path)
    path = tokenizers.tokenizer_file(c, tmp_path)
    assert path is not None and path.exists() and path.parent == tmp_path / "tokenizer"
    assert tok.vocab_size <= vocab and len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE
    assert len(ids) < len(SAMPLE.encode())  # it learned merges
    tokenizers._MEMORY_CACHE.clear()
    mtime = os.stat(path).st_mtime_ns
    again = tokenizers.make_tokenizer(c, tmp_path)
    assert os.stat(path).st_mtime_ns == mtime  # loaded, not retrained
    np.testing.assert_array_equal(again.encode(SAMPLE), ids)
    # The pipeline runs on it, inside the resolved vocabulary.
    text_lib.clear_cache()
    r = data.resolve(c, tmp_path)
    assert r.model.vocab_size == -(-tok.vocab_size // 64) * 64 >= tok.vocab_size
    batch = next(data.make_train_iterator(c, tmp_path, process_index=0, process_count=1))
    assert batch["inputs"].max() < tok.vocab_size
    src = text_lib.open_text_source(c.data.tfds_name, "train", "text", data_dir)
    corpus = "".join(src[i] for i in range(len(src)))
    for row in batch["inputs"]:
        piece = row[:np.flatnonzero(np.append(row == tok.eos_id, True))[0]][1:-1]
        if len(piece) > 3:
            assert tok.decode(piece) in corpus


def test_hf_tokenizer_from_a_local_directory(data_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    bpe = tokenizers.make_tokenizer(make_config(data_dir, "bpe"), tmp_path)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")
    fast.save_pretrained(tmp_path / "hf")
    c = make_config(data_dir, "hf")
    c.data.tokenizer_path = str(tmp_path / "hf")
    tok = tokenizers.make_tokenizer(c)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (bpe.pad_id, bpe.bos_id, bpe.eos_id)
    np.testing.assert_array_equal(tok.encode(SAMPLE), bpe.encode(SAMPLE))
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.vocab_size == bpe.vocab_size


def test_tokenizer_errors_are_clear(data_dir, tmp_path):
    c = make_config(data_dir, "hf")
    with pytest.raises(ValueError, match="tokenizer_path"):
        tokenizers.make_tokenizer(c)
    c.data.tokenizer_path = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="local"):
        tokenizers.make_tokenizer(c)
    with pytest.raises(ValueError, match="at least"):
        tokenizers.make_tokenizer(make_config(data_dir, "bpe", vocab=100), tmp_path)
    with pytest.raises(ValueError, match="too small for SentencePiece"):
        tokenizers.make_tokenizer(make_config(data_dir, "sentencepiece", vocab=300), tmp_path)
