"""Distillation loss (temperature, mix with the data loss) and the teacher's vocabulary check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.compress import CompressionError
from scaling.compress.distill import check_teacher, distillation_loss, kd_per_token
from tests.helpers import tiny_lm_config

B, T, V = 2, 5, 7


def _logits(seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, V)) * 2.0, jnp.float32)


TARGETS = jnp.asarray(np.random.default_rng(9).integers(0, V, (B, T)), jnp.int32)
WEIGHTS = jnp.ones((B, T)).at[1, 4].set(0.0)


def test_temperature_one_mix_one_is_matching_the_teachers_distribution():
    s, t = _logits(0), _logits(1)
    loss, parts = distillation_loss(s, t, TARGETS, WEIGHTS, temperature=1.0, mix=1.0)
    p_t = jax.nn.softmax(t)
    kl_BT = jnp.sum(p_t * (jax.nn.log_softmax(t) - jax.nn.log_softmax(s)), axis=-1)
    assert float(loss) == pytest.approx(float(jnp.sum(WEIGHTS * kl_BT) / jnp.sum(WEIGHTS)), rel=1e-5)
    # its gradient pulls the student's distribution onto the teacher's: softmax(s) - softmax(t)
    g = jax.grad(lambda x: distillation_loss(x, t, TARGETS, WEIGHTS, temperature=1.0, mix=1.0)[0])(s)
    expected = (jax.nn.softmax(s) - p_t) * WEIGHTS[..., None] / jnp.sum(WEIGHTS)
    np.testing.assert_allclose(g, expected, atol=1e-6)
    # zero exactly when the student's distribution is the teacher's (logits up to a shift)
    same, _ = distillation_loss(t + 3.0, t, TARGETS, WEIGHTS, temperature=1.0, mix=1.0)
    assert abs(float(same)) < 1e-6 and float(loss) > 0.01


def test_mix_zero_is_the_data_loss_and_temperature_scales_by_t_squared():
    s, t = _logits(2), _logits(3)
    loss0, parts = distillation_loss(s, t, TARGETS, WEIGHTS, temperature=2.0, mix=0.0)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(s), TARGETS[..., None], -1)[..., 0]
    assert float(loss0) == pytest.approx(float(jnp.sum(WEIGHTS * ce) / jnp.sum(WEIGHTS)), rel=1e-5)
    _, p1 = distillation_loss(s / 4.0, t / 4.0, TARGETS, WEIGHTS, temperature=1.0, mix=1.0)
    _, p4 = distillation_loss(s, t, TARGETS, WEIGHTS, temperature=4.0, mix=1.0)
    assert float(p4["kd"]) == pytest.approx(16.0 * float(p1["kd"]), rel=1e-5)
    half, p = distillation_loss(s, t, TARGETS, WEIGHTS, temperature=2.0, mix=0.25)
    assert float(half) == pytest.approx(0.75 * float(p["ce"]) + 0.25 * float(p["kd"]), rel=1e-6)


def test_a_teacher_with_another_vocabulary_is_a_clear_error():
    student = tiny_lm_config()
    teacher = tiny_lm_config(**{"model.d_model": 64, "model.n_layers": 4})
    check_teacher(teacher, student)  # other size and depth: fine
    teacher = tiny_lm_config(**{"model.vocab_size": 128})
    with pytest.raises(CompressionError, match="model.vocab_size: teacher 128, student 64"):
        check_teacher(teacher, student, "runs/teacher")
    with pytest.raises(CompressionError, match="need one vocabulary"):
        distillation_loss(_logits(0), _logits(1)[..., :5], TARGETS, WEIGHTS)
    with pytest.raises(CompressionError, match="mix must lie in"):
        distillation_loss(_logits(0), _logits(1), TARGETS, WEIGHTS, mix=1.5)


def test_kd_per_token_is_t_squared_kl_per_position_and_leaves_the_teacher_alone():
    s, t = _logits(4), _logits(5)
    kd_BT = kd_per_token(s, t, 3.0)
    assert kd_BT.shape == (B, T)
    p_t = jax.nn.softmax(t / 3.0)
    kl_BT = jnp.sum(p_t * (jax.nn.log_softmax(t / 3.0) - jax.nn.log_softmax(s / 3.0)), axis=-1)
    np.testing.assert_allclose(kd_BT, 9.0 * kl_BT, rtol=1e-5)
    assert float(jnp.min(kd_BT)) >= 0.0
    g_teacher = jax.grad(lambda x: jnp.sum(kd_per_token(s, x, 3.0)))(t)
    assert float(jnp.max(jnp.abs(g_teacher))) == 0.0  # the teacher is frozen
