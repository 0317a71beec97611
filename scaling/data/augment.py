"""Data augmentations: pure, jit-able JAX functions of a PRNG key that keep the targets correct.

Each primitive acts on ONE row (text) or ONE example (task) and takes its own key, so batches are
augmented with `jax.vmap` over per-row keys. The pipeline derives row keys from (seed, global row
index), which makes augmentation independent of the batch size and of the process layout, and
reproducible on resume. All are off by default (config.data.augment.*):

  * `token_substitution` (text): each eligible input token is replaced with probability `rate` by
    a uniform random id; targets stay the clean next tokens.
  * `span_mask` (text): with probability `rate` a span of `span_length` eligible input tokens is
    replaced by `mask_id`; targets unchanged.
  * `random_crop` (text): the row of `length` tokens is read at a random offset in
    [0, max_offset] of a longer window of the packed stream; inputs and targets both come from
    the cropped row, so targets[t] == inputs[t + 1] still holds.
  * `operand_swap` (commutative arithmetic): a ∘ b -> b ∘ a with probability `rate` where the
    op is commutative; the answer is unchanged.
  * `pair_shuffle` (associative recall): permutes the key -> value pairs and moves the query
    index with its pair; the queried key and the answer are unchanged.

Only eligible positions change: the pipeline marks text tokens eligible and task tokens not,
because substituting a task's prompt would change its answer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def token_substitution(key: jax.Array, inputs_t: jax.Array, eligible_t: jax.Array, rate: float,
                       vocab_size: int) -> jax.Array:
    """Returns inputs (int32 [T]) with each eligible token replaced w.p. `rate` by a random id."""
    k_flip, k_tok = jax.random.split(key)
    flip_t = jax.random.bernoulli(k_flip, rate, inputs_t.shape) & eligible_t.astype(bool)
    random_t = jax.random.randint(k_tok, inputs_t.shape, 0, vocab_size, dtype=inputs_t.dtype)
    return jnp.where(flip_t, random_t, inputs_t)


def span_mask(key: jax.Array, inputs_t: jax.Array, eligible_t: jax.Array, rate: float,
              span_length: int, mask_id: int) -> jax.Array:
    """Returns inputs (int32 [T]) where, w.p. `rate`, one span of eligible tokens is `mask_id`."""
    k_on, k_start = jax.random.split(key)
    length = inputs_t.shape[0]
    on = jax.random.bernoulli(k_on, rate)
    start = jax.random.randint(k_start, (), 0, jnp.maximum(1, length - span_length + 1))
    pos_t = jnp.arange(length)
    in_span_t = (pos_t >= start) & (pos_t < start + span_length) & on & eligible_t.astype(bool)
    return jnp.where(in_span_t, jnp.asarray(mask_id, inputs_t.dtype), inputs_t)


def random_crop(key: jax.Array, window_w: jax.Array, max_offset: jax.Array, length: int
                ) -> jax.Array:
    """Returns `length` consecutive tokens of `window_w` from a random offset in [0, max_offset]."""
    limit = jnp.minimum(max_offset, window_w.shape[0] - length)
    offset = jax.random.randint(key, (), 0, jnp.maximum(limit, 0) + 1)
    return jax.lax.dynamic_slice_in_dim(window_w, offset, length)


def operand_swap(key: jax.Array, a: jax.Array, b: jax.Array, commutative: jax.Array,
                 rate: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """Returns (a, b) exchanged w.p. `rate` when `commutative` (the answer is unchanged)."""
    swap = jax.random.bernoulli(key, rate) & commutative.astype(bool)
    return jnp.where(swap, b, a), jnp.where(swap, a, b)


def pair_shuffle(key: jax.Array, keys_p: jax.Array, values_p: jax.Array, query: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (keys [P], values [P], query index) with the pairs permuted and the query moved along."""
    perm_p = jax.random.permutation(key, keys_p.shape[0])
    new_query = jnp.argmax(perm_p == query).astype(query.dtype)
    return keys_p[perm_p], values_p[perm_p], new_query


# ------------------------------------------------------------------------------- batch helpers


def row_keys(seed: int, rows_b: np.ndarray, salt: int) -> jax.Array:
    """Returns one PRNG key per global row index (key array [B]), derived from (seed, salt, row)."""
    rows_b = np.asarray(rows_b, dtype=np.int64)
    hi_b = (rows_b >> 32).astype(np.uint32)
    lo_b = (rows_b & 0xFFFFFFFF).astype(np.uint32)
    return _row_keys(jnp.uint32(seed & 0xFFFFFFFF), jnp.uint32(salt & 0xFFFFFFFF), hi_b, lo_b)


@jax.jit
def _row_keys(seed: jax.Array, salt: jax.Array, hi_b: jax.Array, lo_b: jax.Array) -> jax.Array:
    base = jax.random.fold_in(jax.random.key(seed), salt)
    return jax.vmap(lambda h, lo: jax.random.fold_in(jax.random.fold_in(base, h), lo))(hi_b, lo_b)


@functools.partial(jax.jit, static_argnames=("vocab_size", "span_length", "mask_id",
                                             "substitution", "span_rate"))
def augment_text_inputs(keys_b: jax.Array, inputs_bt: jax.Array, eligible_bt: jax.Array, *,
                        substitution: float, span_rate: float, span_length: int, mask_id: int,
                        vocab_size: int) -> jax.Array:
    """Returns inputs (int32 [B, T]) after token substitution and span masking of eligible tokens."""
    def one(key, inputs_t, eligible_t):
        k1, k2 = jax.random.split(key)
        if substitution > 0:
            inputs_t = token_substitution(k1, inputs_t, eligible_t, substitution, vocab_size)
        if span_rate > 0:
            inputs_t = span_mask(k2, inputs_t, eligible_t, span_rate, span_length, mask_id)
        return inputs_t
    return jax.vmap(one)(keys_b, inputs_bt, eligible_bt)


@functools.partial(jax.jit, static_argnames=("length",))
def crop_rows(keys_b: jax.Array, windows_bw: jax.Array, max_offset_b: jax.Array, *, length: int
              ) -> jax.Array:
    """Returns rows (int32 [B, length]) cropped at random offsets from the windows."""
    return jax.vmap(lambda k, w, m: random_crop(k, w, m, length))(keys_b, windows_bw, max_offset_b)


@jax.jit
def swap_operands(keys_n: jax.Array, a_n: jax.Array, b_n: jax.Array, commutative_n: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """Returns (a, b) [n] with commutative examples' operands exchanged w.p. 1/2."""
    return jax.vmap(operand_swap)(keys_n, a_n, b_n, commutative_n)


@jax.jit
def swap_decisions(keys_n: jax.Array, commutative_n: jax.Array) -> jax.Array:
    """Returns which examples `swap_operands` would swap (bool [n]); for operands beyond int32."""
    idx_n = jnp.arange(keys_n.shape[0], dtype=jnp.int32)
    a_n, _ = swap_operands(keys_n, idx_n, idx_n + keys_n.shape[0], commutative_n)
    return a_n != idx_n


@jax.jit
def shuffle_pairs(keys_n: jax.Array, keys_np: jax.Array, values_np: jax.Array, query_n: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (keys [n, P], values [n, P], query [n]) with each example's pairs permuted."""
    return jax.vmap(pair_shuffle)(keys_n, keys_np, values_np, query_n)


def cpu_device() -> jax.Device:
    """Returns the first CPU device (augmentation runs on the host, beside the input pipeline)."""
    return jax.devices("cpu")[0]
