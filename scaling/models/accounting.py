"""Analytic parameter counts and training FLOPs, computed from `config.model` alone.

Parameter convention (Kaplan et al. 2020): the scaling-law size ``N`` is the NON-EMBEDDING count.

* ``embedding``: the token embedding [V, D], the learned position embedding [max_seq_len, D]
  (positions == "learned"), and the unembedding [D, V] when it is untied (tie_embeddings=False).
* ``non_embedding``: everything else: attention and MLP matrices and every norm scale/bias.
* ``total`` = embedding + non_embedding = the number of scalars in the parameter tree.

For the MLP family nothing is an embedding: ``embedding == 0`` and ``non_embedding == total``
(kernels and biases).

FLOPs convention: one multiply-add is 2 FLOPs; training = forward + backward = 3x forward.

* Transformer, per token: ``6 * N_matmul + attention`` where ``N_matmul`` counts the parameters
  that take part in a matmul once per token: all attention and MLP matrices plus the D x V logit
  matmul (counted whether or not the unembedding is tied; the embedding lookup is a gather and
  costs nothing). Norms, softmax, activations and the loss are not counted.
  ``attention = 3 * n_layers * 4 * seq_len * n_heads * head_dim``: QK^T and AV each cost
  ``2 * seq_len * n_heads * head_dim`` forward per token over the full T x T score matrix (what a
  dense implementation such as this one actually computes; non-causal count). With
  ``causal=True`` only the lower triangle is counted, i.e. half: ``6 * n_layers * seq_len * d_attn``,
  which is Kaplan's ``2 n_layer n_ctx d_attn`` forward term.
* MLP family, per example: ``6 * N_matmul`` (all kernels). Autodiff does not form the gradient
  w.r.t. the input data, so the executed count is lower by ``2 * input_dim * mlp_width``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from scaling import config as config_lib


def _require_transformer(m: ml_collections.ConfigDict) -> None:
    if m.kind != "transformer":
        raise ValueError(f"model.kind={m.kind!r}: expected 'transformer'")
    if m.vocab_size <= 0:
        raise ValueError(f"model.vocab_size={m.vocab_size}: must be resolved (> 0)")


def _require_mlp(m: ml_collections.ConfigDict) -> None:
    if m.kind != "mlp":
        raise ValueError(f"model.kind={m.kind!r}: expected 'mlp'")
    if m.input_dim <= 0 or m.num_classes <= 0:
        raise ValueError(f"model.input_dim={m.input_dim}, model.num_classes={m.num_classes}: "
                         "must be resolved (> 0)")


def _layer_matmul_params(m: ml_collections.ConfigDict) -> int:
    d, h, g, k, f = (m.d_model, m.n_heads, config_lib.n_kv_heads(m), config_lib.head_dim(m),
                     config_lib.d_ff(m))
    attn = d * h * k + 2 * d * g * k + h * k * d
    mlp = (3 if m.mlp == "swiglu" else 2) * d * f
    return attn + mlp


def _norm_params(m: ml_collections.ConfigDict) -> int:
    return m.d_model * (2 if m.norm == "layernorm" else 1)


def _mlp_layer_shapes(m: ml_collections.ConfigDict) -> list[tuple[int, int]]:
    dims = [m.input_dim] + [m.mlp_width] * m.mlp_depth + [m.num_classes]
    return list(zip(dims[:-1], dims[1:]))


def matmul_params(model_cfg: ml_collections.ConfigDict) -> int:
    """Returns N_matmul: parameters used in one matmul per token/example (incl. the logit matmul)."""
    m = model_cfg
    if m.kind == "mlp":
        _require_mlp(m)
        return sum(i * o for i, o in _mlp_layer_shapes(m))
    _require_transformer(m)
    return m.n_layers * _layer_matmul_params(m) + m.d_model * m.vocab_size


def param_counts(model_cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """Returns {'total', 'non_embedding', 'embedding'}: parameter counts (scalars), Kaplan split."""
    m = model_cfg
    if m.kind == "mlp":
        _require_mlp(m)
        total = sum(i * o + o for i, o in _mlp_layer_shapes(m))
        return {"total": total, "non_embedding": total, "embedding": 0}
    _require_transformer(m)
    d, v = m.d_model, m.vocab_size
    embedding = v * d
    if m.positions == "learned":
        embedding += m.max_seq_len * d
    if not m.tie_embeddings:
        embedding += d * v
    per_layer = _layer_matmul_params(m) + 2 * _norm_params(m)
    non_embedding = m.n_layers * per_layer + _norm_params(m)
    return {"total": embedding + non_embedding, "non_embedding": non_embedding,
            "embedding": embedding}


def attention_flops_per_token(model_cfg: ml_collections.ConfigDict, seq_len: int, *,
                              causal: bool = False) -> float:
    """Returns training FLOPs per token of the QK^T and AV products (FLOP/token)."""
    m = model_cfg
    _require_transformer(m)
    d_attn = m.n_heads * config_lib.head_dim(m)
    full = 3.0 * m.n_layers * 4.0 * seq_len * d_attn
    return full / 2.0 if causal else full


def flops_per_token(model_cfg: ml_collections.ConfigDict, seq_len: int, *,
                    causal: bool = False) -> float:
    """Returns Transformer training FLOPs per token (forward + backward): 6*N_matmul + attention."""
    return 6.0 * matmul_params(model_cfg) + attention_flops_per_token(model_cfg, seq_len,
                                                                      causal=causal)


def flops_per_example(model_cfg: ml_collections.ConfigDict) -> float:
    """Returns MLP-family training FLOPs per example (forward + backward): 6 * N_matmul."""
    _require_mlp(model_cfg)
    return 6.0 * matmul_params(model_cfg)


def run_numbers(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Returns a resolved run config's n_params (total), n_params_nonembed, flops_per_token
    (training FLOPs per token; per example for the MLP family) and tokens_per_step (examples)."""
    m = config.model
    counts = param_counts(m)
    if m.kind == "mlp":
        per_token = flops_per_example(m)
        tokens_per_step = config.train.batch_size
    else:
        per_token = flops_per_token(m, config.data.seq_len)
        tokens_per_step = config.train.batch_size * config.data.seq_len
    return {"n_params": int(counts["total"]), "n_params_nonembed": int(counts["non_embedding"]),
            "flops_per_token": float(per_token), "tokens_per_step": int(tokens_per_step)}


def describe(model_cfg: ml_collections.ConfigDict, seq_len: int = 0) -> dict[str, Any]:
    """Returns run-table numbers: N (non-embedding params), N_total, N_embedding, FLOPs per unit.

    Transformer: 'flops_per_token' (non-causal attention count) and 'flops_per_token_causal',
    both training FLOP/token at `seq_len`. MLP family: 'flops_per_example' (training FLOP/example).
    """
    counts = param_counts(model_cfg)
    out: dict[str, Any] = {"N": counts["non_embedding"], "N_total": counts["total"],
                           "N_embedding": counts["embedding"]}
    if model_cfg.kind == "mlp":
        out["flops_per_example"] = flops_per_example(model_cfg)
    else:
        if seq_len <= 0:
            raise ValueError(f"seq_len={seq_len}: must be positive for a Transformer")
        out["flops_per_token"] = flops_per_token(model_cfg, seq_len)
        out["flops_per_token_causal"] = flops_per_token(model_cfg, seq_len, causal=True)
    return out
