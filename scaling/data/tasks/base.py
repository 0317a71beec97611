"""The task interface shared by every capability task, plus stable hashing helpers.

A task draws structured examples (dicts of integer numpy arrays with leading dimension n, always
holding 'subtask' int32 [n]) and renders them three ways:
  * own-vocab tokens (`tokens`) for `data.source='task'`: ids PAD=0, BOS=1, EOS=2, then the task's
    symbols from 3 on;
  * text (`texts`) as (prompt, answer) strings for a text tokenizer (`data.source='mixture'`, or a
    text-trained LM scored on the task); every answer string ends in "\\n";
  * vectors (`vectors`) for the MLP family, where the task admits one.
Training draws (`sample`) never produce a held-out example (`is_heldout`); the evaluation set
(`eval_examples`) holds only held-out examples, so the two are disjoint by construction.
"""

from __future__ import annotations

import abc
import functools
from typing import Any, Mapping

import numpy as np

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
NUM_SPECIALS = 3

Examples = dict[str, np.ndarray]

_MASK64 = (1 << 64) - 1


_SPLITMIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9),
             np.uint64(0x94D049BB133111EB), np.uint64(30), np.uint64(27), np.uint64(31))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Returns the SplitMix64 finalizer of `x` (uint64 array, same shape)."""
    # computed on a (1-D at least) array copy: integer arrays wrap around without warnings
    return _splitmix64_inplace(np.array(x, dtype=np.uint64, ndmin=1)).reshape(np.shape(x))


def _splitmix64_inplace(z: np.ndarray) -> np.ndarray:
    """Returns `z` (uint64, at least 1-D) overwritten by its SplitMix64 finalizer.

    In place: these hashes run on a few dozen values per training batch, where each numpy
    call's fixed cost, not the arithmetic, is the time (2x faster than allocating per op)."""
    add, mul1, mul2, s1, s2, s3 = _SPLITMIX
    z += add
    z ^= z >> s1
    z *= mul1
    z ^= z >> s2
    z *= mul2
    z ^= z >> s3
    return z


def hash_rows(values_nl: np.ndarray, salt: int) -> np.ndarray:
    """Returns a stable 64-bit hash (uint64 [n]) of each row of an integer array [n, L]."""
    values_nl = np.asarray(values_nl, dtype=np.int64)
    if values_nl.ndim == 1:
        values_nl = values_nl[:, None]
    columns_ln = values_nl.T.astype(np.uint64)  # each column contiguous
    h_n = np.full(values_nl.shape[0], _salt_hash(salt), dtype=np.uint64)
    for column_n in columns_ln:
        h_n ^= column_n
        _splitmix64_inplace(h_n)
    return h_n


@functools.lru_cache(maxsize=64)
def _salt_hash(salt: int) -> np.uint64:
    """Returns splitmix64(salt mod 2^64), the start of every row hash with this salt."""
    return np.uint64(splitmix64(np.asarray([salt & _MASK64], dtype=np.uint64))[0])


def unit_interval(h_n: np.ndarray) -> np.ndarray:
    """Returns hashes mapped to floats in [0, 1) (float64 [n])."""
    return (np.asarray(h_n, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def take(ex: Examples, idx: np.ndarray) -> Examples:
    """Returns the examples at `idx`, indices or a boolean mask (every field along its first axis)."""
    return {k: v[idx] for k, v in ex.items()}


def concat(parts: list[Examples]) -> Examples:
    """Returns the examples of `parts` concatenated along the first axis."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def num_examples(ex: Examples) -> int:
    """Returns the number of examples in `ex`."""
    return int(ex["subtask"].shape[0])


class Task(abc.ABC):
    """A capability task: seeded training draws, a fixed held-out set, and its renderings."""

    name: str = ""
    DEFAULTS: dict[str, Any] = {}

    def __init__(self, params: Mapping[str, Any] | None = None):
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"config.data.task.params: unknown keys {unknown} for task "
                             f"{self.name!r}; known keys (defaults): {self.DEFAULTS}")
        self.params = {**self.DEFAULTS, **params}

    # ------------------------------------------------------------------ examples
    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> Examples:
        """Returns `n` training examples (none held out) drawn with `rng`."""

    @abc.abstractmethod
    def eval_examples(self, n: int) -> Examples:
        """Returns the fixed held-out evaluation examples (about `n`; all held-out if n <= 0)."""

    @abc.abstractmethod
    def is_heldout(self, ex: Examples) -> np.ndarray:
        """Returns whether each example belongs to the held-out set (bool [n])."""

    @abc.abstractmethod
    def answers(self, ex: Examples) -> np.ndarray:
        """Returns the correct answer of each example as an integer (int64 [n])."""

    @property
    def num_subtasks(self) -> int:
        """Returns the number of distinct subtask tags."""
        return 1

    # ------------------------------------------------------------------ renderings
    @property
    @abc.abstractmethod
    def symbols(self) -> list[str]:
        """Returns the task's own symbols; symbol i has id NUM_SPECIALS + i."""

    @property
    def vocab_size(self) -> int:
        """Returns the size of the task's own vocabulary (specials included)."""
        return NUM_SPECIALS + len(self.symbols)

    @abc.abstractmethod
    def tokens(self, ex: Examples) -> list[tuple[np.ndarray, np.ndarray]]:
        """Returns per example (prompt ids, answer ids) in the task's own vocabulary (int32)."""

    @abc.abstractmethod
    def texts(self, ex: Examples) -> list[tuple[str, str]]:
        """Returns per example (prompt, answer) strings; answers end in a newline."""

    @property
    def input_dim(self) -> int:
        """Returns the vector-form input width (MLP family)."""
        raise ValueError(f"task {self.name!r} has no vector form for model.kind='mlp'")

    @property
    def num_classes(self) -> int:
        """Returns the number of vector-form target classes (MLP family)."""
        raise ValueError(f"task {self.name!r} has no vector form for model.kind='mlp'")

    def vectors(self, ex: Examples) -> tuple[np.ndarray, np.ndarray]:
        """Returns (inputs float32 [n, input_dim], targets int32 [n]) for the MLP family."""
        raise ValueError(f"task {self.name!r} has no vector form for model.kind='mlp'")

    # ------------------------------------------------------------------ helpers
    def _rejection_sample(self, draw, rng: np.random.Generator, n: int, want_heldout: bool,
                          max_rounds: int = 100_000) -> Examples:
        """Returns n examples from `draw(rng, m)` kept only if is_heldout == want_heldout."""
        parts, have = [], 0
        for _ in range(max_rounds):
            if have >= n:
                break
            cand = draw(rng, max(64, 2 * (n - have)))
            keep = self.is_heldout(cand) == want_heldout
            kept = int(np.count_nonzero(keep))
            if kept:
                parts.append(take(cand, keep))
                have += kept
        else:
            raise ValueError(f"task {self.name!r}: could not draw {n} "
                             f"{'held-out' if want_heldout else 'training'} examples; the input "
                             "space is too small for the held-out fraction "
                             f"(params {self.params})")
        if not parts:
            return draw(rng, 0)
        whole = parts[0] if len(parts) == 1 else concat(parts)
        return {k: v[:n] for k, v in whole.items()}
