"""Modular arithmetic a ∘ b mod p (Power et al. 2022, "Grokking").

For every operation in `ops` ('+', '-', '*', '/'; '/' is a * b^-1 with b != 0) the table of all
pairs (a, b) is split once, with `task_seed`, into a training fraction `train_fraction` and the
held-out rest. For the commutative ops ('+', '*') the split is over unordered pairs, so a∘b and
b∘a are on the same side: a held-out pair never reaches training, not even mirrored (which keeps
`augment.operand_swap` safe). Training draws pick an operation uniformly, then a training pair uniformly; held-out
pairs never appear in training. The evaluation set is every held-out triple (eval_examples <= 0
or more than there are), else a fixed sample of them. Subtask = index of the operation in `ops`.

Params (defaults): p=97, ops="+-*/", train_fraction=0.5, task_seed=0.
Vector form: one-hot a (p) ++ one-hot b (p) ++ one-hot op (len(ops)) -> class c in [0, p).
Own tokens: [a, op, b, '='] -> [c]. Text: "a+b=" -> "c\\n".
'+' and '*' are commutative: `augment.operand_swap` may exchange a and b there.
"""

from __future__ import annotations

import numpy as np

from scaling.data.tasks import base

OPS = "+-*/"
COMMUTATIVE = "+*"


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % q for q in range(2, int(p ** 0.5) + 1))


