"""The project's Transformer parameters as Hugging Face `transformers` checkpoints (Llama or GPT-2).

`llama_tensors` / `gpt2_tensors` map a parameter tree (as `Transformer.init` makes it, stacked
``layers`` or ``layers_0..``) to the tensor names and layouts of `LlamaForCausalLM` /
`GPT2LMHeadModel`, and `hf_config` writes the matching `config.json` fields. Which architecture
a model maps to (`architecture`):

- RMSNorm + RoPE + SwiGLU (the default family) -> Llama. RoPE pairs dimension i with i + K/2
  (half-split), as HF Llama's `rotate_half` does, so q/k need no permutation; GQA maps to
  `num_key_value_heads` (HF repeats each key/value head to consecutive query heads, as
  `jnp.repeat` does here).
- LayerNorm + learned positions + GELU with all heads of size d_model / n_heads and no GQA ->
  GPT-2 (its linear biases are written as zeros; `jax.nn.gelu` is the tanh approximation,
  HF's `gelu_new`).
- Anything else (e.g. RoPE with a GELU MLP, LayerNorm with RoPE) has no HF architecture with the
  same function and is an `ExportError` naming the fields.

Scales the HF models do not have are folded into weights, which is exact up to float32
rounding: an attention scale other than 1/sqrt(head_dim) (muP's 1/head_dim) multiplies the
query projection (RoPE is linear, so it commutes), and muP's output multiplier multiplies the
unembedding (a tied embedding then becomes an untied `lm_head`, since the input embedding must
stay unscaled). Tensors are float32 numpy arrays in HF's (out, in) layout for Llama's `Linear`
and (in, out) for GPT-2's `Conv1D`.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections
import numpy as np

from scaling import config as config_lib
from scaling.models import mup


class ExportError(ValueError):
    """A model that cannot be written as the requested format (the message names the fields)."""


def architecture(m: ml_collections.ConfigDict) -> str:
    """Returns "llama" or "gpt2", the HF architecture computing the same function as model `m`."""
    if m.kind != "transformer":
        raise ExportError(f"model.kind={m.kind!r}: only Transformer language models export to "
                          "Hugging Face causal LMs")
    family = (m.norm, m.positions, m.mlp)
    if family == ("rmsnorm", "rope", "swiglu"):
        return "llama"
    if family == ("layernorm", "learned", "gelu"):
        k = config_lib.head_dim(m)
        if config_lib.n_kv_heads(m) != m.n_heads or k * m.n_heads != m.d_model:
            raise ExportError(
                f"model.n_kv_heads={m.n_kv_heads}, model.head_dim={m.head_dim}: a LayerNorm / "
                "learned-position / GELU model exports as GPT-2, which needs multi-head attention "
                "(n_kv_heads = n_heads) and head_dim = d_model / n_heads")
        return "gpt2"
    raise ExportError(
        f"model.norm={m.norm!r}, model.positions={m.positions!r}, model.mlp={m.mlp!r}: no Hugging "
        "Face architecture computes this combination; exportable are rmsnorm/rope/swiglu (Llama) "
        "and layernorm/learned/gelu (GPT-2)")


def layer_params(params: dict[str, Any], n_layers: int) -> list[dict[str, Any]]:
    """Returns each layer's parameter subtree (numpy), from stacked ``layers`` or ``layers_i``."""
    if "layers" in params:
        return [_index_tree(params["layers"], i) for i in range(n_layers)]
    missing = [f"layers_{i}" for i in range(n_layers) if f"layers_{i}" not in params]
    if missing:
        raise ExportError(f"parameter tree has neither 'layers' nor {missing}")
    return [params[f"layers_{i}"] for i in range(n_layers)]


def _index_tree(tree: Any, i: int) -> Any:
    if isinstance(tree, dict):
        return {k: _index_tree(v, i) for k, v in tree.items()}
    return np.asarray(tree)[i]


