"""Capability tasks: held-out sets disjoint from training, answer spans, frequencies, batches."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from scaling import config as config_lib
from scaling import data
from scaling.data import mixture
from scaling.data import tasks
from scaling.data import text as text_lib
from scaling.data.tasks import base
from scaling.data.tokenizers import ByteTokenizer

SMALL_PARAMS = {
    "sparse_parity": {"n_tasks": 6, "n_bits": 10, "k": 3, "alpha": 0.4, "heldout_fraction": 0.1},
    "modular_arithmetic": {"p": 11, "ops": "+-*/", "train_fraction": 0.5},
    "addition": {"n_digits": 3, "heldout_fraction": 0.05},
    "associative_recall": {"num_pairs": 3, "num_keys": 5, "num_values": 3,
                           "heldout_fraction": 0.05},
}


def task_config(name: str, *, kind: str = "transformer", seq_len: int = 32, batch: int = 64,
                **params):
    c = config_lib.default_config()
    c.model.kind = kind
    c.data.source = "task"
    c.data.seq_len = seq_len
    c.train.batch_size = batch
    c.data.task.name = name
    c.data.task.eval_examples = 96
    c.data.task.params = {**SMALL_PARAMS[name], **params}
    return c


def example_keys(ex: base.Examples) -> set[tuple]:
    fields = sorted(ex)
    flat = np.concatenate([np.asarray(ex[f]).reshape(len(ex["subtask"]), -1).astype(np.int64)
                           for f in fields], axis=1)
    return set(map(tuple, flat.tolist()))


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_eval_set_is_held_out_and_disjoint_from_training(name):
    task = tasks.make_task(name, SMALL_PARAMS[name])
    train = task.sample(np.random.default_rng(0), 20_000)
    ev = task.eval_examples(200)
    assert task.is_heldout(ev).all()
    assert not task.is_heldout(train).any()
    assert not example_keys(train) & example_keys(ev)
    # Deterministic.
    again = task.eval_examples(200)
    for k in ev:
        np.testing.assert_array_equal(ev[k], again[k])


def test_modular_arithmetic_held_out_pairs_never_reach_training_batches():
    c = task_config("modular_arithmetic", batch=128)
    c.data.augment.operand_swap = True  # swapping must not smuggle held-out pairs in either
    task = tasks.make_task("modular_arithmetic", SMALL_PARAMS["modular_arithmetic"])
    it = data.make_train_iterator(c, process_index=0, process_count=1)
    seen = set()
    for _ in range(20):
        b = next(it)
        inp = b["inputs"] - base.NUM_SPECIALS  # [BOS, a, op, b, =, c]
        for a, o, bb in zip(inp[:, 1], inp[:, 2] - task.p, inp[:, 3]):
            seen.add((int(o), int(a), int(bb)))
    heldout = {(o, int(a), int(b)) for o, pairs in enumerate(task.heldout_pairs) for a, b in pairs}
    train = {(o, int(a), int(b)) for o, pairs in enumerate(task.train_pairs) for a, b in pairs}
    assert seen and not seen & heldout
    assert len(seen) > 0.8 * len(train)  # the stream covers the training table
    n_pairs = 11 * 11 * 3 + 11 * 10
    assert len(heldout) + len(train) == n_pairs and len(heldout) == n_pairs - len(train)


def test_sparse_parity_frequencies_follow_the_power_law():
    alpha = 0.4
    task = tasks.make_task("sparse_parity", {"n_tasks": 20, "n_bits": 30, "alpha": alpha})
    ex = task.sample(np.random.default_rng(1), 200_000)
    counts = np.bincount(ex["subtask"], minlength=20)
    expected = 200_000 * np.arange(1, 21) ** -(alpha + 1.0)
    expected *= 200_000 / expected.sum()
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected) + 5)
    slope = np.polyfit(np.log(np.arange(1, 21)), np.log(counts), 1)[0]
    assert abs(slope + (alpha + 1)) < 0.05
    # The label is the parity of the subtask's k relevant bits.
    rel = task.relevant_tk[ex["subtask"][:50]]
    manual = np.array([ex["bits"][i, rel[i]].sum() % 2 for i in range(50)])
    np.testing.assert_array_equal(task.answers(base.take(ex, np.arange(50))), manual)


def test_sparse_parity_mlp_vectors_and_tagged_eval():
    c = task_config("sparse_parity", kind="mlp")
    r = data.resolve(c)
    assert (r.model.input_dim, r.model.num_classes) == (6 + 10, 2)
    batch = next(data.make_train_iterator(c, process_index=0, process_count=1))
    assert batch["inputs"].shape == (64, 16) and batch["inputs"].dtype == np.float32
    assert batch["targets"].shape == (64,) and batch["weights"].shape == (64,)
    task = tasks.make_task("sparse_parity", SMALL_PARAMS["sparse_parity"])
    x = batch["inputs"]
    subtask = x[:, :6].argmax(1)
    assert (x[:, :6].sum(1) == 1).all()
    expected = x[:, 6:].astype(np.int64)[np.arange(64)[:, None], task.relevant_tk[subtask]].sum(1) % 2
    np.testing.assert_array_equal(batch["targets"], expected)
    ev = data.make_task_eval(c, process_index=0, process_count=1)
    assert len(ev) == 2 and ev[-1]["weights"][:32].all() and not ev[-1]["weights"][32:].any()
    ids = np.concatenate([b["example_id"] for b in ev])
    np.testing.assert_array_equal(ids[:96], np.arange(96))
    sub = np.concatenate([b["subtask"] for b in ev])[:96]
    np.testing.assert_array_equal(np.bincount(sub), np.full(6, 16))  # even over subtasks


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_token_eval_answer_spans(name):
    c = task_config(name)
    task = tasks.make_task(name, SMALL_PARAMS[name])
    ex = task.eval_examples(96)
    answers = task.answers(ex)
    batches = data.make_task_eval(c, process_index=0, process_count=1)
    inputs = np.concatenate([b["inputs"] for b in batches])[:96]
    targets = np.concatenate([b["targets"] for b in batches])[:96]
    weights = np.concatenate([b["weights"] for b in batches])[:96]
    sym = task.symbols
    for i in range(96):
        span = targets[i][weights[i] == 1]
        words = [sym[t - base.NUM_SPECIALS] for t in span if t != base.EOS_ID]
        assert "".join(w.lstrip("v") for w in words) == str(answers[i])
        assert inputs[i, 0] == base.BOS_ID
        first = np.flatnonzero(weights[i])[0]
        np.testing.assert_array_equal(targets[i, :first], inputs[i, 1:first + 1])


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_text_rendering_answer_spans_in_byte_vocab(name):
    c = task_config(name, seq_len=64)
    c.data.source = "tfds"  # a text LM scored on the task: rendered by the text tokenizer
    task = tasks.make_task(name, SMALL_PARAMS[name])
    ex = task.eval_examples(96)
    batches = data.make_task_eval(c, process_index=0, process_count=1)
    tok = ByteTokenizer()
    for i, (prompt, answer) in enumerate(task.texts(ex)):
        b = batches[i // 64]
        row = b["targets"][i % 64]
        w = b["weights"][i % 64]
        assert tok.decode(row[w == 1]) == answer == f"{task.answers(base.take(ex, [i]))[0]}\n"
        assert tok.decode(np.append(b["inputs"][i % 64][0], row)).startswith(prompt + answer)


def mixture_config(task: str, mix_rate: float, batches: int):
    """Returns a mixture config on mock tiny_shakespeare: 8 rows of 32 tokens per batch."""
    c = config_lib.default_config()
    c.data.tfds_name = "tiny_shakespeare"
    c.data.source = "mixture"
    c.data.seq_len = 32
    c.train.batch_size = 8
    c.data.task.name = task
    c.data.task.mix_rate = mix_rate
    c.data.num_tokens = batches * 8 * 32
    return c


def test_mixture_mixes_task_rows_at_the_rate_and_keeps_budgets_nested(tmp_path):
    text_lib.clear_cache()
    with tfds.testing.mock_data(num_examples=1000, policy=tfds.testing.MockPolicy.USE_CODE):
        c = mixture_config("addition", 0.25, batches=20)
        it = data.make_train_iterator(c, process_index=0, process_count=1)
        batches = [next(it) for _ in range(20)]
        c2 = c.copy_and_resolve_references()
        c2.data.num_tokens = 40 * 8 * 32
        it2 = data.make_train_iterator(c2, process_index=0, process_count=1)
        for b in batches:
            b2 = next(it2)
            np.testing.assert_array_equal(b["inputs"], b2["inputs"])
    text_lib.clear_cache()
    tok = ByteTokenizer()
    # Text rows weigh every token; task rows only their answers.
    task_rows = [(bi, r) for bi, b in enumerate(batches) for r in range(8)
                 if (b["weights"][r] == 0).any()]
    frac = len(task_rows) / 160
    assert 0.12 < frac < 0.4
    for bi, r in task_rows:
        b = batches[bi]
        text = tok.decode(np.append(b["inputs"][r][0], b["targets"][r][b["weights"][r] > -1]))
        for line in text.split("\n")[:-1]:
            lhs, rhs = line.split("=")
            x, y = lhs.split("+")
            assert int(x) + int(y) == int(rhs)
        answer_text = tok.decode(b["targets"][r][b["weights"][r] == 1])
        sums = [int(line.split("=")[1]) for line in text.split("\n")[:-1]]
        assert answer_text == "".join(f"{s}\n" for s in sums)


def test_hash_rows_is_splitmix64_chained_over_the_columns():
    """The held-out split and the task-row choice hang on this hash: it must stay the same
    function (here against a pure-Python SplitMix64) whatever numpy tricks compute it."""
    mask = (1 << 64) - 1

    def splitmix(z: int) -> int:
        z = (z + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    values_nl = np.asarray([[0, 1, -1], [2**40, 7, 3], [5, 5, 5]], dtype=np.int64)
    for salt in (0, 0xA550C, -3, 2**64 - 1):
        want = []
        for row in values_nl.tolist():
            h = splitmix(salt & mask)
            for v in row:
                h = splitmix(h ^ (v & mask))
            want.append(h)
        assert base.hash_rows(values_nl, salt).tolist() == want
        assert base.hash_rows(values_nl[:, 0], salt).tolist() == [
            splitmix(splitmix(salt & mask) ^ (v & mask)) for v in values_nl[:, 0].tolist()]
    assert base.splitmix64(np.uint64(5)).shape == ()
    assert int(base.splitmix64(np.uint64(5))) == splitmix(5)


def test_mixture_task_rows_pack_whole_examples_greedily_and_ignore_the_process_count(tmp_path):
    task = tasks.make_task("associative_recall", SMALL_PARAMS["associative_recall"])
    tok = ByteTokenizer()
    rows, answer, content = mixture.pack_task_rows(task, tok, np.random.default_rng(3), 6, 40)
    again = mixture.pack_task_rows(task, tok, np.random.default_rng(3), 6, 40)
    for a, b in zip((rows, answer, content), again):
        np.testing.assert_array_equal(a, b)
    firsts = []
    for r in range(6):
        text = tok.decode(rows[r][content[r] == 1])
        lines = text.split("\n")
        assert lines[-1] == "" and len(lines) >= 2  # whole examples only, each ends in "\n"
        for line in lines[:-1]:
            ctx, query = line.split(" ?")
            pairs = dict(kv.split(":") for kv in ctx.split(" "))
            assert pairs[query.split(":")[0]] == query.split(":")[1]  # the answer is the value
        assert tok.decode(rows[r][answer[r] == 1]) == "".join(
            line.split(":")[-1] + "\n" for line in lines[:-1])
        assert (rows[r][content[r] == 0] == tok.pad_id).all()
        firsts.append(len(lines[0]) + 1)
    # greedy: the first example of row r + 1 did not fit in what row r left free
    for r in range(5):
        assert content[r].sum() + firsts[r + 1] > 41
    with pytest.raises(ValueError, match="seq_len=8"):
        mixture.pack_task_rows(task, tok, np.random.default_rng(0), 2, 8)

    text_lib.clear_cache()
    with tfds.testing.mock_data(num_examples=1000, policy=tfds.testing.MockPolicy.USE_CODE):
        c = mixture_config("associative_recall", 0.4, batches=10)
        c.data.task.params = SMALL_PARAMS["associative_recall"]
        whole = data.make_train_iterator(c, process_index=0, process_count=1)
        halves = [data.make_train_iterator(c, process_index=p, process_count=2) for p in range(2)]
        for _ in range(10):
            b = next(whole)
            parts = [next(h) for h in halves]
            for k in ("inputs", "targets", "weights"):
                np.testing.assert_array_equal(b[k], np.concatenate([q[k] for q in parts]))
    text_lib.clear_cache()


def test_finite_task_dataset_repeats_its_examples():
    c = task_config("modular_arithmetic", batch=32)
    c.data.task.num_examples = 64
    it = data.make_train_iterator(c, process_index=0, process_count=1)
    rows = [np.concatenate([next(it)["inputs"] for _ in range(2)]) for _ in range(3)]
    keyed = [sorted(map(bytes, r)) for r in rows]
    assert keyed[0] == keyed[1] == keyed[2]
    assert not np.array_equal(rows[0], rows[1])


def test_task_errors_are_clear():
    with pytest.raises(ValueError, match="unknown task"):
        tasks.make_task("parity", {})
    with pytest.raises(ValueError, match="unknown keys \\['bits'\\]"):
        tasks.make_task("sparse_parity", {"bits": 3})
    c = task_config("addition", kind="mlp")
    with pytest.raises(ValueError, match="no vector form"):
        data.resolve(c)
    c = task_config("sparse_parity", seq_len=8)
    with pytest.raises(ValueError, match="seq_len=8"):
        next(data.make_train_iterator(c, process_index=0, process_count=1))
    c = task_config("addition")
    c.data.augment.token_substitution = 0.1
    with pytest.raises(ValueError, match="text only"):
        data.make_train_iterator(c, process_index=0, process_count=1)


def test_task_stream_is_resumable_and_sharded():
    c = task_config("associative_recall", batch=16)
    c.data.augment.pair_shuffle = True
    ref = [next(it) for it in [data.make_train_iterator(c, process_index=0, process_count=1)]
           for _ in range(5)]
    it = data.make_train_iterator(c, process_index=0, process_count=1)
    next(it), next(it)
    state = it.get_state()
    shards = []
    for p in range(2):
        s = data.make_train_iterator(c, process_index=p, process_count=2)
        s.set_state(state)
        shards.append([next(s) for _ in range(3)])
    for k in range(3):
        np.testing.assert_array_equal(
            np.concatenate([shards[0][k]["inputs"], shards[1][k]["inputs"]]), ref[2 + k]["inputs"])
    r = data.resolve(c)
    assert r.model.vocab_size == 64  # 3 specials + 5 keys + 3 values + '?' -> 12, rounded up
