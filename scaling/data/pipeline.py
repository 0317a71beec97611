"""Batches for training and evaluation: text, tasks, and text with a task mixed in.

Global rows. The run's training data is one sequence of rows indexed by a global row g = 0, 1, ...
Global batch b holds rows [b*B, (b+1)*B) for B = train.batch_size; process p of P holds the
contiguous slice [b*B + p*B/P, b*B + (p+1)*B/P), so the processes' shards are disjoint and
concatenated in process order they equal the single-process batch. Row contents depend only on
(seed, g) and the data config (through the budget, the epoch length is rounded to whole batches
of B rows), never on P or the model, so resuming from a row index (the iterator state) continues
exactly where the run stopped, even with a different process count. Batch contents are made in
the host's CPU context (grain map + thread prefetch), so augmentation never touches accelerators.

Sources (config.data.source):
  * 'tfds': packed text rows (see text.py); weights 1 everywhere.
  * 'mixture': row g is a task row instead of text row g when hash(seed, g) < data.task.mix_rate
    (the text row is skipped, not shifted, so budgets stay nested). A task row packs whole task
    examples rendered as text by the text tokenizer and is padded (weight 0 on padding); the task
    rows of global batch b are packed in row order from one draw seeded by (seed, b)
    (mixture.py), so their contents depend on (seed, g, B).
  * 'task': one example per row in the task's own vocabulary, [BOS] + prompt + answer, padded; or
    vectors for model.kind='mlp'. Example u comes from chunk u // 1024 drawn with (seed, chunk), so
    the stream is infinite and deterministic; data.task.num_examples > 0 makes it a fixed training
    set of that many examples, repeated with the epoch order of text rows.
Evaluation batches (`make_eval_batches`, `make_task_eval`) are global batches of
data.eval_batch_size rows (0: train.batch_size) on every process unless process_index/process_count are passed, in which
case they are sliced like training batches; the last batch is padded with weight-0 rows
(example_id and subtask -1).
Task weights: 1 on answer tokens only (data.task.loss_on='answer', default) or on every non-pad
token ('all'). Evaluation weights are always answer-only.
"""

from __future__ import annotations

import collections
import copy
import logging
import math
import os
import sys
import threading
from typing import Any, Callable, Iterator

import grain
import jax
import ml_collections
import numpy as np

from scaling.data import augment as aug
from scaling.data import mixture as mixture_lib
from scaling.data import prepared as prepared_lib
from scaling.data import tasks as tasks_lib
from scaling.data import text as text_lib
from scaling.data.tasks import base as task_base
from scaling.data.tokenizers import Tokenizer, make_tokenizer

EVAL_SEED = 0  # evaluation text order is the same for every run, whatever config.seed
TASK_CHUNK = 1024
STATE_VERSION = 1

Batch = dict[str, np.ndarray]
PathLike = str | os.PathLike


# ------------------------------------------------------------------------------ config helpers


def _task(config: ml_collections.ConfigDict) -> task_base.Task | None:
    name = config.data.task.name
    if not name:
        return None
    params = config.data.task.params
    params = params.to_dict() if hasattr(params, "to_dict") else dict(params)
    return tasks_lib.make_task(name, params)


def _loss_on(config: ml_collections.ConfigDict) -> str:
    v = config.data.task.get("loss_on", "answer")
    if v not in ("answer", "all"):
        raise ValueError(f"config.data.task.loss_on={v!r}: must be one of ['answer', 'all']")
    return v


def _check_source(config: ml_collections.ConfigDict) -> None:
    d = config.data
    if d.source not in ("tfds", "task", "mixture"):
        raise ValueError(f"config.data.source={d.source!r}: must be one of "
                         "['tfds', 'task', 'mixture']")
    if d.source in ("task", "mixture") and not d.task.name:
        raise ValueError(f"config.data.source={d.source!r} needs config.data.task.name; known "
                         f"tasks: {sorted(tasks_lib.TASKS)}")
    if config.model.kind == "mlp" and d.source != "task":
        raise ValueError(f"config.model.kind='mlp' needs config.data.source='task' (vector-form "
                         f"task), got {d.source!r}")
    if d.source == "task":
        a = d.augment
        for field in ("token_substitution", "span_mask"):
            if a[field] > 0:
                raise ValueError(f"config.data.augment.{field}={a[field]}: applies to text only; "
                                 "on a task prompt it would change the answer")
        if a.random_crop:
            raise ValueError("config.data.augment.random_crop=True: applies to text only")


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    p = jax.process_index() if process_index is None else int(process_index)
    n = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= p < n:
        raise ValueError(f"process_index={p} must be in [0, process_count={n})")
    return p, n


