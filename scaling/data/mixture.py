"""Task rows of a 'mixture' batch: whole task examples rendered as text and packed into rows.

The task rows of one global batch are packed together from one draw of examples (seeded by the
batch), not one draw per row: the draw, its held-out rejection and its rendering then run once per
batch over a few dozen examples instead of once per row over a handful. At the quickstart's
shapes (64-token rows, 30 % task rows) this made the task rows ~4x cheaper to build; they were the
larger part of the host's work per step for the smallest models.
"""

from __future__ import annotations

from typing import Callable, Iterator

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
    rows = np.full((num_rows, t1), tok.pad_id, dtype=np.int32)
    answer = np.zeros((num_rows, t1), dtype=np.float32)
    used = np.zeros(num_rows, dtype=np.int64)
    row, drawn = 0, 0
    while row < num_rows:
        n = EXAMPLES_PER_ROW * (num_rows - row)
        ex = task.sample(rng, n)
        if augment is not None:
            ex = augment(ex, drawn + np.arange(n))
        drawn += n
        for prompt, ans in _texts(task, ex, lambda: row == num_rows):
            pr, an = tok.encode(prompt), tok.encode(ans)
            length = len(pr) + len(an)
            check_fits(length, seq_len, task.name)
            if used[row] + length > t1:
                row += 1
                if row == num_rows:
                    break
            u = used[row]
            rows[row, u:u + len(pr)] = pr
            rows[row, u + len(pr):u + length] = an
            answer[row, u + len(pr):u + length] = 1.0
            used[row] = u + length
    content = (np.arange(t1)[None, :] < used[:, None]).astype(np.float32)
    return rows, answer, content


def _texts(task: task_base.Task, ex: task_base.Examples, done: Callable[[], bool]
           ) -> Iterator[tuple[str, str]]:
    """Yields (prompt, answer) of `ex` in order, rendered a row's worth at a time until done()."""
    n = task_base.num_examples(ex)
    for start in range(0, n, EXAMPLES_PER_ROW):
        if done():
            return
        yield from task.texts(task_base.take(ex, np.arange(start, min(n, start + EXAMPLES_PER_ROW))))
