"""Hugging Face export: the exported model's logits equal the project's forward pass.

Tolerance: float32 throughout on both sides; the logits must agree to 1e-4 absolute (measured
differences are ~1e-6 on logits of magnitude ~1, from summation order). Parameters are random
draws with standard deviation 0.3 (not the near-zero init), so a transposed, swapped or unscaled
tensor moves the logits by far more than the tolerance. torch is imported inside the tests only.
"""

from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.cli import main as cli_main
from scaling.export import ExportError, architecture
from scaling.export.run import restore_params, write_hf
from scaling.models import make_model, mup
from tests.helpers import tiny_lm_config

LOGIT_ATOL = 1e-4

GPT2_STYLE = {"model.norm": "layernorm", "model.positions": "learned", "model.mlp": "gelu",
              "model.n_kv_heads": 0}


def random_params(config, seed: int = 0) -> dict:
    """Returns the model's parameter tree with every leaf redrawn from N(0, 0.3²)."""
    model = make_model(config.model)
    tokens = jnp.zeros((1, config.data.seq_len), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), tokens)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda x: (0.3 * rng.standard_normal(np.shape(x))).astype(np.float32), params)


def ours_and_theirs(config, params: dict, out_dir: pathlib.Path,
                    tokens_BT: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
    """Returns (project logits, exported HF model logits, the HF model) on the same tokens."""
    import torch
    import transformers

    ours = np.asarray(make_model(config.model).apply({"params": params}, jnp.asarray(tokens_BT)))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    with torch.no_grad():
        theirs = hf_model(torch.tensor(tokens_BT, dtype=torch.long)).logits.float().numpy()
    return ours, theirs, hf_model


@pytest.mark.parametrize("name,overrides,arch", [
    ("llama_gqa_tied", {}, "LlamaForCausalLM"),
    # muP: attention scale sqrt(4)/8 and output multiplier 3 / (32/16) folded into q and lm_head;
    # unscanned layers (layers_i), multi-head attention, another RoPE base
    ("llama_mup_unscanned", {"model.parameterization": "mup", "model.mup_base_width": 16,
                             "model.mup_output_mult": 3.0, "model.scan_layers": False,
                             "model.n_kv_heads": 0, "model.rope_theta": 500.0},
     "LlamaForCausalLM"),
    ("gpt2", dict(GPT2_STYLE, **{"model.tie_embeddings": False}), "GPT2LMHeadModel"),
])
def test_exported_logits_match(tmp_path, name, overrides, arch):
    import torch

    config = tiny_lm_config(**overrides)
    params = random_params(config)
    write_hf(params, config.model, tmp_path, {"pad": 0, "bos": 1, "eos": 2})
    tokens = np.random.default_rng(1).integers(0, config.model.vocab_size, (2, 16))
    ours, theirs, hf_model = ours_and_theirs(config, params, tmp_path, tokens)
    assert type(hf_model).__name__ == arch
    assert ours.shape == theirs.shape == (2, 16, config.model.vocab_size)
    assert np.std(ours) > 0.3  # logits far from uniform: a mapping error would show
    np.testing.assert_allclose(theirs, ours, atol=LOGIT_ATOL, rtol=0)
    cfg = json.loads((tmp_path / "config.json").read_text())
    if name == "llama_mup_unscanned":
        assert mup.output_multiplier(config.model) == pytest.approx(1.5)
        assert cfg["tie_word_embeddings"] is False  # the multiplier needs its own lm_head
    if name == "llama_gqa_tied":
        assert cfg["num_key_value_heads"] == 2 and cfg["tie_word_embeddings"] is True
        # the comparison has teeth: the same model with k and v swapped misses by far
        attn = hf_model.model.layers[0].self_attn
        with torch.no_grad():
            k_w = attn.k_proj.weight.clone()
            attn.k_proj.weight.copy_(attn.v_proj.weight)
            attn.v_proj.weight.copy_(k_w)
            swapped = hf_model(torch.tensor(tokens)).logits.numpy()
        assert np.max(np.abs(swapped - ours)) > 100 * LOGIT_ATOL


@pytest.mark.parametrize("overrides,fields", [
    ({"model.mlp": "gelu"}, "model.mlp='gelu'"),
    ({"model.positions": "learned"}, "model.positions='learned'"),
    (dict(GPT2_STYLE, **{"model.n_kv_heads": 2}), "model.n_kv_heads=2"),
])
def test_unsupported_models_fail_clearly(overrides, fields):
    with pytest.raises(ExportError, match=fields.replace(".", r"\.")):
        architecture(tiny_lm_config(**overrides).model)


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory, stdlib_tiny_data_dir):
    from scaling import config as config_lib
    from scaling.train.loop import train

    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(stdlib_tiny_data_dir)
    c.data.seq_len = c.model.max_seq_len = 32
    c.data.eval_tokens = 256
    c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 32, 2, 4, 2
    c.train.batch_size, c.train.num_steps, c.train.progress = 8, 4, False
    c.train.eval_at_checkpoints = False
    c.checkpoint.log_max = 2
    workdir = tmp_path_factory.mktemp("byte_run")
    train(c, workdir)
    return workdir


