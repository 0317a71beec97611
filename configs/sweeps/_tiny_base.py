"""The base run shared by the tiny sweeps: a byte-level Transformer LM on the stdlib corpus."""

import ml_collections

from scaling.config import default_config


def tiny_lm_base() -> ml_collections.ConfigDict:
    """Returns the base run config: 64-token context, batch 16, cosine LR, final eval only."""
    c = default_config()
    c.data.seq_len = 64
    c.model.max_seq_len = 64
    c.train.batch_size = 16
    c.train.log_every = 10
    c.train.progress = False  # the sweep shows one progress bar over runs
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 10
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.1
    c.checkpoint.log_spaced = False  # checkpoints every 100 steps (resume points) and the final
    c.checkpoint.every = 100
    c.checkpoint.max_to_keep = 2
    c.train.eval_at_checkpoints = True
    c.data.eval_tokens = 8192
    return c
