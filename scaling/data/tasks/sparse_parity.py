"""Multitask sparse parity (Michaud et al. 2023, "The Quantization Model of Neural Scaling").

There are `n_tasks` subtasks; subtask i is drawn with probability proportional to
(i + 1) ** -(alpha + 1). Each subtask owns a fixed random set of `k` of the `n_bits` data bits
(chosen with `task_seed`); the label is the parity of those bits. Held out: the inputs whose
stable hash of (subtask, bits) falls in the lowest `heldout_fraction` of hash space; training
draws reject them. The evaluation set spreads its examples evenly over subtasks (example j has
subtask j mod n_tasks) so that per-subtask accuracy can be read off.

Params (defaults): n_tasks=500, n_bits=100, k=3, alpha=0.4, heldout_fraction=0.01, task_seed=0.
Vector form: one-hot subtask (n_tasks) ++ bits (n_bits) -> class in {0, 1}.
Own tokens: [T<i>, b_1 .. b_n, '='] -> answer ['0' | '1'].
Text: "T<i>:<bits>=" -> "<parity>\\n".
"""

from __future__ import annotations

import numpy as np

from scaling.data.tasks import base


class SparseParity(base.Task):
    """Multitask sparse parity with power-law subtask frequencies."""

    name = "sparse_parity"
    DEFAULTS = {"n_tasks": 500, "n_bits": 100, "k": 3, "alpha": 0.4, "heldout_fraction": 0.01,
                "task_seed": 0}

    def __init__(self, params=None):
        super().__init__(params)
        p = self.params
        self.n_tasks, self.n_bits, self.k = int(p["n_tasks"]), int(p["n_bits"]), int(p["k"])
        if not (self.n_tasks >= 1 and 1 <= self.k <= self.n_bits):
            raise ValueError(f"sparse_parity params need n_tasks >= 1 and 1 <= k <= n_bits, "
                             f"got {p}")
        if not 0.0 < float(p["heldout_fraction"]) < 1.0:
            raise ValueError(f"sparse_parity heldout_fraction must be in (0, 1), got {p}")
        rng = np.random.default_rng([int(p["task_seed"]), 0x5A17])
        self.relevant_tk = np.stack([np.sort(rng.choice(self.n_bits, self.k, replace=False))
                                     for _ in range(self.n_tasks)]).astype(np.int64)
        self.frequencies_t = self.subtask_frequencies()

    def subtask_frequencies(self) -> np.ndarray:
        """Returns the probability of each subtask, proportional to (i+1)^-(alpha+1) (float64 [n_tasks])."""
        w = np.arange(1, self.n_tasks + 1, dtype=np.float64) ** -(float(self.params["alpha"]) + 1)
        return w / w.sum()

    @property
    def num_subtasks(self) -> int:
        return self.n_tasks

    def _draw(self, rng: np.random.Generator, n: int, subtask_n: np.ndarray | None = None
              ) -> base.Examples:
        if subtask_n is None:
            subtask_n = rng.choice(self.n_tasks, size=n, p=self.frequencies_t)
        bits_nb = rng.integers(0, 2, size=(n, self.n_bits), dtype=np.int8)
        return {"subtask": np.asarray(subtask_n, dtype=np.int32), "bits": bits_nb}

    def is_heldout(self, ex: base.Examples) -> np.ndarray:
        bits_nb = np.asarray(ex["bits"], dtype=np.uint8)
        pad = (-self.n_bits) % 64
        packed = np.packbits(np.pad(bits_nb, ((0, 0), (0, pad))), axis=1)  # [n, words*8] bytes
        words_nw = np.ascontiguousarray(packed).view(">u8").astype(np.uint64).view(np.int64)
        key = np.concatenate([ex["subtask"][:, None].astype(np.int64), words_nw], axis=1)
        u = base.unit_interval(base.hash_rows(key, salt=0x5A1700 + int(self.params["task_seed"])))
        return u < float(self.params["heldout_fraction"])

    def answers(self, ex: base.Examples) -> np.ndarray:
        rel_nk = self.relevant_tk[ex["subtask"]]
        picked = np.take_along_axis(ex["bits"].astype(np.int64), rel_nk, axis=1)
        return picked.sum(axis=1) % 2

    def sample(self, rng: np.random.Generator, n: int) -> base.Examples:
        return self._rejection_sample(self._draw, rng, n, want_heldout=False)

    def eval_examples(self, n: int) -> base.Examples:
        n = n if n > 0 else self.n_tasks
        rng = np.random.default_rng([int(self.params["task_seed"]), 0xE7A1])
        subtask_n = np.arange(n, dtype=np.int32) % self.n_tasks
        ex = self._draw(rng, n, subtask_n)
        todo = ~self.is_heldout(ex)
        for _ in range(1_000_000):
            if not todo.any():
                break
            idx = np.flatnonzero(todo)
            ex["bits"][idx] = rng.integers(0, 2, size=(idx.size, self.n_bits), dtype=np.int8)
            todo[idx] = ~self.is_heldout(base.take(ex, idx))
        else:
            raise ValueError(f"sparse_parity: no held-out inputs found for some subtask; raise "
                             f"heldout_fraction or n_bits (params {self.params})")
        return ex

    # ------------------------------------------------------------------ renderings
    @property
    def symbols(self) -> list[str]:
        return ["0", "1", "="] + [f"T{i}" for i in range(self.n_tasks)]

    def tokens(self, ex: base.Examples) -> list[tuple[np.ndarray, np.ndarray]]:
        s = base.NUM_SPECIALS
        prompt_nl = np.concatenate([
            (s + 3 + ex["subtask"].astype(np.int32))[:, None],
            s + ex["bits"].astype(np.int32),
            np.full((ex["bits"].shape[0], 1), s + 2, dtype=np.int32)], axis=1)
        answer_n1 = (s + self.answers(ex).astype(np.int32))[:, None]
        return list(zip(prompt_nl, answer_n1))

    def texts(self, ex: base.Examples) -> list[tuple[str, str]]:
        ys = self.answers(ex)
        out = []
        for t, bits, y in zip(ex["subtask"], ex["bits"], ys):
            out.append((f"T{int(t)}:" + "".join("1" if b else "0" for b in bits) + "=", f"{y}\n"))
        return out

    @property
    def input_dim(self) -> int:
        return self.n_tasks + self.n_bits

    @property
    def num_classes(self) -> int:
        return 2

    def vectors(self, ex: base.Examples) -> tuple[np.ndarray, np.ndarray]:
        n = ex["bits"].shape[0]
        x_nd = np.zeros((n, self.input_dim), dtype=np.float32)
        x_nd[np.arange(n), ex["subtask"]] = 1.0
        x_nd[:, self.n_tasks:] = ex["bits"]
        return x_nd, self.answers(ex).astype(np.int32)
