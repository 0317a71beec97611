"""Transformer and MLP modules: shapes, causality, scan/remat equivalence, metadata, sharding."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from scaling import config as config_lib
from scaling.models import MLP, Transformer, make_model

FAST = {"xla_backend_optimization_level": 0}  # tiny programs: compile time dominates
PARAM_AXES = {"embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "layers", "norm", None}
MLP_AXES = {"input", "hidden", "classes"}


def fast_jit(fn: Any, **kwargs: Any) -> Any:
    return jax.jit(fn, compiler_options=FAST, **kwargs)


def transformer_cfg(**overrides: Any) -> ml_collections.ConfigDict:
    m = config_lib.default_config().model
    m.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16))
    m.update(overrides)
    return m


def mlp_cfg(**overrides: Any) -> ml_collections.ConfigDict:
    m = config_lib.default_config().model
    m.update(dict(kind="mlp", input_dim=12, num_classes=5, mlp_width=24, mlp_depth=2))
    m.update(overrides)
    return m


def tokens(batch: int = 8, length: int = 16, vocab: int = 64, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, vocab)


class Base:
    """The default tiny model, initialized once per module (compilation dominates test time)."""

    def __init__(self) -> None:
        self.cfg = transformer_cfg()
        self.model = make_model(self.cfg)
        self.x = tokens()
        self.variables = fast_jit(self.model.init)(jax.random.key(0), self.x)
        self.params = nn.unbox(self.variables)["params"]
        self.apply = fast_jit(self.model.apply)


@pytest.fixture(scope="module")
def base() -> Base:
    return Base()


def test_make_model_dispatch() -> None:
    assert isinstance(make_model(transformer_cfg()), Transformer)
    assert isinstance(make_model(mlp_cfg()), MLP)
    bad = transformer_cfg()
    bad.kind = "rnn"
    with pytest.raises(ValueError, match="model.kind"):
        make_model(bad)


@pytest.mark.parametrize("overrides", [
    {},
    {"scan_layers": False, "tie_embeddings": False, "positions": "learned", "norm": "layernorm"},
    {"n_kv_heads": 0, "mlp": "gelu", "remat": "dots"},
])
def test_params_are_logically_partitioned(overrides: dict[str, Any]) -> None:
    cfg = transformer_cfg(**overrides)
    boxed = jax.eval_shape(make_model(cfg).init, jax.random.key(0), tokens())["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
        assert len(leaf.names) == leaf.value.ndim, (leaf.names, leaf.value.shape)
        assert set(leaf.names) <= PARAM_AXES, leaf.names
        # Every name set must map to a valid PartitionSpec (no logical name used twice).
        nn.logical_to_mesh_axes(leaf.names, config_lib.DEFAULT_LOGICAL_RULES)
    stacked = [l for l in leaves if l.names[0] == "layers"]
    if cfg.scan_layers:
        assert stacked and all(l.value.shape[0] == cfg.n_layers for l in stacked)
    else:
        assert not stacked
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf.names for path, leaf in
            jax.tree_util.tree_flatten_with_path(
                boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]}
    prefix = ("layers",) if cfg.scan_layers else ()
    q = "layers/attn/q" if cfg.scan_layers else "layers_0/attn/q"
    assert flat[q] == prefix + ("embed", "heads", "head_dim")
    assert flat["embedding"] == ("vocab", "embed")


def test_mlp_params_are_logically_partitioned() -> None:
    cfg = mlp_cfg(mlp_depth=3)
    boxed = jax.eval_shape(make_model(cfg).init, jax.random.key(0), jnp.zeros((2, 12)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert len(leaves) == 8  # 3 hidden + readout, kernel and bias each
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned)
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= MLP_AXES
        nn.logical_to_mesh_axes(leaf.names, config_lib.DEFAULT_LOGICAL_RULES)
    assert boxed["dense_1"]["kernel"].value.shape == (24, 24)
    assert boxed["readout"]["kernel"].names == ("hidden", "classes")


def check_causal(apply: Any, variables: Any, x: jax.Array, vocab: int) -> None:
    t = 7
    y = x.at[:, t].set((x[:, t] + 1) % vocab)
    a, b = np.asarray(apply(variables, x)), np.asarray(apply(variables, y))
    assert a.shape == x.shape + (vocab,) and a.dtype == np.float32
    # Positions < t cannot see token t: masked probabilities are exactly 0, so the logits agree
    # to float32 rounding (atol 1e-6 on logits of size ~0.1).
    np.testing.assert_allclose(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    # Positions >= t do see it: every one of them moves by clearly more than rounding.
    moved = np.abs(a[:, t:] - b[:, t:]).max(axis=-1)
    assert (moved > 1e-4).all(), moved.min()


def test_causality_gqa_rope(base: Base) -> None:
    check_causal(base.apply, base.variables, base.x, base.cfg.vocab_size)


def test_causality_learned_gelu_layernorm_untied() -> None:
    cfg = transformer_cfg(positions="learned", mlp="gelu", norm="layernorm", n_kv_heads=0,
                          tie_embeddings=False, scan_layers=False)
    model = make_model(cfg)
    x = tokens()
    check_causal(fast_jit(model.apply), fast_jit(model.init)(jax.random.key(0), x), x,
                 cfg.vocab_size)


def unstack_layers(params: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """Scanned params (leading L axis under 'layers') -> 'layers_i' subtrees."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(n_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["layers"])
    return out


