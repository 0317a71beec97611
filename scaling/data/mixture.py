"""Task rows of a 'mixture' batch: whole task examples rendered as text and packed into rows.

The task rows of one global batch are packed together from one draw of examples (seeded by the
batch), not one draw per row: the draw, its held-out rejection and its rendering then run once per
batch over a few dozen examples instead of once per row over a handful. At the quickstart's
shapes (64-token rows, 30 % task rows) this made the task rows ~4x cheaper to build; they were the
larger part of the host's work per step for the smallest models.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from scaling.data.tasks import base as task_base
from scaling.data.tokenizers import Tokenizer

# examples drawn per task row and round; an associative-recall example of 2 pairs is ~13 bytes,
# so a 64-byte row holds ~5 and one round nearly always fills every row
EXAMPLES_PER_ROW = 8

Augment = Callable[[task_base.Examples, np.ndarray], task_base.Examples]


def check_fits(length: int, seq_len: int, name: str) -> None:
    """Raises ValueError when one example of `length` tokens cannot fit a row of seq_len + 1."""
    if length > seq_len + 1:
        raise ValueError(f"config.data.seq_len={seq_len}: a {name!r} example needs {length} "
                         f"tokens (> seq_len + 1); raise data.seq_len or shrink the task")


def pack_task_rows(task: task_base.Task, tok: Tokenizer, rng: np.random.Generator,
                   num_rows: int, seq_len: int, augment: Augment | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (rows int32 [k, T+1], answer mask f32 [k, T+1], content mask f32 [k, T+1]).

    k = num_rows rows of T + 1 = seq_len + 1 tokens, filled in order with consecutive training
    examples drawn from `rng` (rounds of EXAMPLES_PER_ROW · k examples until every row is full);
    a row takes whole examples while they fit, and the first that does not opens the next row.
    Unused positions hold the tokenizer's pad id. `augment(examples, index)` (optional) rewrites a
    round's examples; `index` numbers the batch's examples 0, 1, ... across rounds.
    """
    t1 = seq_len + 1
    pieces: list[np.ndarray] = []  # prompt, answer, prompt, ... of the placed examples, in order
    used = [0] * num_rows
    row, drawn = 0, 0
    while row < num_rows:
        n = EXAMPLES_PER_ROW * (num_rows - row)
        ex = task.sample(rng, n)
        if augment is not None:
            ex = augment(ex, drawn + np.arange(n))
        drawn += n
        ids = tok.encode_batch([text for pair in task.texts(ex) for text in pair])
        for prompt, ans in zip(ids[0::2], ids[1::2]):
            length = len(prompt) + len(ans)
            check_fits(length, seq_len, task.name)
            if used[row] + length > t1:
                row += 1
                if row == num_rows:
                    break
            pieces += (prompt, ans)
            used[row] += length
    # Rows are filled from position 0 with the examples in order, so one masked assignment (row-
    # major) places every token: 3x faster than a slice assignment per example and field.
    content_bool = np.arange(t1)[None, :] < np.asarray(used)[:, None]
    rows = np.full((num_rows, t1), tok.pad_id, dtype=np.int32)
    answer = np.zeros((num_rows, t1), dtype=np.float32)
    if pieces:
        rows[content_bool] = np.concatenate(pieces)
        is_answer = np.zeros(len(pieces), np.float32)
        is_answer[1::2] = 1.0
        answer[content_bool] = np.repeat(is_answer, [len(piece) for piece in pieces])
    return rows, answer, content_bool.astype(np.float32)
