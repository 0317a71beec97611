"""Loss functions and gradient accumulation of the pure train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.train.step import argmax_hits, cross_entropy_sums
from tests import helpers


def test_cross_entropy_matches_manual_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = rng.integers(0, 5, (2, 3)).astype(np.int32)
    weights = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    log_z = np.log(np.exp(logits).sum(-1))
    s = cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
                           label_smoothing=0.1, z_loss=1e-2)
    np.testing.assert_allclose(s["nll"], (nll * weights).sum(), rtol=1e-5)
    expected = (0.9 * nll + 0.1 * (-log_p.mean(-1)) + 1e-2 * log_z**2) * weights
    np.testing.assert_allclose(s["loss"], expected.sum(), rtol=1e-5)
    np.testing.assert_allclose(s["weight"], 4.0)


@pytest.mark.parametrize("levels", [3, 1000])
def test_argmax_hits_equals_argmax_with_ties_to_the_first_index(levels):
    # 3 logit levels make ties the rule (the tie-break decides most rows); 1,000 make them rare
    rng = np.random.default_rng(levels)
    logits = rng.integers(0, levels, (4, 64, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (4, 64)).astype(np.int32)
    expected = (np.argmax(logits, -1) == targets).astype(np.float32)
    got = np.asarray(jax.jit(argmax_hits)(jnp.asarray(logits), jnp.asarray(targets)))
    np.testing.assert_array_equal(got, expected)
    assert 0 < expected.sum() < expected.size  # both outcomes occur


BASE = {"optim.name": "sgd", "optim.lr": 0.5, "optim.b1": 0.0, "train.batch_size": 8}


@pytest.fixture(scope="module")
def full_batch_step():
    batch = helpers.random_batch(helpers.tiny_lm_config(**BASE))
    batch["weights"][:3, 5:] = 0.0
    state, metrics = helpers.one_step(helpers.tiny_lm_config(**BASE), batch, jax.devices()[:1])
    return batch, jax.device_get(state.params), metrics


@pytest.mark.parametrize("micro", [2, 4])
def test_gradient_accumulation_equals_full_batch(micro, full_batch_step):
    # weights with zeros make the per-microbatch token counts unequal: the update must still be the
    # full-batch token-mean; tolerance is float32 summation order (SGD, so no Adam amplification)
    batch, ref_params, ref_m = full_batch_step
    state, m = helpers.one_step(helpers.tiny_lm_config(**BASE, **{"train.microbatches": micro}),
                                batch, jax.devices()[:1])
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-6)
    np.testing.assert_allclose(m["weight"], ref_m["weight"])
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def _nan_weights(batch: dict) -> dict:
    return dict(batch, weights=np.full_like(batch["weights"], np.nan))


def test_nonfinite_mask_names_the_quantities():
    from scaling.train import step as step_lib

    assert step_lib.nonfinite_names(0) == []
    assert step_lib.nonfinite_names(5) == ["loss", "param_norm"]
    mask = step_lib.nonfinite_mask({"loss": jnp.float32(1.0), "grad_norm": jnp.float32(jnp.inf),
                                    "param_norm": jnp.float32(2.0)})
    assert int(mask) == 2


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_step_is_flagged_and_skip_keeps_the_old_state(policy):
    from scaling.train import setup as setup_lib

    config = helpers.tiny_lm_config(**{"train.on_nonfinite": policy})
    devices = jax.devices()[:1]
    trainer = setup_lib.build(config, devices)
    batch = helpers.random_batch(config)
    step = trainer.jit_train_step(batch)
    state = trainer.init_state()
    state, metrics = step(state, batch)  # a finite step
    assert int(metrics["nonfinite"]) == 0
    before = jax.device_get((state.params, state.opt_state))
    state, metrics = step(state, _nan_weights(batch))  # the donated state is replaced
    assert int(metrics["nonfinite"]) == 7  # loss, grad norm and parameter norm
    assert int(state.step) == 2
    after = jax.device_get((state.params, state.opt_state))
    if policy == "skip":
        for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
            np.testing.assert_array_equal(a, b)
    else:
        assert all(np.isnan(leaf).all() for leaf in jax.tree.leaves(after[0]))