def test_scan_matches_unrolled(base: Base) -> None:
    cfg_loop = transformer_cfg(scan_layers=False)
    looped = unstack_layers(base.params, base.cfg.n_layers)
    shapes = nn.unbox(jax.eval_shape(make_model(cfg_loop).init, jax.random.key(0), base.x))
    assert jax.tree.structure(shapes["params"]) == jax.tree.structure(looped)
    assert (jax.tree.map(lambda a: a.shape, shapes["params"])
            == jax.tree.map(lambda a: a.shape, looped))
    a = base.apply(base.variables, base.x)
    b = fast_jit(make_model(cfg_loop).apply)({"params": looped}, base.x)
    # Same arithmetic in a loop vs unrolled; only fusion order differs (float32, logits ~0.1).
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
    # Layers are initialized independently (split rngs), not copies of each other.
    q = np.asarray(base.params["layers"]["attn"]["q"])
    assert np.abs(q[0] - q[1]).max() > 1e-3


def loss_and_grads(cfg: ml_collections.ConfigDict, params: Any, x: jax.Array) -> Any:
    model = make_model(cfg)

    def loss(p: Any) -> jax.Array:
        logits = model.apply({"params": p}, x[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()

    return fast_jit(jax.value_and_grad(loss))(params)


def test_remat_matches_none(base: Base) -> None:
    ref_loss, ref_grads = loss_and_grads(base.cfg, base.params, base.x)
    looped = unstack_layers(base.params, base.cfg.n_layers)
    ref_looped = unstack_layers(ref_grads, base.cfg.n_layers)
    # The rolled scan (prevent_cse=False), the unrolled scan (the CPU default) and the Python
    # loop (prevent_cse=True) with the policies; 'dots' shares every code path with
    # 'dots_no_batch' but its policy name.
    for cfg, params, ref in ((transformer_cfg(remat="full", scan_unroll=1), base.params, ref_grads),
                             (transformer_cfg(remat="dots_no_batch"), base.params, ref_grads),
                             (transformer_cfg(remat="dots_no_batch", scan_layers=False), looped,
                              ref_looped)):
        got_loss, got_grads = loss_and_grads(cfg, params, base.x)
        assert jax.tree.structure(got_grads) == jax.tree.structure(ref)
        # Rematerialization recomputes the same ops: equal up to float32 reassociation.
        np.testing.assert_allclose(float(got_loss), float(ref_loss), rtol=1e-6)
        for g, r in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-6, rtol=1e-4)


def test_dropout_uses_dropout_rng(base: Base) -> None:
    dropped = make_model(transformer_cfg(embed_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1))

    @fast_jit
    def outputs(variables: Any) -> tuple[jax.Array, ...]:
        def train(seed: int) -> jax.Array:
            return dropped.apply(variables, base.x, deterministic=False,
                                 rngs={"dropout": jax.random.key(seed)})
        return train(1), train(2), train(1), dropped.apply(variables, base.x)

    a, b, a_again, evaluation = map(np.asarray, outputs(base.variables))
    assert np.abs(a - b).max() > 1e-4  # different masks -> different logits
    np.testing.assert_array_equal(a, a_again)  # the mask is a function of the rng only
    # deterministic=True ignores the dropout rates: equal to the same model without dropout.
    plain = np.asarray(base.apply(base.variables, base.x))
    np.testing.assert_allclose(evaluation, plain, atol=1e-6)


def test_bfloat16_compute(base: Base) -> None:
    lo = fast_jit(make_model(transformer_cfg(dtype="bfloat16")).apply)(base.variables, base.x)
    hi = base.apply(base.variables, base.x)
    assert lo.dtype == jnp.float32
    # bfloat16 has an 8-bit mantissa (relative error ~4e-3 per op): logits of size ~0.1 agree to
    # 0.02 absolute, but must not be bit-identical (the compute dtype is really used).
    err = np.abs(np.asarray(lo) - np.asarray(hi)).max()
    assert 0 < err < 0.02, err
    bf16_params = jax.eval_shape(make_model(transformer_cfg(param_dtype="bfloat16")).init,
                                 jax.random.key(0), base.x)
    assert all(l.dtype == jnp.bfloat16 for l in jax.tree.leaves(nn.unbox(bf16_params)))


def test_sequence_too_long_and_unresolved_vocab_raise() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        jax.eval_shape(make_model(transformer_cfg()).init, jax.random.key(0), tokens(length=17))
    with pytest.raises(ValueError, match="vocab_size"):
        jax.eval_shape(make_model(transformer_cfg(vocab_size=0)).init, jax.random.key(0),
                       tokens())


def test_mlp_forward_and_dropout() -> None:
    cfg = mlp_cfg(resid_dropout=0.5, mlp_activation="relu")
    model = make_model(cfg)
    x = jax.random.normal(jax.random.key(3), (4, 12))
    params = fast_jit(model.init)(jax.random.key(0), x)
    both = fast_jit(lambda p: (model.apply(p, x), model.apply(
        p, x, deterministic=False, rngs={"dropout": jax.random.key(1)})))
    logits, dropped = both(params)
    assert logits.shape == (4, 5) and logits.dtype == jnp.float32
    # LeCun-normal init keeps unit-scale inputs at unit-scale logits (a loose 0.1..10 window).
    assert 0.1 < float(jnp.std(logits)) < 10.0
    assert np.abs(np.asarray(dropped - logits)).max() > 1e-3
    with pytest.raises(ValueError, match="input_dim"):
        model.apply(params, jnp.zeros((4, 13)))


def test_under_mesh_and_rules_matches_unconstrained(base: Base) -> None:
    """With a (data, fsdp, tensor) = (2, 2, 2) mesh and the default rules, logits are unchanged."""
    ref = base.apply(base.variables, base.x)
    mlp = make_model(mlp_cfg())
    mlp_x = jnp.ones((8, 12))
    mlp_vars = fast_jit(mlp.init)(jax.random.key(0), mlp_x)
    mlp_apply = fast_jit(mlp.apply)
    mlp_ref = mlp_apply(mlp_vars, mlp_x)

    auto = (jax.sharding.AxisType.Auto,) * 3
    mesh = jax.make_mesh((2, 2, 2), config_lib.MESH_AXES, axis_types=auto)
    rules = config_lib.DEFAULT_LOGICAL_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        batch = jax.NamedSharding(mesh, jax.P(("data", "fsdp")))
        placed = jax.device_put(base.variables, nn.logical_to_mesh_sharding(
            nn.get_partition_spec(base.variables), mesh, rules))
        q = placed["params"]["layers"]["attn"]["q"].value
        assert q.sharding.spec == jax.P(None, "fsdp", "tensor", None)
        out = fast_jit(base.model.apply)(placed, jax.device_put(base.x, batch))
        assert out.sharding.spec == jax.P(("data", "fsdp"), None, "tensor")
        mlp_placed = jax.device_put(mlp_vars, nn.logical_to_mesh_sharding(
            nn.get_partition_spec(mlp_vars), mesh, rules))
        mlp_out = fast_jit(mlp.apply)(mlp_placed, jax.device_put(mlp_x, batch))
    # Sharding changes only the reduction order of the partial sums (float32).
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(mlp_out), np.asarray(mlp_ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads,positions", [
    (0, "rope"), (2, "rope"), (0, "learned"), (1, "learned")])
