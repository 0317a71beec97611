"""Knowledge distillation from a teacher's logits (Hinton et al. 2015): the loss and the teacher check.

    L = (1 − mix)·CE(targets, student) + mix·T²·KL(softmax(teacher/T) ‖ softmax(student/T))

per token, averaged with the batch's token weights (nats/token). T² keeps the gradient scale of
the soft term independent of T; with T = 1 and mix = 1 the student matches the teacher's
next-token distribution. Teacher and student may differ in size and depth but must share the
vocabulary (`check_teacher`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from scaling.compress.spec import CompressionError


def distillation_loss(student_BTV: jax.Array, teacher_BTV: jax.Array, targets_BT: jax.Array,
                      weights_BT: jax.Array, *, temperature: float = 1.0,
                      mix: float = 0.5) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (loss, {"ce", "kd"}), token-weighted means in nats/token (kd already times T²)."""
    if not temperature > 0:
        raise CompressionError(f"distillation temperature must be > 0, got {temperature}")
    if not 0.0 <= mix <= 1.0:
        raise CompressionError(f"distillation mix must lie in [0, 1], got {mix}")
    if student_BTV.shape[-1] != teacher_BTV.shape[-1]:
        raise CompressionError(f"teacher logits have {teacher_BTV.shape[-1]} classes, the student's "
                               f"{student_BTV.shape[-1]}: teacher and student need one vocabulary")
    s = student_BTV.astype(jnp.float32)
    w = weights_BT.astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(w), 1.0)
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(s, targets_BT)
    kd_BT = kd_per_token(s, teacher_BTV, temperature)
    ce, kd = jnp.sum(w * ce_BT) / denom, jnp.sum(w * kd_BT) / denom
    return (1.0 - mix) * ce + mix * kd, {"ce": ce, "kd": kd}


def kd_per_token(student_BTV: jax.Array, teacher_BTV: jax.Array,
                 temperature: float = 1.0) -> jax.Array:
    """Returns T²·KL(softmax(teacher/T) ‖ softmax(student/T)) per position (nats), float32,
    shape of the logits without the class axis; no gradient flows into the teacher."""
    s = student_BTV.astype(jnp.float32)
    t = jax.lax.stop_gradient(teacher_BTV.astype(jnp.float32))
    return optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(s / temperature), jax.nn.log_softmax(t / temperature)) * temperature ** 2


def _vocabulary(config: ml_collections.ConfigDict) -> dict[str, Any]:
    d = config.data
    return {"model.vocab_size": config.model.vocab_size, "data.tokenizer": d.tokenizer,
            "data.tokenizer_path": d.tokenizer_path, "data.tokenizer_vocab_size": d.tokenizer_vocab_size}


def check_teacher(teacher: ml_collections.ConfigDict, student: ml_collections.ConfigDict,
                  teacher_dir: str = "teacher") -> None:
    """Returns None; raises CompressionError naming the fields where the vocabularies differ."""
    if teacher.model.kind != student.model.kind:
        raise CompressionError(f"{teacher_dir}: a {teacher.model.kind} teacher cannot teach a "
                               f"{student.model.kind} student")
    tv, sv = _vocabulary(teacher), _vocabulary(student)
    if teacher.model.kind == "mlp":
        tv = {"model.num_classes": teacher.model.num_classes}
        sv = {"model.num_classes": student.model.num_classes}
    diff = [f"{k}: teacher {tv[k]!r}, student {sv[k]!r}" for k in tv if tv[k] != sv[k]]
    if diff:
        raise CompressionError(f"{teacher_dir}: the teacher's vocabulary differs from the student's "
                               f"({'; '.join(diff)}); distillation needs one vocabulary")
