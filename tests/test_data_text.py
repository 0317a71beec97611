"""Text pipeline: packing, nested budgets, resume, process shards, epochs and clear errors."""

from __future__ import annotations

import json

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from scaling import config as config_lib
from scaling import data
from scaling.data import text as text_lib
from scaling.data import tokenizers
from scaling.data.corpora import stdlib_corpus
from tests.helpers import assert_batches_equal, take

T = 16  # seq_len
B = 4  # global batch


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tfds")
    stdlib_corpus.ensure_built(d, "tiny")
    return str(d)


@pytest.fixture(autouse=True)
def _fresh_cache():
    text_lib.clear_cache()
    yield
    text_lib.clear_cache()


def make_config(data_dir: str, **data_overrides):
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = data_dir
    c.data.seq_len = T
    c.data.prefetch = 2
    c.train.batch_size = B
    for k, v in data_overrides.items():
        c.data[k] = v
    return c


def test_mock_tiny_shakespeare_packs_documents_with_eos():
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        c = make_config("", seq_len=8, shuffle_window_tokens=0)  # rows in stream order
        c.data.tfds_name = "tiny_shakespeare"
        it = data.make_train_iterator(c, process_index=0, process_count=1)
        batches = take(it, 3)
        # Expected stream: documents in grain's seeded shuffle order, each followed by EOS.
        src = tfds.data_source("tiny_shakespeare", split="train")
        docs = grain.MapDataset.source([src[i]["text"] for i in range(len(src))]).shuffle(
            seed=text_lib.sub_seed(c.seed, 0xD0C5))
        tok = tokenizers.ByteTokenizer()
        stream = np.concatenate([np.append(tok.encode(text_lib._as_str(docs[i])), tok.eos_id)
                                 for i in range(len(docs))])
    rows = np.concatenate([np.concatenate([b["inputs"], b["targets"][:, -1:]], 1)
                           for b in batches])
    for u, row in enumerate(rows):
        np.testing.assert_array_equal(row, stream[u * 8:u * 8 + 9])
    for b in batches:
        np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
        assert b["inputs"].dtype == np.int32 and b["weights"].dtype == np.float32
        assert b["weights"].shape == (B, 8) and (b["weights"] == 1).all()
    assert (rows == tok.eos_id).any()


def test_mock_lm1b_eval_batches_are_fixed_and_padded():
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
        c = make_config("", eval_split="test", eval_tokens=10 * T)
        c.data.tfds_name = "lm1b"
        ev1 = data.make_eval_batches(c, process_index=0, process_count=1)
        c.seed = 7  # the evaluation set does not depend on the run's seed
        text_lib.clear_cache()
        ev2 = data.make_eval_batches(c)  # global batches on every process by default
        shards = [data.make_eval_batches(c, process_index=p, process_count=2) for p in range(2)]
    assert_batches_equal(ev1, ev2)
    for k, batch in enumerate(ev1):
        for key in batch:
            np.testing.assert_array_equal(
                np.concatenate([shards[0][k][key], shards[1][k][key]]), batch[key])
    assert len(ev1) == 3  # 10 rows in batches of 4: the last holds 2 real rows
    assert ev1[-1]["weights"][:2].all() and not ev1[-1]["weights"][2:].any()
    assert sum(b["weights"].sum() for b in ev1) == 10 * T
    # data.eval_batch_size regroups the same rows: 10 rows in batches of 6
    c.data.eval_batch_size = 6
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
        text_lib.clear_cache()
        ev6 = data.make_eval_batches(c)
        with pytest.raises(ValueError, match="data.eval_batch_size=6"):
            data.make_eval_batches(c, process_index=0, process_count=4)
    assert [b["inputs"].shape[0] for b in ev6] == [6, 6]
    for key in ("inputs", "targets", "weights"):
        np.testing.assert_array_equal(np.concatenate([b[key] for b in ev6])[:10],
                                      np.concatenate([b[key] for b in ev1])[:10])
    assert not ev6[-1]["weights"][4:].any()