def test_xla_attention_matches_einsum(n_kv_heads: int, positions: str) -> None:
    """jax.nn.dot_product_attention (implementation='xla') computes the einsum path's function."""
    # muP at half the base width (d_model 32, base 64): the attention scale sqrt(16)/8 differs from
    # the default 1/sqrt(head_dim=8), which moves the logits by ~1e-2, far above the tolerance.
    cfgs = {impl: transformer_cfg(n_kv_heads=n_kv_heads, positions=positions, attention_impl=impl,
                                  parameterization="mup", mup_base_width=64)
            for impl in ("einsum", "xla")}
    x = tokens()
    params = nn.unbox(fast_jit(make_model(cfgs["einsum"]).init)(jax.random.key(0), x))["params"]

    @fast_jit
    def outputs(p: Any) -> dict[str, tuple[jax.Array, Any]]:
        out = {}
        for impl, cfg in cfgs.items():
            model = make_model(cfg)

            def loss(p: Any, model: nn.Module = model) -> jax.Array:
                logits = model.apply({"params": p}, x[:, :-1])
                return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()

            out[impl] = (model.apply({"params": p}, x), jax.grad(loss)(p))
        return out

    got = outputs(params)
    (ref_logits, ref_grads), (logits, grads) = got["einsum"], got["xla"]
    # The same float32 arithmetic up to the mask value and reduction order.
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-6)


