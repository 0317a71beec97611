"""In-context associative recall: key -> value pairs, then a query key; the answer is its value.

Each example holds `num_pairs` distinct keys (out of `num_keys`) with values drawn from
`num_values`, and queries one of its keys (uniformly). Subtask = position of the queried pair
(0 = first), so recall can be read off by distance. Held out: the examples whose stable hash of
(keys, values, query position) lies in the lowest `heldout_fraction` of hash space.

Params (defaults): num_pairs=8, num_keys=26, num_values=10, heldout_fraction=0.02, task_seed=0.
Own tokens: [k_1, v_1, ..., k_n, v_n, '?', k_q] -> [v_q].
Text: keys as lowercase letter codes, values as numbers: "a:3 q:7 c:1 ?q:" -> "7\\n".
Vector form: one-hot keys (num_pairs*num_keys) ++ one-hot values (num_pairs*num_values) ++
one-hot query key (num_keys) -> class in [0, num_values).
`augment.pair_shuffle` may permute the pairs (the answer does not change).
"""

from __future__ import annotations

import string

import numpy as np

from scaling.data.tasks import base


def _key_code(i: int, width: int) -> str:
    letters = string.ascii_lowercase
    out = []
    for _ in range(width):
        out.append(letters[i % 26])
        i //= 26
    return "".join(reversed(out))


class AssociativeRecall(base.Task):
    """Key-value pairs in context, then a query."""

    name = "associative_recall"
    DEFAULTS = {"num_pairs": 8, "num_keys": 26, "num_values": 10, "heldout_fraction": 0.02,
                "task_seed": 0}

    def __init__(self, params=None):
        super().__init__(params)
        self.num_pairs = int(self.params["num_pairs"])
        self.num_keys = int(self.params["num_keys"])
        self.num_values = int(self.params["num_values"])
        if not (1 <= self.num_pairs <= self.num_keys and self.num_values >= 2):
            raise ValueError(f"associative_recall params need 1 <= num_pairs <= num_keys and "
                             f"num_values >= 2, got {self.params}")
        if not 0.0 < float(self.params["heldout_fraction"]) < 1.0:
            raise ValueError(f"associative_recall heldout_fraction must be in (0, 1), "
                             f"got {self.params}")
        width = 1
        while 26 ** width < self.num_keys:
            width += 1
        self._key_codes = [_key_code(i, width) for i in range(self.num_keys)]
        # "key:value" of every pair, rendered once (texts() is on the training data's hot path)
        self._pair_texts = [[f"{code}:{v}" for v in range(self.num_values)]
                            for code in self._key_codes]

    @property
    def num_subtasks(self) -> int:
        return self.num_pairs

    def _draw(self, rng: np.random.Generator, n: int) -> base.Examples:
        keys_np = np.argsort(rng.random((n, self.num_keys)), axis=1)[:, :self.num_pairs]
        values_np = rng.integers(0, self.num_values, size=(n, self.num_pairs))
        query_n = rng.integers(0, self.num_pairs, size=n)
        return {"subtask": query_n.astype(np.int32), "keys": keys_np.astype(np.int32),
                "values": values_np.astype(np.int32)}

    def is_heldout(self, ex: base.Examples) -> np.ndarray:
        key = np.concatenate([ex["keys"], ex["values"], ex["subtask"][:, None]], axis=1)
        u = base.unit_interval(base.hash_rows(key, salt=0xA550C + int(self.params["task_seed"])))
        return u < float(self.params["heldout_fraction"])

    def answers(self, ex: base.Examples) -> np.ndarray:
        return np.take_along_axis(ex["values"], ex["subtask"][:, None].astype(np.int64),
                                  axis=1)[:, 0].astype(np.int64)

    def query_keys(self, ex: base.Examples) -> np.ndarray:
        """Returns the queried key of each example (int64 [n])."""
        return np.take_along_axis(ex["keys"], ex["subtask"][:, None].astype(np.int64),
                                  axis=1)[:, 0].astype(np.int64)

    def sample(self, rng: np.random.Generator, n: int) -> base.Examples:
        return self._rejection_sample(self._draw, rng, n, want_heldout=False)

    def eval_examples(self, n: int) -> base.Examples:
        n = n if n > 0 else 512
        rng = np.random.default_rng([int(self.params["task_seed"]), 0xE7A1])
        return self._rejection_sample(self._draw, rng, n, want_heldout=True)

    # ------------------------------------------------------------------ renderings
    @property
    def symbols(self) -> list[str]:
        return ([f"k{i}" for i in range(self.num_keys)] + [f"v{i}" for i in range(self.num_values)]
                + ["?"])

    def tokens(self, ex: base.Examples) -> list[tuple[np.ndarray, np.ndarray]]:
        s = base.NUM_SPECIALS
        n = ex["keys"].shape[0]
        k_np = s + ex["keys"]
        v_np = s + self.num_keys + ex["values"]
        pairs_n2p = np.stack([k_np, v_np], axis=2).reshape(n, 2 * self.num_pairs)
        q = s + self.num_keys + self.num_values
        prompt_nl = np.concatenate([pairs_n2p, np.full((n, 1), q), s + self.query_keys(ex)[:, None]],
                                   axis=1).astype(np.int32)
        answer_n1 = (s + self.num_keys + self.answers(ex))[:, None].astype(np.int32)
        return list(zip(prompt_nl, answer_n1))

    def texts(self, ex: base.Examples) -> list[tuple[str, str]]:
        codes, pairs = self._key_codes, self._pair_texts
        out = []  # .tolist(): Python ints index and format faster than numpy scalars
        for keys, values, qk, y in zip(ex["keys"].tolist(), ex["values"].tolist(),
                                       self.query_keys(ex).tolist(), self.answers(ex).tolist()):
            ctx = " ".join([pairs[k][v] for k, v in zip(keys, values)])
            out.append((f"{ctx} ?{codes[qk]}:", f"{y}\n"))
        return out

    @property
    def input_dim(self) -> int:
        return self.num_pairs * (self.num_keys + self.num_values) + self.num_keys

    @property
    def num_classes(self) -> int:
        return self.num_values

    def vectors(self, ex: base.Examples) -> tuple[np.ndarray, np.ndarray]:
        n = ex["keys"].shape[0]
        x_nd = np.zeros((n, self.input_dim), dtype=np.float32)
        rows = np.arange(n)[:, None]
        slots = np.arange(self.num_pairs)[None, :]
        x_nd[rows, slots * self.num_keys + ex["keys"]] = 1.0
        off = self.num_pairs * self.num_keys
        x_nd[rows, off + slots * self.num_values + ex["values"]] = 1.0
        off += self.num_pairs * self.num_values
        x_nd[np.arange(n), off + self.query_keys(ex)] = 1.0
        return x_nd, self.answers(ex).astype(np.int32)