def _eval_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """Evaluation data is small: every process holds the global batches unless asked for a shard."""
    if process_index is None and process_count is None:
        return 0, 1
    return _processes(process_index, process_count)


def _local_batch(config: ml_collections.ConfigDict, process_count: int) -> int:
    b = int(config.train.batch_size)
    if b % process_count:
        raise ValueError(f"config.train.batch_size={b} must be divisible by the process count "
                         f"{process_count}")
    return b // process_count


def _token_stream(config: ml_collections.ConfigDict, tok: Tokenizer, split: str, seed: int
                  ) -> text_lib.Stream:
    """Returns the split's token stream: read from data.prepared_dir if set, else tokenized here."""
    d = config.data
    if d.get("prepared_dir"):
        return prepared_lib.open_stream(d.prepared_dir, split, d.tfds_name, d.text_key, tok,
                                        seed, d.shuffle)
    return text_lib.token_stream(d.tfds_name, split, d.text_key, d.tfds_data_dir, tok, seed,
                                 d.shuffle)


def _round_up(n: int, multiple: int) -> int:
    multiple = max(1, int(multiple))
    return int(math.ceil(n / multiple) * multiple)


# --------------------------------------------------------------------------------- public API


def resolve(config: ml_collections.ConfigDict, workdir: PathLike | None = None
            ) -> ml_collections.ConfigDict:
    """Returns a copy of `config` with model.vocab_size / input_dim / num_classes filled from the data."""
    _check_source(config)
    c = copy.deepcopy(config)
    task = _task(c)
    m = c.model
    if m.kind == "mlp":
        if task is None:
            raise ValueError("config.model.kind='mlp' needs config.data.task.name")
        if not m.input_dim:
            m.input_dim = task.input_dim
        if not m.num_classes:
            m.num_classes = task.num_classes
        return c
    if not m.vocab_size:
        if c.data.source == "task":
            vocab = task.vocab_size
        else:
            vocab = make_tokenizer(c, workdir).vocab_size
        m.vocab_size = _round_up(vocab, m.vocab_multiple)
    return c


def make_train_iterator(config: ml_collections.ConfigDict, workdir: PathLike | None = None, *,
                        process_index: int | None = None, process_count: int | None = None
                        ) -> "DataIterator":
    """Returns an endless, resumable iterator of this process's training batches (numpy dicts)."""
    _check_source(config)
    p, n_proc = _processes(process_index, process_count)
    d = config.data
    if d.source == "task":
        batcher: Callable[[int], Batch] = _TaskBatcher(config, _task(config), p, n_proc)
    else:
        batcher = _TextBatcher(config, make_tokenizer(config, workdir), p, n_proc)
    fingerprint = {
        "source": d.source, "tfds_name": d.tfds_name, "split": d.split, "seed": int(config.seed),
        "seq_len": int(d.seq_len), "num_tokens": int(d.num_tokens), "shuffle": bool(d.shuffle),
        "shuffle_window_tokens": int(d.shuffle_window_tokens), "task": d.task.name, "tokenizer": d.tokenizer,
    }
    return DataIterator(batcher, int(config.train.batch_size), fingerprint, int(d.prefetch))