def test_fused_attention_has_no_dropout() -> None:
    cfg = transformer_cfg(attention_impl="xla", attn_dropout=0.1)
    with pytest.raises(ValueError, match="attention_impl='xla'"):
        jax.eval_shape(make_model(cfg).init, jax.random.key(0), tokens())


def test_scan_unroll_resolves_per_backend() -> None:
    cfg = transformer_cfg(n_layers=3)
    assert config_lib.scan_unroll(cfg, "cpu") == 3  # auto: straight-line layers on CPU
    assert config_lib.scan_unroll(cfg, "gpu") == 1
    assert config_lib.scan_unroll(cfg, "tpu") == 1
    assert config_lib.scan_unroll(transformer_cfg(n_layers=3, scan_unroll=2), "cpu") == 2
    assert config_lib.scan_unroll(transformer_cfg(n_layers=3, scan_unroll=8), "gpu") == 3


def test_scan_unroll_changes_program_not_numbers(base: Base) -> None:
    # Unrolling keeps the stacked parameter tree and the arithmetic; only the loop goes away.
    looped_cfg = transformer_cfg(scan_unroll=1)
    unrolled_cfg = transformer_cfg(scan_unroll=base.cfg.n_layers)
    ref_loss, ref_grads = loss_and_grads(looped_cfg, base.params, base.x)
    got_loss, got_grads = loss_and_grads(unrolled_cfg, base.params, base.x)
    np.testing.assert_allclose(float(got_loss), float(ref_loss), rtol=1e-6)
    for g, r in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-6, rtol=1e-4)

    def hlo(cfg: ml_collections.ConfigDict) -> str:
        model = make_model(cfg)
        grad = jax.grad(lambda p: model.apply({"params": p}, base.x).sum())
        return jax.jit(grad).lower(base.params).as_text()

    assert "while" in hlo(looped_cfg)
    assert "while" not in hlo(unrolled_cfg)


@pytest.mark.parametrize("equation, w_shape", [("BTD,DHK->BTHK", (8, 2, 4)),
                                               ("BTHK,HKD->BTD", (2, 4, 8)),
                                               ("BTD,VD->BTV", (11, 8))])
def test_token_einsum_matches_einsum_and_its_gradients(equation: str, w_shape: tuple) -> None:
    from scaling.models.common import token_einsum

    lhs = equation.split(",")[0]
    sizes = dict(zip("BTDHKV", (3, 5, 8, 2, 4, 11)))
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, tuple(sizes[c] for c in lhs))
    w = jax.random.normal(kw, w_shape)
    want = jnp.einsum(equation, x, w)
    got = token_einsum(equation, x, w)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    g_want = jax.grad(lambda x, w: jnp.sum(jnp.einsum(equation, x, w) ** 2), (0, 1))(x, w)
    g_got = jax.grad(lambda x, w: jnp.sum(token_einsum(equation, x, w) ** 2), (0, 1))(x, w)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_token_einsum_names_an_equation_it_cannot_flatten() -> None:
    from scaling.models.common import token_einsum

    with pytest.raises(ValueError, match="must start with 'BT'"):
        token_einsum("BHTS,BSHK->BTHK", jnp.zeros((1, 2, 3, 3)), jnp.zeros((1, 3, 2, 4)))