def test_stdlib_corpus_through_the_same_data_source_path(data_dir):
    src = tfds.data_source("stdlib_corpus/tiny", split="train", data_dir=data_dir)
    texts = [text_lib._as_str(src[i]["text"]) for i in range(len(src))]
    c = make_config(data_dir)
    assert data.num_unique_tokens(c) == sum(len(t.encode()) + 1 for t in texts if t)
    batch = next(data.make_train_iterator(c, process_index=0, process_count=1))
    decoded = tokenizers.ByteTokenizer().decode(batch["inputs"][0])
    assert any(decoded[:T // 2] in t for t in texts)


@pytest.mark.parametrize("budgets", [(3 * B * T, 7 * B * T), (B * T + 5, 2 * B * T + 5)])
def test_nested_budgets_across_model_configs(data_dir, budgets):
    d1, d2 = budgets
    small = make_config(data_dir, num_tokens=d1)
    big = make_config(data_dir, num_tokens=d2)
    big.model.d_model, big.model.n_layers, big.model.n_heads = 256, 6, 8
    n1 = config_lib.train_steps(small)
    assert n1 == -(-d1 // (B * T))
    b1 = take(data.make_train_iterator(small, process_index=0, process_count=1), n1)
    b2 = take(data.make_train_iterator(big, process_index=0, process_count=1),
              config_lib.train_steps(big))
    assert_batches_equal(b1, b2[:n1])
    # Not vacuous: another seed orders the documents differently.
    other = make_config(data_dir, num_tokens=d1)
    other.seed = 1
    b3 = take(data.make_train_iterator(other, process_index=0, process_count=1), n1)
    assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(b1, b3))


def test_first_epoch_visits_rows_in_seeded_windows(data_dir):
    window = 4  # rows
    c = make_config(data_dir, num_tokens=10 * T, shuffle_window_tokens=window * T)
    stream_order = make_config(data_dir, num_tokens=12 * T, shuffle_window_tokens=0)
    rows = np.concatenate([np.concatenate([b["inputs"], b["targets"][:, -1:]], 1) for b in
                           take(data.make_train_iterator(c, process_index=0, process_count=1), 3)])
    plain = np.concatenate([np.concatenate([b["inputs"], b["targets"][:, -1:]], 1) for b in take(
        data.make_train_iterator(stream_order, process_index=0, process_count=1), 3)])
    assert len(rows) == 12  # 10 rows' budget, rounded up to whole batches of 4
    index = {bytes(r): u for u, r in enumerate(plain)}
    visited = [index[bytes(r)] for r in rows]  # every row is a stream row...
    assert len(set(visited)) == 12  # ...each once
    for w in range(3):  # window w's positions visit window w's rows, not in stream order
        assert sorted(visited[w * window:(w + 1) * window]) == list(range(w * window,
                                                                          (w + 1) * window))
    assert visited != sorted(visited)
    # the order is the seed's, and another seed gives another order
    order = text_lib.RowOrder(12, c.seed, True, window, 12)
    assert list(order(np.arange(12))) == visited
    assert list(text_lib.RowOrder(12, c.seed + 1, True, window, 12)(np.arange(12))) != visited


def test_epochs_repeat_the_unique_rows_reshuffled(data_dir):
    c = make_config(data_dir, num_tokens=3 * B * T, epochs=3.0, shuffle_window_tokens=0)
    batches = take(data.make_train_iterator(c, process_index=0, process_count=1), 9)
    rows = [np.concatenate([b["inputs"], b["targets"][:, -1:]], 1) for b in batches]
    epochs = [np.concatenate(rows[i:i + 3]) for i in (0, 3, 6)]
    keyed = [sorted(map(bytes, e)) for e in epochs]
    assert keyed[0] == keyed[1] == keyed[2]  # the same unique rows every epoch
    assert not np.array_equal(epochs[0], epochs[1])  # in a new order
    assert not np.array_equal(epochs[1], epochs[2])
    # Every unique target token is seen once per epoch: rows overlap by exactly one token.
    np.testing.assert_array_equal(epochs[0][1:, 0], epochs[0][:-1, -1])
    # with first-epoch windows (3 rows each) later epochs repeat the same rows
    c.data.shuffle_window_tokens = 3 * T
    windowed = take(data.make_train_iterator(c, process_index=0, process_count=1), 9)
    rows = [np.concatenate([b["inputs"], b["targets"][:, -1:]], 1) for b in windowed]
    keyed = [sorted(map(bytes, np.concatenate(rows[i:i + 3]))) for i in (0, 3, 6)]
    assert keyed[0] == keyed[1] == keyed[2]
    assert not np.array_equal(np.concatenate(rows[:3]), epochs[0])  # another order than stream


def test_resume_continues_with_the_next_batch(data_dir):
    c = make_config(data_dir, num_tokens=5 * B * T, epochs=2.0)
    reference = take(data.make_train_iterator(c, process_index=0, process_count=1), 14)
    it = data.make_train_iterator(c, process_index=0, process_count=1)
    take(it, 6)
    state = json.loads(json.dumps(it.get_state()))
    resumed = data.make_train_iterator(c, process_index=0, process_count=1)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 8), reference[6:14])
    # A state from another data config is refused.
    other = make_config(data_dir, num_tokens=5 * B * T, epochs=2.0, seq_len=2 * T)
    with pytest.raises(ValueError, match="seq_len"):
        data.make_train_iterator(other, process_index=0, process_count=1).set_state(state)


