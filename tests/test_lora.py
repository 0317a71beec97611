"""LoRA through qwix: adapters on the chosen modules with logical axis names, a fresh adapter
leaves the function unchanged, the adapted model equals the base model with merged weights,
training moves only the adapters (the base stays bit-identical), and bad module names fail."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling import config as config_lib
from scaling.models import lora as lora_lib
from scaling.models import make_model
from scaling.train import setup as setup_lib
from tests.helpers import random_batch, tiny_lm_config


def lora_config(**overrides):
    """Returns the tiny LM with rank-2 LoRA on attention and MLP."""
    return tiny_lm_config(**{"finetune.lora_rank": 2, "finetune.lora_alpha": 4.0, **overrides})


def flat(tree) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in
            jax.tree_util.tree_flatten_with_path(
                tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]}


@pytest.mark.parametrize("scan", [True, False])
def test_adapters_sit_on_the_chosen_modules_with_logical_names(scan):
    config = lora_config(**{"model.scan_layers": scan, "finetune.lora_modules": "attn"})
    params = flat(jax.eval_shape(
        lambda: setup_lib.run_model(config).init(
            {"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 16), jnp.int32))["params"]))
    adapters = sorted(k for k in params if lora_lib.is_adapter(k))
    layer = "layers" if scan else "layers_0"
    assert f"{layer}/attn/q_lora_a" in adapters and f"{layer}/attn/o_lora_b" in adapters
    assert not any("/mlp/" in k for k in adapters)  # only the named modules
    q_a, q_b = params[f"{layer}/attn/q_lora_a"], params[f"{layer}/attn/q_lora_b"]
    lead = ("layers",) if scan else ()
    assert q_a.names == lead + ("embed", None)  # q: [D, H, K]; A [D, r], B [r, H, K]
    assert q_b.names == lead + (None, "heads", "head_dim")
    assert nn.meta.unbox(q_a).shape == (2,) * scan + (32, 2)
    assert nn.meta.unbox(q_b).shape == (2,) * scan + (2, 4, 8)


def test_adapters_shard_on_the_mesh():
    config = lora_config(**{"mesh.fsdp": 2, "mesh.tensor": 2})
    config_lib.validate(config, jax.device_count())
    trainer = setup_lib.build(config)
    shardings = flat(trainer.shardings.params)
    assert tuple(shardings["layers/attn/q_lora_a"].spec) == (None, "fsdp", None)
    assert tuple(shardings["layers/attn/q_lora_b"].spec) == (None, None, "tensor", None)
    assert tuple(shardings["layers/mlp/wo_lora_a"].spec) == (None, "tensor", None)
    state = trainer.init_state()
    a = flat(state.params)["layers/attn/q_lora_a"]
    assert a.sharding.spec == shardings["layers/attn/q_lora_a"].spec


def test_fresh_adapters_keep_the_function_and_match_merged_weights():
    config = lora_config()
    base_model = make_model(config.model)
    tokens = jnp.asarray(random_batch(config)["inputs"])
    lora_model = setup_lib.run_model(config)
    params = nn.meta.unbox(jax.jit(lora_model.init)({"params": jax.random.PRNGKey(0)},
                                                   tokens)["params"])
    base = jax.tree.map(lambda x: x, params)  # the same tree without the adapters
    for module in ("attn", "mlp"):
        group = base["layers"][module]
        for name in [k for k in group if lora_lib.is_adapter(k)]:
            del group[name]
    assert not any(lora_lib.is_adapter(k) for k in flat(base))
    # B = 0: the adapted model computes the base model's function
    lora_apply = jax.jit(lambda p: lora_model.apply({"params": p}, tokens))
    base_apply = jax.jit(lambda p: base_model.apply({"params": p}, tokens))
    np.testing.assert_array_equal(np.asarray(lora_apply(params)), np.asarray(base_apply(base)))

    # with B != 0 it equals the base model whose weights absorb (alpha / r)·A·B
    scale = config.finetune.lora_alpha / config.finetune.lora_rank
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (jnp.asarray(rng.normal(0, 0.1, x.shape), x.dtype)
                         if str(path[-1].key).endswith("_lora_b") else x), params)
    merged = jax.tree.map(lambda x: x, base)
    for module in ("attn", "mlp"):
        group = params["layers"][module]
        for name in [k for k in group if not lora_lib.is_adapter(k)]:
            a, b, w = group[name + "_lora_a"], group[name + "_lora_b"], group[name]
            n_layers, rank = a.shape[0], a.shape[-1]
            delta = jnp.matmul(a.reshape(n_layers, -1, rank), b.reshape(n_layers, rank, -1))
            merged["layers"][module][name] = w + scale * delta.reshape(w.shape)
    np.testing.assert_allclose(np.asarray(lora_apply(params)), np.asarray(base_apply(merged)),
                               rtol=2e-4, atol=2e-4)


def test_training_moves_only_the_adapters():
    config = lora_config(**{"optim.weight_decay": 0.1})
    trainer = setup_lib.build(config)
    batch = random_batch(config)
    step = trainer.jit_train_step(batch)
    state = trainer.init_state()
    before = {k: np.asarray(v) for k, v in flat(state.params).items()}
    for i in range(3):
        state, metrics = step(state, random_batch(config, seed=i))
    after = {k: np.asarray(v) for k, v in flat(state.params).items()}
    assert np.isfinite(float(metrics["loss"]))
    for k in before:
        if lora_lib.is_adapter(k):
            assert not np.array_equal(before[k], after[k]), f"adapter {k} did not train"
        else:
            assert before[k].tobytes() == after[k].tobytes(), f"base parameter {k} changed"


@pytest.mark.parametrize("modules, why", [
    ("attn,ffn", r"'ffn' matches no module of the model; its modules with weight matrices are "
                 r"\['layers/attn', 'layers/mlp'\]"),
    ("attn_norm", r"'attn_norm' matches no module"),  # a norm holds no weight matrix
    ("attn(", r"is not a regex"),
    (" , ", r"names no module"),
])
def test_unknown_module_is_a_clear_error(modules, why):
    config = lora_config(**{"finetune.lora_modules": modules})
    with pytest.raises(config_lib.ConfigError, match=r"finetune\.lora_modules.*" + why):
        setup_lib.build(config)


def test_module_entries_match_paths_and_names():
    config = lora_config(**{"finetune.lora_modules": "layers/mlp"})
    params = flat(setup_lib.abstract_params(config))
    assert "layers/mlp/wo_lora_a" in params and "layers/attn/q_lora_a" not in params


def test_cli_reports_an_unknown_module_in_one_line(tmp_path, capsys):
    from scaling import cli

    code = cli.main(["scaling", "train", "--config", "configs/lm_tiny.py",
                     "--workdir", str(tmp_path / "run"), "--config.data.source=task",
                     "--config.data.task.name=addition", "--config.finetune.lora_rank=4",
                     "--config.finetune.lora_modules=attn,ffn"])
    assert code == 2
    err = capsys.readouterr().err
    assert "config.finetune.lora_modules='attn,ffn'" in err and "'ffn' matches no module" in err
    assert not (tmp_path / "run" / "run.json").exists()  # refused before anything is written


@pytest.mark.parametrize("overrides", [{"model.n_kv_heads": 0},  # q, k, v of one shape
                                       {"model.dtype": "bfloat16"}])  # weights cast before use
def test_every_weight_of_the_modules_gets_an_adapter_on_the_mesh(overrides):
    config = lora_config(**{"mesh.fsdp": 2, **overrides})
    trainer = setup_lib.build(config)  # under the mesh's logical-axis rules
    names = flat(trainer.abstract_state.params)
    for module, weights in (("attn", "qkvo"), ("mlp", ("wi_gate", "wi_up", "wo"))):
        for w in weights:
            for suffix in lora_lib.ADAPTER_SUFFIXES:
                assert f"layers/{module}/{w}{suffix}" in names, (module, w, suffix)
    assert sorted(names) == sorted(flat(setup_lib.abstract_params(config)))  # same without mesh
