"""Decoder-only Transformer language model (pre-norm, causal, optional GQA / RoPE / SwiGLU / muP).

Reads `config.model`; `vocab_size` must already be resolved (> 0). Shapes in names use
B batch, T (and S) sequence, D d_model, H query heads, G key/value heads, R = H // G query heads
per key/value head, K head_dim, F d_ff, V vocabulary, L layers.

Parameter tree (scan_layers=True; with scan_layers=False the stacked ``layers`` subtree becomes
``layers_0 .. layers_{L-1}`` with the leading L axis dropped)::

  embedding           [V, D]        (vocab, embed)
  pos_embedding       [max_len, D]  (None, embed)            positions == "learned"
  layers/attn_norm/scale [L, D]     (layers, norm)           (+ bias for layernorm)
  layers/attn/q       [L, D, H, K]  (layers, embed, heads, head_dim)
  layers/attn/k, v    [L, D, G, K]  (layers, embed, kv_heads, head_dim)
  layers/attn/o       [L, H, K, D]  (layers, heads, head_dim, embed)
  layers/mlp_norm/scale [L, D]      (layers, norm)
  layers/mlp/wi_gate, wi_up [L, D, F] (layers, embed, mlp)   swiglu  (gelu: wi)
  layers/mlp/wo       [L, F, D]     (layers, mlp, embed)
  final_norm/scale    [D]           (norm,)
  unembed             [D, V]        (embed, vocab)           tie_embeddings == False

There are no biases in linear layers. Init and muP rules: see `scaling.models.mup`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from scaling import config as config_lib
from scaling.models import mup
from scaling.models.common import constrain, dtype_of, param, token_einsum

REMAT_POLICIES: dict[str, Any] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

_ACT_BTD = ("act_batch", "act_length", "act_embed")


class Norm(nn.Module):
    """RMSNorm or LayerNorm over the last axis (statistics in float32)."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        """Returns the normalized activations, same shape and compute dtype."""
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        d = x_BTD.shape[-1]
        x = x_BTD.astype(jnp.float32)
        if cfg.norm == "layernorm":
            x = x - jnp.mean(x, axis=-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + cfg.norm_eps)
        scale_D = param(self, "scale", nn.initializers.ones, (d,), ("norm",), pdtype, jnp.float32)
        x = x * scale_D
        if cfg.norm == "layernorm":
            x = x + param(self, "bias", nn.initializers.zeros, (d,), ("norm",), pdtype, jnp.float32)
        return x.astype(dtype)


def rope(x_BTNK: jax.Array, theta: float) -> jax.Array:
    """Returns `x` rotated by rotary position embeddings (positions 0..T-1; half-split pairing)."""
    t, k = x_BTNK.shape[1], x_BTNK.shape[-1]
    half = k // 2
    inv_freq_F = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_TF = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq_F[None, :]
    sin, cos = jnp.sin(angle_TF)[None, :, None, :], jnp.cos(angle_TF)[None, :, None, :]
    x = x_BTNK.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTNK.dtype)


class Attention(nn.Module):
    """Causal multi-head attention with grouped-query key/value heads (einsum or fused kernel)."""

    cfg: ml_collections.ConfigDict
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        """Returns the attention output [B, T, D] in the compute dtype."""
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        d, h, g, k = (cfg.d_model, cfg.n_heads, config_lib.n_kv_heads(cfg),
                      config_lib.head_dim(cfg))
        r = h // g
        init = nn.initializers.normal(mup.hidden_init_std(cfg))
        wq_DHK = param(self, "q", init, (d, h, k), ("embed", "heads", "head_dim"), pdtype, dtype)
        wk_DGK = param(self, "k", init, (d, g, k), ("embed", "kv_heads", "head_dim"), pdtype, dtype)
        wv_DGK = param(self, "v", init, (d, g, k), ("embed", "kv_heads", "head_dim"), pdtype, dtype)
        wo_HKD = param(self, "o", init, (h, k, d), ("heads", "head_dim", "embed"), pdtype, dtype)

        q_BTHK = token_einsum("BTD,DHK->BTHK", x_BTD, wq_DHK)
        k_BTGK = token_einsum("BTD,DGK->BTGK", x_BTD, wk_DGK)
        v_BTGK = token_einsum("BTD,DGK->BTGK", x_BTD, wv_DGK)
        if cfg.positions == "rope":
            q_BTHK = rope(q_BTHK, cfg.rope_theta)
            k_BTGK = rope(k_BTGK, cfg.rope_theta)
        q_BTHK = constrain(q_BTHK, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        k_BTGK = constrain(k_BTGK, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
        v_BTGK = constrain(v_BTGK, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))

        if cfg.attention_impl == "einsum":
            t = x_BTD.shape[1]
            # Grouped K/V are repeated to the H query heads, so that both attention matmuls are
            # plain [B, H] batched matmuls: the 5-D grouped form (with its R axis, size 1 in
            # multi-head attention) made XLA:CPU transpose every T × T score tensor in the
            # forward and backward passes (7 copies of [B, H, T, T] per layer).
            k_BTHK = jnp.repeat(k_BTGK, r, axis=2) if r > 1 else k_BTGK
            v_BTHK = jnp.repeat(v_BTGK, r, axis=2) if r > 1 else v_BTGK
            s_BHTS = jnp.einsum("BTHK,BSHK->BHTS", q_BTHK, k_BTHK).astype(jnp.float32)
            s_BHTS = s_BHTS * mup.attention_scale(cfg)
            causal_TS = jnp.tril(jnp.ones((t, t), dtype=bool))
            s_BHTS = jnp.where(causal_TS, s_BHTS, jnp.finfo(jnp.float32).min)
            p_BHTS = jax.nn.softmax(s_BHTS, axis=-1)
            p_BHTS = nn.Dropout(cfg.attn_dropout)(p_BHTS, deterministic=self.deterministic)
            o_BTHK = jnp.einsum("BHTS,BSHK->BTHK", p_BHTS.astype(dtype), v_BTHK)
        elif cfg.attention_impl in ("xla", "cudnn"):
            # Fused: grouped-query K/V natively (h query heads, g key/value heads), softmax in
            # float32, and no attention dropout.
            if cfg.attn_dropout > 0:
                raise ValueError(f"config.model.attention_impl={cfg.attention_impl!r} has no "
                                 f"attention dropout (model.attn_dropout={cfg.attn_dropout})")
            o_BTHK = jax.nn.dot_product_attention(
                q_BTHK, k_BTGK, v_BTGK, scale=mup.attention_scale(cfg), is_causal=True,
                implementation=cfg.attention_impl)
        else:
            raise ValueError(f"config.model.attention_impl={cfg.attention_impl!r}: must be "
                             "'einsum', 'xla' or 'cudnn'")
        o_BTHK = constrain(o_BTHK, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        return token_einsum("BTHK,HKD->BTD", o_BTHK, wo_HKD)


class FeedForward(nn.Module):
    """The position-wise MLP: SwiGLU (gate, up, down) or GELU (up, down)."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        """Returns the MLP output [B, T, D] in the compute dtype."""
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        d, f = cfg.d_model, config_lib.d_ff(cfg)
        init = nn.initializers.normal(mup.hidden_init_std(cfg))
        if cfg.mlp == "swiglu":
            wg_DF = param(self, "wi_gate", init, (d, f), ("embed", "mlp"), pdtype, dtype)
            wu_DF = param(self, "wi_up", init, (d, f), ("embed", "mlp"), pdtype, dtype)
            h_BTF = (jax.nn.silu(token_einsum("BTD,DF->BTF", x_BTD, wg_DF))
                     * token_einsum("BTD,DF->BTF", x_BTD, wu_DF))
        else:
            wi_DF = param(self, "wi", init, (d, f), ("embed", "mlp"), pdtype, dtype)
            h_BTF = jax.nn.gelu(token_einsum("BTD,DF->BTF", x_BTD, wi_DF))
        h_BTF = constrain(h_BTF, ("act_batch", "act_length", "act_mlp"))
        wo_FD = param(self, "wo", init, (f, d), ("mlp", "embed"), pdtype, dtype)
        return token_einsum("BTF,FD->BTD", h_BTF, wo_FD)


class Block(nn.Module):
    """One pre-norm Transformer layer; returns (x, None) so that it can be the body of nn.scan."""

    cfg: ml_collections.ConfigDict
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> tuple[jax.Array, None]:
        """Returns (the updated residual stream [B, T, D], None)."""
        cfg = self.cfg
        h_BTD = Norm(cfg, name="attn_norm")(x_BTD)
        h_BTD = Attention(cfg, self.deterministic, name="attn")(h_BTD)
        h_BTD = nn.Dropout(cfg.resid_dropout)(h_BTD, deterministic=self.deterministic)
        x_BTD = constrain(x_BTD + h_BTD, _ACT_BTD)
        h_BTD = Norm(cfg, name="mlp_norm")(x_BTD)
        h_BTD = FeedForward(cfg, name="mlp")(h_BTD)
        h_BTD = nn.Dropout(cfg.resid_dropout)(h_BTD, deterministic=self.deterministic)
        return constrain(x_BTD + h_BTD, _ACT_BTD), None


class Transformer(nn.Module):
    """Decoder-only causal LM: tokens [B, T] (int) -> logits [B, T, V] (float32)."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, tokens_BT: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Returns float32 next-token logits [B, T, V]; dropout draws from the 'dropout' stream."""
        cfg = self.cfg
        if cfg.vocab_size <= 0:
            raise ValueError(f"model.vocab_size={cfg.vocab_size}: must be resolved (> 0)")
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        v, d, t = cfg.vocab_size, cfg.d_model, tokens_BT.shape[1]
        if t > cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds model.max_seq_len={cfg.max_seq_len}")
        embed_init = nn.initializers.normal(cfg.init_std)

        emb_VD = param(self, "embedding", embed_init, (v, d), ("vocab", "embed"), pdtype, dtype)
        # Look up rows of a replicated copy of the table (an all-gather, as FSDP does for every
        # weight): a gather from a vocab/embed-sharded table cannot produce batch-sharded rows.
        x_BTD = jnp.take(constrain(emb_VD, (None, None)), tokens_BT, axis=0)
        if cfg.positions == "learned":
            pos_PD = param(self, "pos_embedding", embed_init, (cfg.max_seq_len, d),
                           (None, "embed"), pdtype, dtype)
            x_BTD = x_BTD + pos_PD[None, :t]
        x_BTD = constrain(x_BTD, _ACT_BTD)
        x_BTD = nn.Dropout(cfg.embed_dropout)(x_BTD, deterministic=deterministic)

        block: Any = Block
        unroll = config_lib.scan_unroll(cfg, jax.default_backend())
        if cfg.remat != "none":
            # Only a rolled loop keeps XLA from merging the recomputation with the forward pass.
            block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat],
                             prevent_cse=not cfg.scan_layers or unroll > 1)
        if cfg.scan_layers:
            stack = nn.scan(block, variable_axes={"params": 0},
                            split_rngs={"params": True, "dropout": True}, in_axes=(),
                            length=cfg.n_layers, unroll=unroll,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x_BTD, _ = stack(cfg, deterministic, name="layers")(x_BTD)
        else:
            for i in range(cfg.n_layers):
                x_BTD, _ = block(cfg, deterministic, name=f"layers_{i}")(x_BTD)
        self.sow("intermediates", "final_hidden", x_BTD)

        x_BTD = Norm(cfg, name="final_norm")(x_BTD)
        if cfg.tie_embeddings:
            logits_BTV = token_einsum("BTD,VD->BTV", x_BTD, emb_VD)
        else:
            un_DV = param(self, "unembed", embed_init, (d, v), ("embed", "vocab"), pdtype, dtype)
            logits_BTV = token_einsum("BTD,DV->BTV", x_BTD, un_DV)
        logits_BTV = logits_BTV.astype(jnp.float32) * mup.output_multiplier(cfg)
        return constrain(logits_BTV, ("act_batch", "act_length", "act_vocab"))