def _f32(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def query_factor(m: ml_collections.ConfigDict) -> float:
    """Returns the factor folded into the query weights: the model's attention scale × sqrt(K)."""
    return mup.attention_scale(m) * math.sqrt(config_lib.head_dim(m))


def _unembedding_DV(params: dict[str, Any], m: ml_collections.ConfigDict) -> tuple[np.ndarray, bool]:
    """Returns (the output projection [D, V] with muP's multiplier folded in, tied in HF?)."""
    mult = mup.output_multiplier(m)
    if m.tie_embeddings:
        un_DV = np.asarray(params["embedding"], np.float32).T
    else:
        un_DV = np.asarray(params["unembed"], np.float32)
    tied = bool(m.tie_embeddings) and mult == 1.0
    return un_DV * np.float32(mult), tied


def llama_tensors(params: dict[str, Any], m: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Returns {HF Llama tensor name: float32 array} for the model's parameters."""
    d, h, g, k = m.d_model, m.n_heads, config_lib.n_kv_heads(m), config_lib.head_dim(m)
    qf = np.float32(query_factor(m))
    out = {"model.embed_tokens.weight": _f32(params["embedding"]),
           "model.norm.weight": _f32(params["final_norm"]["scale"])}
    for i, layer in enumerate(layer_params(params, m.n_layers)):
        p = f"model.layers.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        out[p + "self_attn.q_proj.weight"] = _f32(np.reshape(attn["q"], (d, h * k)).T * qf)
        out[p + "self_attn.k_proj.weight"] = _f32(np.reshape(attn["k"], (d, g * k)).T)
        out[p + "self_attn.v_proj.weight"] = _f32(np.reshape(attn["v"], (d, g * k)).T)
        out[p + "self_attn.o_proj.weight"] = _f32(np.reshape(attn["o"], (h * k, d)).T)
        out[p + "mlp.gate_proj.weight"] = _f32(np.asarray(mlp["wi_gate"]).T)
        out[p + "mlp.up_proj.weight"] = _f32(np.asarray(mlp["wi_up"]).T)
        out[p + "mlp.down_proj.weight"] = _f32(np.asarray(mlp["wo"]).T)
        out[p + "input_layernorm.weight"] = _f32(layer["attn_norm"]["scale"])
        out[p + "post_attention_layernorm.weight"] = _f32(layer["mlp_norm"]["scale"])
    un_DV, tied = _unembedding_DV(params, m)
    if not tied:
        out["lm_head.weight"] = _f32(un_DV.T)
    return out


def gpt2_tensors(params: dict[str, Any], m: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Returns {HF GPT-2 tensor name: float32 array}; linear biases are zeros (the model has none)."""
    d, f = m.d_model, config_lib.d_ff(m)
    qf = np.float32(query_factor(m))
    out = {"transformer.wte.weight": _f32(params["embedding"]),
           "transformer.wpe.weight": _f32(params["pos_embedding"]),
           "transformer.ln_f.weight": _f32(params["final_norm"]["scale"]),
           "transformer.ln_f.bias": _f32(params["final_norm"]["bias"])}
    for i, layer in enumerate(layer_params(params, m.n_layers)):
        p = f"transformer.h.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        q_DD = np.reshape(attn["q"], (d, d)) * qf
        kv = [np.reshape(attn[n], (d, d)) for n in ("k", "v")]
        out[p + "attn.c_attn.weight"] = _f32(np.concatenate([q_DD] + kv, axis=1))
        out[p + "attn.c_attn.bias"] = np.zeros(3 * d, np.float32)
        out[p + "attn.c_proj.weight"] = _f32(np.reshape(attn["o"], (d, d)))
        out[p + "attn.c_proj.bias"] = np.zeros(d, np.float32)
        out[p + "mlp.c_fc.weight"] = _f32(mlp["wi"])
        out[p + "mlp.c_fc.bias"] = np.zeros(f, np.float32)
        out[p + "mlp.c_proj.weight"] = _f32(mlp["wo"])
        out[p + "mlp.c_proj.bias"] = np.zeros(d, np.float32)
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[p + f"{theirs}.weight"] = _f32(layer[ours]["scale"])
            out[p + f"{theirs}.bias"] = _f32(layer[ours]["bias"])
    un_DV, tied = _unembedding_DV(params, m)
    if not tied:
        out["lm_head.weight"] = _f32(un_DV.T)
    return out


def hf_tensors(params: dict[str, Any], m: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Returns the HF tensors of the architecture `architecture(m)` names (float32 numpy)."""
    arch = architecture(m)
    return llama_tensors(params, m) if arch == "llama" else gpt2_tensors(params, m)


def hf_config(m: ml_collections.ConfigDict, special_ids: dict[str, int] | None = None
              ) -> dict[str, Any]:
    """Returns the `config.json` object of the exported model (special token ids if given)."""
    arch = architecture(m)
    tied = bool(m.tie_embeddings) and mup.output_multiplier(m) == 1.0
    ids = {f"{k}_token_id": int(v) for k, v in (special_ids or {}).items()}
    if arch == "llama":
        cfg: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": int(m.vocab_size), "hidden_size": int(m.d_model),
            "intermediate_size": int(config_lib.d_ff(m)), "num_hidden_layers": int(m.n_layers),
            "num_attention_heads": int(m.n_heads),
            "num_key_value_heads": int(config_lib.n_kv_heads(m)),
            "head_dim": int(config_lib.head_dim(m)), "hidden_act": "silu",
            "max_position_embeddings": int(m.max_seq_len), "rms_norm_eps": float(m.norm_eps),
            # transformers >= 5 reads rope_parameters; 4.x reads rope_theta
            "rope_theta": float(m.rope_theta),
            "rope_parameters": {"rope_type": "default", "rope_theta": float(m.rope_theta)},
            "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
            "initializer_range": float(m.init_std), "pretraining_tp": 1,
        }
    else:
        cfg = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": int(m.vocab_size), "n_embd": int(m.d_model),
            "n_inner": int(config_lib.d_ff(m)), "n_layer": int(m.n_layers),
            "n_head": int(m.n_heads), "n_positions": int(m.max_seq_len),
            "activation_function": "gelu_new", "layer_norm_epsilon": float(m.norm_eps),
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "attn_pdrop": 0.0, "initializer_range": float(m.init_std),
        }
    cfg.update({"tie_word_embeddings": tied, "torch_dtype": "float32", "dtype": "float32",
                "use_cache": True, **ids})
    return cfg
