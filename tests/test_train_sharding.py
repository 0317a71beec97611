"""Sharded train steps equal the single-device step, and parameters are sharded as the rules say."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tests import helpers

# f32 on CPU: the sharded step sums in a different order (all-reduces), so the loss may differ by
# float rounding (1e-5 relative). Adam's first update is lr * g / (|g| + eps): for a gradient entry
# with |g| near eps a rounding-level change of g moves the update by up to ~1e-3 * lr, so parameters
# are compared with atol = 5e-3 * lr = 5e-5 (lr = 1e-2); real sharding bugs move them by ~lr.
LOSS_RTOL = 1e-5
PARAM_ATOL = 5e-5


@pytest.fixture(scope="module")
def reference():
    config = helpers.tiny_lm_config()
    batch = helpers.random_batch(config)
    state, metrics = helpers.one_step(config, batch, jax.devices()[:1])
    return config, batch, jax.device_get(state.params), metrics


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(reference, mesh):
    config, batch, params_ref, metrics_ref = reference
    config = helpers.tiny_lm_config(**{"mesh.data": mesh[0], "mesh.fsdp": mesh[1],
                                       "mesh.tensor": mesh[2]})
    state, metrics = helpers.one_step(config, batch)
    np.testing.assert_allclose(metrics["loss"], metrics_ref["loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(metrics["grad_norm"], metrics_ref["grad_norm"], rtol=1e-4)
    flat_ref = jax.tree_util.tree_leaves_with_path(params_ref)
    flat = jax.tree_util.tree_leaves_with_path(state.params)
    assert [p for p, _ in flat] == [p for p, _ in flat_ref]
    moved = 0.0
    for (path, a), (_, b) in zip(flat, flat_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=PARAM_ATOL,
                                   err_msg=jax.tree_util.keystr(path))
    for leaf in jax.tree.leaves(state.params):
        moved = max(moved, float(np.max(np.abs(np.asarray(leaf)))))
    assert moved > 0


def test_params_are_sharded_as_rules_say():
    config = helpers.tiny_lm_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    state, _ = helpers.one_step(config, helpers.random_batch(config))
    mesh_axes = {"embed": "fsdp", "mlp": "tensor", "heads": "tensor", "kv_heads": "tensor",
                 "vocab": "tensor"}
    from scaling import sharding as sharding_lib
    from scaling.config import logical_rules
    from scaling.models import make_model
    from scaling.train.state import abstract_params

    mesh = sharding_lib.make_mesh(config)
    with sharding_lib.logical_context(mesh, logical_rules(config)):
        boxed = abstract_params(make_model(config.model), config)
    names = jax.tree.leaves(jax.tree.map(lambda b: tuple(b.names), boxed,
                                         is_leaf=lambda x: hasattr(x, "names")),
                            is_leaf=lambda x: isinstance(x, tuple))
    leaves = jax.tree.leaves(state.params)
    assert len(names) == len(leaves)
    checked = 0
    for logical, leaf in zip(names, leaves):
        expected = P(*[mesh_axes.get(n) for n in logical])
        assert leaf.sharding.spec == expected, (logical, leaf.sharding.spec)
        if any(a is not None for a in expected):
            # a sharded dimension really is split: each shard holds a fraction of the array
            shard_size = leaf.addressable_shards[0].data.size
            assert shard_size < leaf.size
            checked += 1
    assert checked >= 4