class ModularArithmetic(base.Task):
    """a ∘ b mod p with a fixed train/held-out split of the operation tables."""

    name = "modular_arithmetic"
    DEFAULTS = {"p": 97, "ops": "+-*/", "train_fraction": 0.5, "task_seed": 0}

    def __init__(self, params=None):
        super().__init__(params)
        self.p = int(self.params["p"])
        self.ops = str(self.params["ops"])
        if not self.ops or any(o not in OPS for o in self.ops) or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"modular_arithmetic ops={self.ops!r}: must be distinct characters "
                             f"of {OPS!r}")
        if "/" in self.ops and not _is_prime(self.p):
            raise ValueError(f"modular_arithmetic p={self.p}: division needs a prime modulus")
        if self.p < 2:
            raise ValueError(f"modular_arithmetic p={self.p}: must be >= 2")
        frac = float(self.params["train_fraction"])
        if not 0.0 < frac < 1.0:
            raise ValueError(f"modular_arithmetic train_fraction={frac}: must be in (0, 1)")
        rng = np.random.default_rng([int(self.params["task_seed"]), 0x3A7])
        # train_mask[o, a, b]: the pair is in the training table of op o.
        self.train_mask_opp = np.zeros((len(self.ops), self.p, self.p), dtype=bool)
        self.train_pairs: list[np.ndarray] = []
        self.heldout_pairs: list[np.ndarray] = []
        for o, op in enumerate(self.ops):
            a_n, b_n = np.meshgrid(np.arange(self.p), np.arange(self.p), indexing="ij")
            pairs = np.stack([a_n.ravel(), b_n.ravel()], axis=1)
            if op == "/":
                pairs = pairs[pairs[:, 1] != 0]
            if op in COMMUTATIVE:  # split unordered pairs: a∘b and b∘a land on the same side
                units = pairs[pairs[:, 0] <= pairs[:, 1]]
            else:
                units = pairs
            units = units[rng.permutation(len(units))]
            n_train = int(round(frac * len(units)))
            if not 0 < n_train < len(units):
                raise ValueError(f"modular_arithmetic: train_fraction={frac} leaves an empty "
                                 f"train or held-out table for op {op!r} with p={self.p}")
            self.train_mask_opp[o, units[:n_train, 0], units[:n_train, 1]] = True
            if op in COMMUTATIVE:
                self.train_mask_opp[o, units[:n_train, 1], units[:n_train, 0]] = True
            in_train = self.train_mask_opp[o, pairs[:, 0], pairs[:, 1]]
            self.train_pairs.append(pairs[in_train])
            self.heldout_pairs.append(pairs[~in_train])
        self._inverse = np.array([pow(int(b), -1, self.p) if b else 0 for b in range(self.p)])

    @property
    def num_subtasks(self) -> int:
        return len(self.ops)

    def commutative_mask(self, ex: base.Examples) -> np.ndarray:
        """Returns whether each example's op is commutative (bool [n])."""
        comm = np.array([op in COMMUTATIVE for op in self.ops])
        return comm[ex["subtask"]]

    def answers(self, ex: base.Examples) -> np.ndarray:
        a, b, o = ex["a"].astype(np.int64), ex["b"].astype(np.int64), ex["subtask"]
        out = np.zeros_like(a)
        for i, op in enumerate(self.ops):
            m = o == i
            if op == "+":
                out[m] = (a[m] + b[m]) % self.p
            elif op == "-":
                out[m] = (a[m] - b[m]) % self.p
            elif op == "*":
                out[m] = (a[m] * b[m]) % self.p
            else:
                out[m] = (a[m] * self._inverse[b[m]]) % self.p
        return out

    def is_heldout(self, ex: base.Examples) -> np.ndarray:
        return ~self.train_mask_opp[ex["subtask"], ex["a"], ex["b"]]

    def sample(self, rng: np.random.Generator, n: int) -> base.Examples:
        o_n = rng.integers(0, len(self.ops), size=n)
        a_n = np.zeros(n, dtype=np.int32)
        b_n = np.zeros(n, dtype=np.int32)
        for o, pairs in enumerate(self.train_pairs):
            m = np.flatnonzero(o_n == o)
            pick = pairs[rng.integers(0, len(pairs), size=m.size)]
            a_n[m], b_n[m] = pick[:, 0], pick[:, 1]
        return {"subtask": o_n.astype(np.int32), "a": a_n, "b": b_n}

    def eval_examples(self, n: int) -> base.Examples:
        o_n = np.concatenate([np.full(len(h), o, dtype=np.int32)
                              for o, h in enumerate(self.heldout_pairs)])
        ab = np.concatenate(self.heldout_pairs).astype(np.int32)
        if 0 < n < len(ab):
            rng = np.random.default_rng([int(self.params["task_seed"]), 0xE7A1])
            idx = np.sort(rng.choice(len(ab), size=n, replace=False))
            o_n, ab = o_n[idx], ab[idx]
        return {"subtask": o_n, "a": ab[:, 0].copy(), "b": ab[:, 1].copy()}

    # ------------------------------------------------------------------ renderings
    @property
    def symbols(self) -> list[str]:
        return [str(i) for i in range(self.p)] + list(self.ops) + ["="]

    def tokens(self, ex: base.Examples) -> list[tuple[np.ndarray, np.ndarray]]:
        s = base.NUM_SPECIALS
        n = ex["a"].shape[0]
        prompt_n4 = np.stack([s + ex["a"], s + self.p + ex["subtask"], s + ex["b"],
                              np.full(n, s + self.p + len(self.ops))], axis=1).astype(np.int32)
        answer_n1 = (s + self.answers(ex))[:, None].astype(np.int32)
        return list(zip(prompt_n4, answer_n1))

    def texts(self, ex: base.Examples) -> list[tuple[str, str]]:
        c = self.answers(ex)
        return [(f"{int(a)}{self.ops[int(o)]}{int(b)}=", f"{int(y)}\n")
                for a, b, o, y in zip(ex["a"], ex["b"], ex["subtask"], c)]

    @property
    def input_dim(self) -> int:
        return 2 * self.p + len(self.ops)

    @property
    def num_classes(self) -> int:
        return self.p

    def vectors(self, ex: base.Examples) -> tuple[np.ndarray, np.ndarray]:
        n = ex["a"].shape[0]
        x_nd = np.zeros((n, self.input_dim), dtype=np.float32)
        rows = np.arange(n)
        x_nd[rows, ex["a"]] = 1.0
        x_nd[rows, self.p + ex["b"]] = 1.0
        x_nd[rows, 2 * self.p + ex["subtask"]] = 1.0
        return x_nd, self.answers(ex).astype(np.int32)
