"""Augmentations keep targets correct (hypothesis property tests on fixed shapes)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaling import config as config_lib
from scaling import data
from scaling.data import augment as aug
from scaling.data import tasks
from scaling.data import text as text_lib
from scaling.data.corpora import stdlib_corpus

L = 24
VOCAB = 50
PROPS = settings(max_examples=25, deadline=None)

seeds = st.integers(0, 2**31 - 1)
token_rows = st.lists(st.integers(0, VOCAB - 1), min_size=L, max_size=L).map(
    lambda x: np.asarray(x, np.int32))
masks = st.lists(st.booleans(), min_size=L, max_size=L).map(np.asarray)


@functools.partial(jax.jit, static_argnames=("vocab",))
def _substitute(seed, row, eligible, rate, vocab):
    return aug.token_substitution(jax.random.key(seed), row, eligible, rate, vocab)


@jax.jit
def _span(seed, row, eligible, rate, span_length):
    return aug.span_mask(jax.random.key(seed), row, eligible, rate, span_length, VOCAB)


@functools.partial(jax.jit, static_argnames=("length",))
def _crop(seed, window, max_offset, length):
    return aug.random_crop(jax.random.key(seed), window, max_offset, length)


@given(seed=seeds, row=token_rows, eligible=masks, rate=st.floats(0.0, 0.99))
@PROPS
def test_token_substitution_touches_only_eligible_tokens(seed, row, eligible, rate):
    out = np.asarray(_substitute(seed, row, eligible, rate, VOCAB))
    assert out.shape == row.shape and out.dtype == row.dtype
    np.testing.assert_array_equal(out[~eligible], row[~eligible])
    assert ((out >= 0) & (out < VOCAB)).all()
    if rate == 0.0:
        np.testing.assert_array_equal(out, row)


@given(seed=seeds, row=token_rows, eligible=masks, rate=st.floats(0.0, 0.99),
       span_length=st.integers(1, 6))
@PROPS
def test_span_mask_masks_one_short_span_of_eligible_tokens(seed, row, eligible, rate,
                                                           span_length):
    out = np.asarray(_span(seed, row, eligible, rate, span_length))
    changed = np.flatnonzero(out != row)
    assert eligible[changed].all()
    assert (out[changed] == VOCAB).all()
    if changed.size:
        assert changed[-1] - changed[0] < span_length
    full = np.asarray(_span(seed, row, np.ones(L, bool), 0.999999, span_length))
    assert (full == VOCAB).sum() == span_length  # on, all eligible: exactly one whole span


@given(seed=seeds, max_offset=st.integers(0, L))
@PROPS
def test_random_crop_is_a_contiguous_slice_in_range(seed, max_offset):
    window = np.arange(2 * L + 1, dtype=np.int32) + 100
    out = np.asarray(_crop(seed, window, max_offset, L + 1))
    offset = out[0] - 100
    assert 0 <= offset <= max_offset
    np.testing.assert_array_equal(out, window[offset:offset + L + 1])
    inputs, targets = out[:-1], out[1:]
    np.testing.assert_array_equal(targets[:-1], inputs[1:])  # targets still the next tokens


MOD = tasks.make_task("modular_arithmetic", {"p": 13, "ops": "+-*/"})
RECALL = tasks.make_task("associative_recall", {"num_pairs": 5, "num_keys": 9, "num_values": 4})
ADD = tasks.make_task("addition", {"n_digits": 12})


@given(seed=seeds, data_seed=seeds)
@PROPS
def test_operand_swap_keeps_modular_answers(seed, data_seed):
    ex = MOD.sample(np.random.default_rng(data_seed), 32)
    keys = aug.row_keys(seed, np.arange(32), 1)
    a, b = aug.swap_operands(keys, ex["a"], ex["b"], MOD.commutative_mask(ex))
    swapped = dict(ex, a=np.asarray(a), b=np.asarray(b))
    np.testing.assert_array_equal(MOD.answers(swapped), MOD.answers(ex))
    moved = swapped["a"] != ex["a"]
    assert MOD.commutative_mask(ex)[moved].all()
    assert not MOD.is_heldout(swapped).any()  # a mirrored training pair is a training pair


@given(seed=seeds, data_seed=seeds)
@PROPS
def test_operand_swap_decisions_keep_long_additions(seed, data_seed):
    ex = ADD.sample(np.random.default_rng(data_seed), 32)  # operands beyond int32
    swap = np.asarray(aug.swap_decisions(aug.row_keys(seed, np.arange(32), 2),
                                         np.ones(32, bool)))
    swapped = dict(ex, a=np.where(swap, ex["b"], ex["a"]), b=np.where(swap, ex["a"], ex["b"]))
    np.testing.assert_array_equal(ADD.answers(swapped), ADD.answers(ex))
    assert not ADD.is_heldout(swapped).any()


@given(seed=seeds, data_seed=seeds)
@PROPS
def test_pair_shuffle_keeps_the_recalled_value(seed, data_seed):
    ex = RECALL.sample(np.random.default_rng(data_seed), 16)
    keys = aug.row_keys(seed, np.arange(16), 3)
    k, v, q = aug.shuffle_pairs(keys, ex["keys"], ex["values"], ex["subtask"])
    new = {"keys": np.asarray(k), "values": np.asarray(v), "subtask": np.asarray(q)}
    np.testing.assert_array_equal(RECALL.answers(new), RECALL.answers(ex))
    np.testing.assert_array_equal(RECALL.query_keys(new), RECALL.query_keys(ex))
    for i in range(16):
        assert sorted(zip(new["keys"][i], new["values"][i])) == sorted(
            zip(ex["keys"][i], ex["values"][i]))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tfds")
    stdlib_corpus.ensure_built(d, "tiny")
    return str(d)


def _config(data_dir: str):
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = data_dir
    c.data.seq_len = 32
    c.data.num_tokens = 6 * 8 * 32
    c.data.epochs = 2.0
    c.train.batch_size = 8
    return c


def test_pipeline_text_augmentation_keeps_targets(data_dir):
    text_lib.clear_cache()
    plain = _config(data_dir)
    noisy = _config(data_dir)
    noisy.data.augment.token_substitution = 0.3
    noisy.data.augment.span_mask = 0.5
    clean_it = data.make_train_iterator(plain, process_index=0, process_count=1)
    noisy_it = data.make_train_iterator(noisy, process_index=0, process_count=1)
    n_changed = 0
    for _ in range(4):
        c, n = next(clean_it), next(noisy_it)
        np.testing.assert_array_equal(c["targets"], n["targets"])
        np.testing.assert_array_equal(c["weights"], n["weights"])
        n_changed += int((c["inputs"] != n["inputs"]).sum())
    assert 0.2 < n_changed / (4 * 8 * 32) < 0.45
    # Deterministic: a fresh iterator repeats the same noise.
    again = data.make_train_iterator(noisy, process_index=0, process_count=1)
    first = data.make_train_iterator(noisy, process_index=0, process_count=1)
    np.testing.assert_array_equal(next(again)["inputs"], next(first)["inputs"])


def test_pipeline_random_crop_reads_the_stream_inside_the_budget(data_dir):
    text_lib.clear_cache()
    c = _config(data_dir)
    c.data.augment.random_crop = True
    c.data.shuffle_window_tokens = 0  # the budget is the stream's first rows
    it = data.make_train_iterator(c, process_index=0, process_count=1)
    stream = text_lib.token_stream(c.data.tfds_name, "train", "text", data_dir,
                                   data.make_tokenizer(c), c.seed, True)
    budget = stream.get(0, 6 * 8 * 32 + 1)
    offsets = set()
    for _ in range(12):  # two epochs
        b = next(it)
        np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
        for row in np.concatenate([b["inputs"], b["targets"][:, -1:]], 1):
            starts = [s for s in range(len(budget) - 32)
                      if np.array_equal(budget[s:s + 33], row)]
            assert starts, "a cropped row must be a slice of the budget's tokens"
            offsets.add(starts[0] % 32)
    assert len(offsets) > 3
    # with first-epoch windows the budget's rows are spread over the window: a crop still reads
    # only budget rows (a row's window extends into the next stream row only if that is one)
    c.data.shuffle_window_tokens = 16 * 32
    text_lib.clear_cache()
    it = data.make_train_iterator(c, process_index=0, process_count=1)
    rows_u = text_lib.RowOrder(6 * 8, c.seed, True, 16, 48).first_epoch(np.arange(6 * 8))
    pieces = [stream.get(u * 32, u * 32 + 33) for u in rows_u]
    pieces += [stream.get(u * 32, u * 32 + 65) for u in rows_u if u + 1 in set(rows_u)]
    for _ in range(6):
        b = next(it)
        for row in np.concatenate([b["inputs"], b["targets"][:, -1:]], 1):
            assert any(any(np.array_equal(p[s:s + 33], row) for s in range(len(p) - 32))
                       for p in pieces), "a cropped row must lie in the budget's rows"
