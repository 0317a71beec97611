"""Builders of the smallest sweeps, for tests and quick local checks (seconds per run on a CPU)."""

from __future__ import annotations

import os

import ml_collections

from scaling.sweeps.spec import default_sweep

TINY_SEQ_LEN = 32
TINY_BATCH = 4
TINY_SIZES = (3.4e3, 6.7e3)  # reachable by the family below: 1x16 and 2x16 (head_dim 8)


def tiny_sweep(tfds_data_dir: str | os.PathLike = "", *, name: str = "tiny",
               sizes: tuple[float, ...] = TINY_SIZES, steps: int = 20,
               checkpoint_every: int = 10, log_every: int = 5) -> ml_collections.ConfigDict:
    """Returns a sweep of byte-level LMs with ~3k-7k non-embedding params on stdlib_corpus/tiny.

    Each run trains `steps` steps of 4 x 32 tokens (the data axis is one token budget), one
    CPU device per process, checkpoints every `checkpoint_every` steps, no evaluation.
    """
    s = default_sweep()
    s.name = name
    c = s.base
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(tfds_data_dir)
    c.data.seq_len = TINY_SEQ_LEN
    c.model.max_seq_len = TINY_SEQ_LEN
    c.train.batch_size = TINY_BATCH
    c.train.log_every = log_every
    c.train.progress = False
    c.train.eval_at_checkpoints = False
    c.checkpoint.log_spaced = False
    c.checkpoint.every = checkpoint_every
    c.optim.warmup_steps = 2
    s.family.head_dim = 8
    s.family.aspect = 8.0
    s.sizes = tuple(sizes)
    s.tokens = (steps * TINY_SEQ_LEN * TINY_BATCH,)
    s.min_steps = 1
    s.resources.devices_per_process = 1
    return s