def make_eval_batches(config: ml_collections.ConfigDict, workdir: PathLike | None = None,
                      split: str | None = None, *, process_index: int | None = None,
                      process_count: int | None = None) -> list[Batch]:
    """Returns the fixed validation batches (data.eval_tokens tokens of the split); global rows by default."""
    _check_source(config)
    p, n_proc = _eval_processes(process_index, process_count)
    if config.data.source == "task":
        out = make_task_eval(config, workdir, process_index=p, process_count=n_proc)
        return [{k: b[k] for k in ("inputs", "targets", "weights")} for b in out]
    d = config.data
    split = split or d.eval_split
    tok = make_tokenizer(config, workdir)
    stream = _token_stream(config, tok, split, EVAL_SEED)
    t = int(d.seq_len)
    want = max(1, math.ceil(int(d.eval_tokens) / t))
    rows = want if stream.ensure(want * t + 1) else max(0, (len(stream) - 1) // t)
    if rows < want:
        logging.info("eval split %r of %r holds %d tokens: evaluating on %d rows, not %d",
                     split, d.tfds_name, len(stream), rows, want)
    packed = text_lib.PackedText(stream, t, rows * t, what=f"eval split {split!r} of "
                                                        f"{d.tfds_name!r}")
    rows_n = packed.rows(np.arange(packed.num_rows))
    weights_n = np.ones((packed.num_rows, t), dtype=np.float32)
    return _batch_rows(rows_n[:, :-1], rows_n[:, 1:], weights_n, {}, tok.pad_id, config, p, n_proc)


def make_task_eval(config: ml_collections.ConfigDict, workdir: PathLike | None = None, *,
                   process_index: int | None = None, process_count: int | None = None
                   ) -> list[Batch]:
    """Returns the fixed held-out task batches (weights 1 exactly on answer tokens); [] if no task."""
    task = _task(config)
    if task is None:
        return []
    p, n_proc = _eval_processes(process_index, process_count)
    ex = task.eval_examples(int(config.data.task.eval_examples))
    n = task_base.num_examples(ex)
    extra = {"example_id": np.arange(n, dtype=np.int32), "subtask": ex["subtask"].astype(np.int32)}
    if config.model.kind == "mlp":
        x_nd, y_n = task.vectors(ex)
        return _batch_rows(x_nd, y_n, np.ones(n, dtype=np.float32), extra, 0, config, p, n_proc)
    t = int(config.data.seq_len)
    if config.data.source == "task":
        pieces = [(np.concatenate([[task_base.BOS_ID], pr]), an) for pr, an in task.tokens(ex)]
        pad = task_base.PAD_ID
    else:
        tok = make_tokenizer(config, workdir)
        pieces = [(tok.encode(pr), tok.encode(an)) for pr, an in task.texts(ex)]
        pad = tok.pad_id
    rows_nl = np.full((n, t + 1), pad, dtype=np.int32)
    answer_nl = np.zeros((n, t + 1), dtype=np.float32)
    for i, (pr, an) in enumerate(pieces):
        mixture_lib.check_fits(len(pr) + len(an), t, task.name)
        rows_nl[i, :len(pr)] = pr
        rows_nl[i, len(pr):len(pr) + len(an)] = an
        answer_nl[i, len(pr):len(pr) + len(an)] = 1.0
    return _batch_rows(rows_nl[:, :-1], rows_nl[:, 1:], answer_nl[:, 1:], extra, pad, config, p,
                       n_proc)


def num_unique_tokens(config: ml_collections.ConfigDict, workdir: PathLike | None = None,
                      split: str | None = None) -> int:
    """Returns the tokens a text split holds (EOS separators included); tasks: examples available."""
    d = config.data
    if d.source == "task":
        n = int(d.task.get("num_examples", 0))
        return n if n > 0 else sys.maxsize
    tok = make_tokenizer(config, workdir)
    stream = _token_stream(config, tok, split or d.split, int(config.seed))
    return stream.total()


# ------------------------------------------------------------------------------------ helpers


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """Returns the rows per evaluation batch: data.eval_batch_size, or train.batch_size if 0."""
    return int(config.data.get("eval_batch_size", 0) or config.train.batch_size)


def _batch_rows(inputs: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                extra: dict[str, np.ndarray], pad_id: int, config: ml_collections.ConfigDict,
                p: int, n_proc: int) -> list[Batch]:
    """Returns fixed batches of eval_batch_size global rows (last one padded, weight 0), this process's slice."""
    b = eval_batch_size(config)
    if b % n_proc:
        raise ValueError(f"config.data.eval_batch_size={b} (0: train.batch_size) must be "
                         f"divisible by the process count {n_proc}")
    bp = b // n_proc
    n = inputs.shape[0]
    out = []
    for start in range(0, n, b):
        idx = np.arange(start + p * bp, start + (p + 1) * bp)
        valid = idx < n
        idx_c = np.minimum(idx, n - 1)
        batch = {
            "inputs": np.where(_expand(valid, inputs), inputs[idx_c],
                               0.0 if inputs.dtype.kind == "f" else pad_id).astype(inputs.dtype),
            "targets": np.where(_expand(valid, targets), targets[idx_c],
                                pad_id if targets.ndim > 1 else 0).astype(np.int32),
            "weights": np.where(_expand(valid, weights), weights[idx_c], 0.0).astype(np.float32),
        }
        for k, v in extra.items():
            batch[k] = np.where(valid, v[idx_c], -1).astype(np.int32)
        out.append(batch)
    return out


def _expand(valid_n: np.ndarray, like: np.ndarray) -> np.ndarray:
    return valid_n.reshape((-1,) + (1,) * (like.ndim - 1))


def _global_rows(b: int, batch_size: int, p: int, bp: int) -> np.ndarray:
    start = b * batch_size + p * bp
    return np.arange(start, start + bp, dtype=np.int64)


def _augment_examples(config: ml_collections.ConfigDict, task: task_base.Task,
                      ex: task_base.Examples, keys: jax.Array) -> task_base.Examples:
    """Returns examples after the example-level augmentations enabled in config.data.augment."""
    a = config.data.augment
    if a.operand_swap and "a" in ex and "b" in ex:
        comm = (task.commutative_mask(ex) if hasattr(task, "commutative_mask")
                else np.ones(task_base.num_examples(ex), dtype=bool))
        swap = np.asarray(aug.swap_decisions(keys, comm))
        ex = dict(ex)
        ex["a"], ex["b"] = np.where(swap, ex["b"], ex["a"]), np.where(swap, ex["a"], ex["b"])
    if a.get("pair_shuffle", False) and "keys" in ex and "values" in ex:
        k, v, q = aug.shuffle_pairs(keys, ex["keys"], ex["values"], ex["subtask"])
        ex = dict(ex, keys=np.asarray(k), values=np.asarray(v),
                  subtask=np.asarray(q).astype(np.int32))
    return ex


def _needs_example_augment(config: ml_collections.ConfigDict) -> bool:
    a = config.data.augment
    return bool(a.operand_swap or a.get("pair_shuffle", False))


# ------------------------------------------------------------------------------------ batchers


class _TextBatcher:
    """Batch b -> this process's rows of packed text (with task rows mixed in for 'mixture')."""

    def __init__(self, config: ml_collections.ConfigDict, tok: Tokenizer, p: int, n_proc: int):
        d = config.data
        self.config = config
        self.tok = tok
        self.p, self.bp = p, _local_batch(config, n_proc)
        self.batch_size = int(config.train.batch_size)
        self.seed = int(config.seed)
        self.seq_len = int(d.seq_len)
        stream = _token_stream(config, tok, d.split, self.seed)
        self.packed = text_lib.PackedText(stream, self.seq_len, int(d.num_tokens),
                                          row_multiple=self.batch_size)
        window = int(d.shuffle_window_tokens) // self.seq_len if d.shuffle else 0
        self.order = text_lib.RowOrder(self.packed.num_rows, self.seed, d.shuffle, window,
                                       self.packed.window_limit(window))
        self.in_budget = None  # random crops: which stream rows the budget's rows are
        if d.augment.random_crop:
            self.in_budget = np.zeros(self.order.limit_rows + 1, dtype=bool)
            self.in_budget[self.order.first_epoch(np.arange(self.packed.num_rows))] = True
        self.mix_rate = float(d.task.mix_rate) if d.source == "mixture" else 0.0
        self.task = _task(config) if d.source == "mixture" else None
        self.loss_on = _loss_on(config)
        self.aug = d.augment
        # per-run constants of the task-row draws (derived once: they cost ~20 µs per batch)
        self.task_row_salt = text_lib.sub_seed(self.seed, 0x313C)
        self.task_draw_seed = text_lib.sub_seed(self.seed, 0x7A5D)

    def _is_task(self, rows_g: np.ndarray) -> np.ndarray:
        if self.mix_rate <= 0:
            return np.zeros(rows_g.shape, dtype=bool)
        u = task_base.unit_interval(task_base.hash_rows(rows_g[:, None], salt=self.task_row_salt))
        return u < self.mix_rate

    def task_rows(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Returns (is_task bool [bp], rows int32 [bp, T+1], answer, content f32 [bp, T+1]).

        The task rows of the whole global batch b are packed from one draw seeded by (seed, b), so
        every process makes the same rows and keeps its own slice (content independent of P)."""
        all_g = _global_rows(b, self.batch_size, 0, self.batch_size)
        is_task_all = self._is_task(all_g)
        mine = slice(self.p * self.bp, (self.p + 1) * self.bp)
        is_task = is_task_all[mine]
        t1 = self.seq_len + 1
        if not is_task.any():
            empty = np.zeros((0, t1), np.float32)
            return is_task, empty.astype(np.int32), empty, empty
        augment = None
        if _needs_example_augment(self.config):
            seed_b = text_lib.sub_seed(self.seed, int(b) & 0xFFFFFFFF)

            def augment(ex: task_base.Examples, index: np.ndarray) -> task_base.Examples:
                return _augment_examples(self.config, self.task, ex,
                                         aug.row_keys(seed_b, index, 0xA06))

        rng = np.random.default_rng([self.task_draw_seed, int(b)])
        rows, answer, content = mixture_lib.pack_task_rows(
            self.task, self.tok, rng, int(is_task_all.sum()), self.seq_len, augment)
        k = (np.cumsum(is_task_all) - 1)[mine][is_task]  # this process's rows among the batch's
        return is_task, rows[k], answer[k], content[k]

    def __call__(self, b: int) -> Batch:
        rows_g = _global_rows(b, self.batch_size, self.p, self.bp)
        unique = self.order(rows_g)
        if self.aug.random_crop:
            windows, max_off = self.packed.windows(unique, self.in_budget)
            keys = aug.row_keys(self.seed, rows_g, 0xC209)
            rows = np.array(aug.crop_rows(keys, windows, max_off, length=self.seq_len + 1))
        else:
            rows = self.packed.rows(unique)
        weights = np.ones((self.bp, self.seq_len), dtype=np.float32)
        is_task, task_rows, answer, content = self.task_rows(b)
        rows[is_task] = task_rows
        weights[is_task] = (answer if self.loss_on == "answer" else content)[:, 1:]
        inputs, targets = rows[:, :-1], rows[:, 1:]
        if self.aug.token_substitution > 0 or self.aug.span_mask > 0:
            eligible = np.repeat(~is_task[:, None], self.seq_len, axis=1)
            keys = aug.row_keys(self.seed, rows_g, 0x5B5)
            inputs = np.asarray(aug.augment_text_inputs(
                keys, inputs, eligible, substitution=float(self.aug.token_substitution),
                span_rate=float(self.aug.span_mask), span_length=int(self.aug.span_length),
                mask_id=int(self.tok.pad_id), vocab_size=int(self.tok.vocab_size)))
        return {"inputs": np.ascontiguousarray(inputs, dtype=np.int32),
                "targets": np.ascontiguousarray(targets, dtype=np.int32),
                "weights": weights}


class _TaskBatcher:
    """Batch b -> this process's task examples: own-vocab token rows, or vectors for the MLP."""

    def __init__(self, config: ml_collections.ConfigDict, task: task_base.Task, p: int,
                 n_proc: int):
        self.config = config
        self.task = task
        self.p, self.bp = p, _local_batch(config, n_proc)
        self.batch_size = int(config.train.batch_size)
        self.seed = int(config.seed)
        self.seq_len = int(config.data.seq_len)
        self.vectors = config.model.kind == "mlp"
        self.loss_on = _loss_on(config)
        n = int(config.data.task.get("num_examples", 0))
        self.order = text_lib.RowOrder(n, self.seed, config.data.shuffle) if n > 0 else None
        self._chunks: "collections.OrderedDict[int, task_base.Examples]" = collections.OrderedDict()
        self._lock = threading.Lock()
        if self.vectors:
            self.task.input_dim  # raises early if the task has no vector form

    def _chunk(self, c: int) -> task_base.Examples:
        with self._lock:
            ex = self._chunks.get(c)
            if ex is not None:
                self._chunks.move_to_end(c)
                return ex
        rng = np.random.default_rng([text_lib.sub_seed(self.seed, 0x7A5C), int(c)])
        ex = self.task.sample(rng, TASK_CHUNK)
        with self._lock:
            self._chunks[c] = ex
            while len(self._chunks) > 8:
                self._chunks.popitem(last=False)
        return ex

    def examples(self, rows_g: np.ndarray) -> task_base.Examples:
        """Returns the (augmented) training examples of global rows `rows_g`."""
        unique = self.order(rows_g) if self.order is not None else rows_g
        chunk_n, off_n = np.divmod(unique, TASK_CHUNK)
        parts = [task_base.take(self._chunk(int(c)), off_n[chunk_n == c])
                 for c in np.unique(chunk_n)]
        # Reassemble in row order.
        order = np.argsort(np.argsort(chunk_n, kind="stable"), kind="stable")
        ex = task_base.take(task_base.concat(parts), order)
        if _needs_example_augment(self.config):
            keys = aug.row_keys(self.seed, rows_g, 0xA06)
            ex = _augment_examples(self.config, self.task, ex, keys)
        return ex

    def __call__(self, b: int) -> Batch:
        rows_g = _global_rows(b, self.batch_size, self.p, self.bp)
        ex = self.examples(rows_g)
        if self.vectors:
            x_nd, y_n = self.task.vectors(ex)
            return {"inputs": x_nd, "targets": y_n, "weights": np.ones(self.bp, np.float32)}
        t1 = self.seq_len + 1
        rows = np.full((self.bp, t1), task_base.PAD_ID, dtype=np.int32)
        answer = np.zeros((self.bp, t1), dtype=np.float32)
        content = np.zeros((self.bp, t1), dtype=np.float32)
        for i, (pr, an) in enumerate(self.task.tokens(ex)):
            n = 1 + len(pr) + len(an)
            mixture_lib.check_fits(n, self.seq_len, self.task.name)
            rows[i, 0] = task_base.BOS_ID
            rows[i, 1:1 + len(pr)] = pr
            rows[i, 1 + len(pr):n] = an
            answer[i, 1 + len(pr):n] = 1.0
            content[i, :n] = 1.0
        weights = answer[:, 1:] if self.loss_on == "answer" else content[:, 1:]
        return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "weights": weights}


# ------------------------------------------------------------------------------------ iterator


class DataIterator(Iterator[Batch]):
    """Endless iterator of batches with a JSON-serializable position (get_state / set_state)."""

    def __init__(self, batch_fn: Callable[[int], Batch], global_batch_size: int,
                 fingerprint: dict[str, Any], prefetch: int):
        self._batch_fn = batch_fn
        self._global_batch_size = global_batch_size
        self._fingerprint = fingerprint
        self._prefetch = max(0, prefetch)
        self._next_batch = 0
        self._it: Iterator[Batch] | None = None

    def _on_host(self, b: int) -> Batch:
        with jax.default_device(aug.cpu_device()):  # augmentation never touches accelerators
            return self._batch_fn(b)

    def _start(self) -> Iterator[Batch]:
        ds = grain.MapDataset.range(self._next_batch, sys.maxsize).map(self._on_host)
        if self._prefetch == 0:
            return iter(ds[i] for i in range(len(ds)))
        return iter(ds.to_iter_dataset(
            grain.ReadOptions(num_threads=1, prefetch_buffer_size=self._prefetch)))

    def __iter__(self) -> "DataIterator":
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = self._start()
        batch = next(self._it)
        self._next_batch += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """Returns the position (JSON-serializable): the next global row and the data fingerprint."""
        return {"version": STATE_VERSION, "next_row": self._next_batch * self._global_batch_size,
                **self._fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        """Moves to the position in `state`, so that the next batch continues that run exactly."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}")
        diff = {k: (state.get(k), v) for k, v in self._fingerprint.items() if state.get(k) != v}
        if diff:
            raise ValueError("data iterator state comes from a different data config "
                             f"(saved, now): {diff}")
        row = int(state["next_row"])
        if row % self._global_batch_size:
            raise ValueError(f"data iterator state next_row={row} is not a multiple of "
                             f"train.batch_size={self._global_batch_size}")
        self._next_batch = row // self._global_batch_size
        self._it = None