def test_resume_from_a_different_process_count(data_dir):
    c = make_config(data_dir)
    single = data.make_train_iterator(c, process_index=0, process_count=1)
    take(single, 3)
    state = single.get_state()
    expected = take(single, 2)
    halves = []
    for p in range(2):
        it = data.make_train_iterator(c, process_index=p, process_count=2)
        it.set_state(state)
        halves.append(take(it, 2))
    for k in range(2):
        for key in ("inputs", "targets", "weights"):
            np.testing.assert_array_equal(
                np.concatenate([halves[0][k][key], halves[1][k][key]]), expected[k][key])


def test_two_processes_get_disjoint_shards_of_the_single_stream(data_dir):
    c = make_config(data_dir, num_tokens=4 * B * T, epochs=2.0, mix_rate=0.0)
    single = take(data.make_train_iterator(c, process_index=0, process_count=1), 8)
    shards = [take(data.make_train_iterator(c, process_index=p, process_count=2), 8)
              for p in range(2)]
    for k in range(8):
        a, b = shards[0][k]["inputs"], shards[1][k]["inputs"]
        assert a.shape == (B // 2, T)
        assert not any(np.array_equal(x, y) for x in a for y in b)
        for key in ("inputs", "targets", "weights"):
            np.testing.assert_array_equal(
                np.concatenate([shards[0][k][key], shards[1][k][key]]), single[k][key])
    with pytest.raises(ValueError, match="divisible"):
        data.make_train_iterator(c, process_index=0, process_count=3)


def test_unknown_dataset_is_a_clear_error():
    c = make_config("")
    c.data.tfds_name = "tiny_shakespear"
    with pytest.raises(ValueError, match="no TFDS dataset.*tiny_shakespeare"):
        data.make_train_iterator(c, process_index=0, process_count=1)


def test_missing_text_key_lists_the_available_keys(data_dir):
    c = make_config(data_dir, text_key="content")
    with pytest.raises(ValueError, match=r"text_key='content'.*\['path', 'text'\]"):
        data.make_train_iterator(c, process_index=0, process_count=1)


def test_unknown_split_is_a_clear_error(data_dir):
    c = make_config(data_dir, split="dev")
    with pytest.raises(ValueError, match="no such split"):
        data.make_train_iterator(c, process_index=0, process_count=1)


def test_empty_corpus_is_a_clear_error():
    c = make_config("")
    c.data.tfds_name = "tiny_shakespeare"
    with tfds.testing.mock_data(num_examples=0, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(ValueError, match="empty"):
            data.make_train_iterator(c, process_index=0, process_count=1)
    text_lib.clear_cache()
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: [{"text": ""}, {"text": b""}]):
        with pytest.raises(ValueError, match="empty or too short: it holds 0 tokens"):
            data.make_train_iterator(c, process_index=0, process_count=1)


def test_budget_larger_than_the_split_says_what_it_holds(data_dir):
    c = make_config(data_dir)
    held = data.num_unique_tokens(c)
    c.data.num_tokens = held + 1
    with pytest.raises(ValueError, match=f"holds only {held} tokens"):
        data.make_train_iterator(c, process_index=0, process_count=1)


def test_resolve_rounds_the_vocab_and_keeps_the_original(data_dir):
    c = make_config(data_dir)
    r = data.resolve(c)
    assert r.model.vocab_size == 320  # 259 byte-level ids rounded up to a multiple of 64
    assert c.model.vocab_size == 0
    c.model.vocab_size = 512
    assert data.resolve(c).model.vocab_size == 512
    c.model.kind = "mlp"
    with pytest.raises(ValueError, match="source='task'"):
        data.resolve(c)
