"""Small helpers shared by the model families: dtypes, logically partitioned params, constraints."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES: dict[str, Any] = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}

Initializer = Callable[..., jax.Array]


def dtype_of(name: str) -> Any:
    """Returns the jnp dtype named by a config string ('float32', 'bfloat16', 'float16')."""
    return DTYPES[name]


def param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
          names: tuple[str | None, ...], param_dtype: Any, dtype: Any) -> jax.Array:
    """Returns a new parameter (logically partitioned by `names`) cast to the compute `dtype`."""
    assert len(names) == len(shape), (name, names, shape)
    value = module.param(name, nn.with_logical_partitioning(init, names), tuple(shape), param_dtype)
    return jnp.asarray(value, dtype)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Returns `x` with a logical sharding constraint (a no-op without logical-axis rules)."""
    return nn.with_logical_constraint(x, names)