def test_cli_export_of_a_trained_run(byte_run, tmp_path, capsys):
    """`scaling export RUN:STEP --format hf OUT` loads with AutoModelForCausalLM; logits match."""
    import transformers

    from scaling import config as config_lib
    from scaling.data import tokenizers as tok_lib

    out = tmp_path / "hf"
    assert cli_main(["scaling", "export", f"{byte_run}:2", "--format", "hf", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step 2 as llama" in printed and "tokenizer: byte written" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    config = config_lib.load_json(byte_run / "config.json")
    params, step = restore_params(byte_run, config, 2)
    assert step == 2
    text = "def f(x):\n    return x + 1  # é→∑"
    ids = tok_lib.ByteTokenizer().encode(text)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids.tolist()
    assert hf_tok.decode(ids.tolist()) == text
    assert hf_tok.eos_token_id == tok_lib.BYTE_EOS_ID and hf_tok.pad_token_id == tok_lib.BYTE_PAD_ID
    tokens = ids[None, :32].astype(np.int64)
    ours, theirs, _ = ours_and_theirs(config, params, out, tokens)
    np.testing.assert_allclose(theirs, ours, atol=LOGIT_ATOL, rtol=0)
    record = json.loads((out / "scaling_export.json").read_text())
    assert record["step"] == 2 and record["architecture"] == "llama"


def test_cli_export_errors(byte_run, tmp_path, capsys):
    assert cli_main(["scaling", "export", f"{byte_run}:3", str(tmp_path / "o")]) == 2
    assert "no checkpoint at step 3" in capsys.readouterr().err
    assert cli_main(["scaling", "export", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_an_unsupported_run_before_restoring(tmp_path, capsys):
    from scaling import config as config_lib

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config_lib.to_json(tiny_lm_config(**{"model.mlp": "gelu"})))
    assert cli_main(["scaling", "export", str(run), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot export" in err and "model.mlp='gelu'" in err
    assert not (tmp_path / "o").exists()


def test_byte_tokenizer_export_gives_the_project_ids():
    """Every byte that valid UTF-8 holds maps to its own id; the alphabet is the library's."""
    from tokenizers import pre_tokenizers

    from scaling.data import tokenizers as tok_lib
    from scaling.export.tokenizer import byte_level_alphabet, byte_tokenizer_object

    table = byte_level_alphabet()
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    # every 1- and 2-byte character, then one character per 3- and 4-byte lead byte
    leads = [0x900] + [0x1000 * k + 0x100 for k in range(1, 16)]  # E0..EF
    leads += [0x10100, 0x50100, 0x90100, 0xD0100, 0x100100]  # F0..F4
    text = "".join(chr(c) for c in list(range(0x800)) + leads)
    ids = tok_lib.ByteTokenizer().encode(text)
    assert len(set(ids.tolist())) == 256 - 13  # all but C0, C1, F5..FF (never in UTF-8)
    tok = byte_tokenizer_object()
    assert tok.encode(text, add_special_tokens=False).ids == ids.tolist()
    assert tok.decode(ids.tolist()) == text
