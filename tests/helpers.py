"""Small shared builders for tests (tiny configs, synthetic batches, one-step runners)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from scaling import config as config_lib
from scaling.train import setup as setup_lib


def tiny_lm_config(**overrides: Any) -> ml_collections.ConfigDict:
    """Returns a resolved tiny Transformer config (vocab 64, d_model 32, 2 layers, GQA 4/2)."""
    c = config_lib.default_config()
    c.model.vocab_size = 64
    c.model.d_model = 32
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.model.n_kv_heads = 2
    c.model.d_ff = 64
    c.model.max_seq_len = 16
    c.data.seq_len = 16
    c.train.batch_size = 8
    c.train.num_steps = 10
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.1
    c.optim.lr = 1e-2
    for dotted, value in overrides.items():
        node = c
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    """Returns a random token batch (inputs, targets, weights) of the config's shape."""
    rng = np.random.default_rng(seed)
    shape = (config.train.batch_size, config.data.seq_len)
    v = config.model.vocab_size
    return {"inputs": rng.integers(0, v, shape).astype(np.int32),
            "targets": rng.integers(0, v, shape).astype(np.int32),
            "weights": np.ones(shape, np.float32)}


def one_step(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray],
             devices: list | None = None) -> tuple[Any, dict[str, float]]:
    """Returns (state after one jitted sharded train step, metrics) on the config's mesh."""
    devices = devices or jax.devices()
    config_lib.validate(config, len(devices))
    trainer = setup_lib.build(config, devices)
    step = trainer.jit_train_step(batch)
    state, metrics = step(trainer.init_state(), batch)
    return state, {k: float(v) for k, v in jax.device_get(metrics).items()}


def take(it: Any, n: int) -> list[dict]:
    """Returns the next `n` batches of a data iterator."""
    return [next(it) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    """Returns None; fails unless both lists hold the same batches (same keys, equal arrays)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
