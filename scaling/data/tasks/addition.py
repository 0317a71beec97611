"""Multi-digit addition a + b, with the number of digits as the difficulty (and the subtask tag).

Each example first draws a digit count d uniformly from [min_digits, n_digits], then a and b
uniformly among the d-digit numbers (0-9 for d = 1). Held out: the pairs whose stable hash of
the unordered pair {a, b} lies in the lowest `heldout_fraction` of hash space (so a+b and b+a
are on the same side, and `augment.operand_swap` never creates a held-out pair); training draws
reject them. The
evaluation set spreads its examples evenly over digit counts (example j has
d = min_digits + j mod #levels); a level whose tiny pair table holds no held-out pair gets none.

Params (defaults): n_digits=3, min_digits=1, heldout_fraction=0.05, task_seed=0.
Own tokens: digits of a, '+', digits of b, '=' -> digits of a+b, EOS (variable length, so the
terminator belongs to the answer). Text: "a+b=" -> "c\\n". No vector form.
Addition is commutative: `augment.operand_swap` may exchange a and b.
"""

from __future__ import annotations

import numpy as np

from scaling.data.tasks import base

_MAX_DIGITS = 18  # a + b stays below 2**63


class Addition(base.Task):
    """a + b over numbers of min_digits..n_digits digits."""

    name = "addition"
    DEFAULTS = {"n_digits": 3, "min_digits": 1, "heldout_fraction": 0.05, "task_seed": 0}

    def __init__(self, params=None):
        super().__init__(params)
        self.n_digits = int(self.params["n_digits"])
        self.min_digits = int(self.params["min_digits"])
        if not 1 <= self.min_digits <= self.n_digits <= _MAX_DIGITS:
            raise ValueError(f"addition params need 1 <= min_digits <= n_digits <= {_MAX_DIGITS}, "
                             f"got {self.params}")
        if not 0.0 < float(self.params["heldout_fraction"]) < 1.0:
            raise ValueError(f"addition heldout_fraction must be in (0, 1), got {self.params}")
        self.levels = np.arange(self.min_digits, self.n_digits + 1)

    @property
    def num_subtasks(self) -> int:
        return self.n_digits + 1  # tags are digit counts, 1..n_digits

    @staticmethod
    def _range(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.where(d == 1, 0, 10 ** (d - 1).astype(np.int64))
        hi = 10 ** d.astype(np.int64)  # exclusive
        return lo, hi

    def _draw(self, rng: np.random.Generator, n: int, d_n: np.ndarray | None = None
              ) -> base.Examples:
        if d_n is None:
            d_n = rng.choice(self.levels, size=n)
        d_n = np.asarray(d_n, dtype=np.int64)
        lo, hi = self._range(d_n)
        a = rng.integers(lo, hi, size=n, dtype=np.int64)
        b = rng.integers(lo, hi, size=n, dtype=np.int64)
        return {"subtask": d_n.astype(np.int32), "a": a, "b": b}

    def is_heldout(self, ex: base.Examples) -> np.ndarray:
        a, b = ex["a"].astype(np.int64), ex["b"].astype(np.int64)
        key = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)  # a+b and b+a together
        u = base.unit_interval(base.hash_rows(key, salt=0xADD00 + int(self.params["task_seed"])))
        return u < float(self.params["heldout_fraction"])

    def answers(self, ex: base.Examples) -> np.ndarray:
        return ex["a"].astype(np.int64) + ex["b"].astype(np.int64)

    def sample(self, rng: np.random.Generator, n: int) -> base.Examples:
        return self._rejection_sample(self._draw, rng, n, want_heldout=False)

    def eval_examples(self, n: int) -> base.Examples:
        n = n if n > 0 else 64 * len(self.levels)
        rng = np.random.default_rng([int(self.params["task_seed"]), 0xE7A1])
        parts = []
        for i, d in enumerate(self.levels):
            m = len(range(i, n, len(self.levels)))
            if m == 0:
                continue
            lo, hi = self._range(np.array([d]))
            if (hi - lo)[0] ** 2 <= 1_000_000:  # small table: enumerate its held-out pairs
                a, b = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[0], hi[0]), indexing="ij")
                table = {"subtask": np.full(a.size, d, dtype=np.int32), "a": a.ravel(),
                         "b": b.ravel()}
                held = np.flatnonzero(self.is_heldout(table))
                if held.size == 0:
                    continue
                pick = held[rng.choice(held.size, size=m, replace=m > held.size)]
                parts.append(base.take(table, np.sort(pick)))
            else:
                parts.append(self._rejection_sample(
                    lambda r, k, d=d: self._draw(r, k, np.full(k, d)), rng, m, want_heldout=True))
        if not parts:
            raise ValueError(f"addition: no held-out pairs at any digit count; raise "
                             f"heldout_fraction (params {self.params})")
        return base.concat(parts)

    # ------------------------------------------------------------------ renderings
    @property
    def symbols(self) -> list[str]:
        return [str(i) for i in range(10)] + ["+", "="]

    def tokens(self, ex: base.Examples) -> list[tuple[np.ndarray, np.ndarray]]:
        s = base.NUM_SPECIALS
        plus, eq = s + 10, s + 11
        out = []
        for a, b, c in zip(ex["a"], ex["b"], self.answers(ex)):
            da = [s + int(ch) for ch in str(int(a))]
            db = [s + int(ch) for ch in str(int(b))]
            dc = [s + int(ch) for ch in str(int(c))] + [base.EOS_ID]
            out.append((np.asarray(da + [plus] + db + [eq], dtype=np.int32),
                        np.asarray(dc, dtype=np.int32)))
        return out

    def texts(self, ex: base.Examples) -> list[tuple[str, str]]:
        return [(f"{int(a)}+{int(b)}=", f"{int(c)}\n")
                for a, b, c in zip(ex["a"], ex["b"], self.answers(ex))]
