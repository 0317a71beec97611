"""A tiny byte-level Transformer LM on the offline Python-stdlib corpus (trains in ~1 min on CPU)."""

from scaling.config import default_config


def get_config():
    """Returns the config: 2 layers, d_model 64, 128-token context, 300 steps of 16 sequences."""
    c = default_config()
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.data.seq_len = 128
    c.train.batch_size = 16
    c.train.num_steps = 300
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 30
    c.optim.weight_decay = 0.1
    c.train.eval_at_checkpoints = True
    return c
