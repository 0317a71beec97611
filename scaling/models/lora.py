"""LoRA adapters (Hu et al. 2021) on the model's weight matmuls, through qwix.

`apply(model, finetune_cfg)` returns the model with a rank-r adapter beside every weight einsum of
the chosen modules: y = x·W + (alpha / r)·x·A·B, A [in, r] (He-uniform), B [r, out] (zeros), so a
fresh adapter leaves the model's function unchanged. The adapters are ordinary parameters next to
the weight they adapt (`layers/attn/q_lora_a`, `..._lora_b`) and carry the weight's logical axis
names (qwix derives them from the weight's), so they shard like the rest; the optimizer freezes
every other parameter (`scaling.optim`).

`finetune.lora_modules` names the modules: comma-separated names or regular expressions, each
matched in full against a module's path (`layers/attn`, `layers_0/mlp`) or its last name (`attn`).
An entry that matches no module holding a weight matrix is an error that lists the modules.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import qwix
from qwix._src.providers import lora as qwix_lora

from scaling import config as config_lib

ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")


class LinenLoraProvider(qwix.LoraProvider):
    """qwix's LoraProvider, usable on compact linen modules that call `jnp.einsum` on weights
    under logical-axis rules.

    Hand-written because qwix 0.1.8's `LoraProvider.einsum` fails on such a model three ways: it
    records a debug string on the current module with `setattr`, which a compact linen module
    refuses once constructed (`SetAttributeFrozenModuleError`); it boxes each adapter with the
    adapted weight's full logical names before renaming them, so under a mesh with rules the
    sharding constraint of a rank-3 weight meets a rank-2 adapter; and it finds the weight an
    einsum reads by object identity, which the sharding constraint of unboxing breaks, and then
    by shape, which cannot tell q, k and v apart (an error, or silently no adapter for k and v).
    This override keeps qwix's adapter shapes, name mapping, initializers and math
    (`_parse_einsum_str_for_lora`), follows each weight from `Module.param` through the model's
    `jnp.asarray` cast to the einsum by identity, and creates the adapters with their own logical
    names.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._weights: dict[int, tuple[Any, str]] = {}  # id(array) -> (array, param name)

    def process_model_inputs(self, model: Any, model_args: Any, model_kwargs: Any) -> Any:
        """Returns qwix's processing of the inputs; forgets the previous call's weights."""
        self._weights = {}
        return super().process_model_inputs(model, model_args, model_kwargs)

    def process_model_output(self, method_name: str, model_output: Any) -> Any:
        """Returns qwix's processing of the output; drops this call's weight references."""
        self._weights = {}
        return super().process_model_output(method_name, model_output)

    def nn_param(self, module: nn.Module, name: str, *args: Any, **kwargs: Any) -> Any:
        """Returns the param as qwix does, remembering which param the returned array is."""
        value = super().nn_param(module, name, *args, **kwargs)
        self._weights[id(value)] = (value, name)
        return value

    def asarray(self, a: Any, dtype: Any = None, order: Any = None, **kwargs: Any) -> Any:
        """Returns qwix's `jnp.asarray`; a remembered weight stays remembered through the cast."""
        out = super().asarray(a, dtype=dtype, order=order, **kwargs)
        entry = self._weights.get(id(a))
        if entry is not None and entry[0] is a:
            self._weights[id(out)] = (out, entry[1])
        return out

    def _weight_name(self, module: nn.Module, x: Any) -> str | None:
        entry = self._weights.get(id(x))
        if entry is None or entry[0] is not x or not module.has_variable("params", entry[1]):
            return None
        return entry[1]

    def einsum(self, einsum_str: str, *operands: jax.Array, **kwargs: Any) -> jax.Array:
        """Returns einsum(operands) plus the scaled LoRA term when the rhs is an adapted weight."""
        res = qwix.PtqProvider.einsum(self, einsum_str, *operands, **kwargs)
        rule, _ = self._get_current_rule_and_op_id("einsum", repeated_call=True)
        if not isinstance(rule, qwix.LoraRule) or len(operands) != 2:
            return res
        lhs, rhs = operands
        module = qwix_lora.flax_util.get_current_module()
        weight_name = self._weight_name(module, rhs)
        if weight_name is None:  # the rhs is an activation (attention scores, values)
            return res
        a_shape, b_shape, lora_str, a_transpose, b_transpose = (
            qwix_lora._parse_einsum_str_for_lora(lhs.shape, rhs.shape, einsum_str, rule.rank))
        weight = module.get_variable("params", weight_name)
        names = getattr(weight, "names", None)
        dtype = nn.meta.unbox(weight).dtype
        lora_a = _adapter(module, weight_name + "_lora_a", rule.lora_a_initializer, a_shape,
                          names, a_transpose, dtype)
        lora_b = _adapter(module, weight_name + "_lora_b", rule.lora_b_initializer, b_shape,
                          names, b_transpose, dtype)
        # adapters in the compute dtype of the weight they adapt, as the model casts its weights
        delta = jax.numpy.einsum(lora_str, lhs, lora_a.astype(rhs.dtype),
                                 lora_b.astype(rhs.dtype), **kwargs)
        return res + (delta * (rule.alpha / rule.rank)).astype(res.dtype)


def _adapter(module: nn.Module, name: str, init: Any, shape: tuple[int, ...],
             weight_names: tuple | None, transpose: tuple, dtype: Any) -> jax.Array:
    """Returns the adapter param `name` of `module`, created logically named on first use: the
    weight's axis name where `transpose` points at a weight axis, None on the rank axis."""
    def init_fn(rng: jax.Array) -> Any:
        value = init(rng, shape, dtype)
        if weight_names is None:
            return value
        names = tuple(None if i is None else weight_names[i] for i in transpose)
        return nn.LogicallyPartitioned(value, names)

    return module.scope.param(name, init_fn)


def is_adapter(path: str) -> bool:
    """Returns True for a LoRA adapter parameter path (`.../q_lora_a`), False for base weights."""
    return path.rsplit("/", 1)[-1].endswith(ADAPTER_SUFFIXES)


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def weight_modules(abstract_params: Any) -> list[str]:
    """Returns the paths of the modules that hold a weight matrix (a param of rank >= 2, not
    counting a scanned 'layers' axis), e.g. ['layers/attn', 'layers/mlp']; the root is ''."""
    found: set[str] = set()

    def visit(path: tuple, leaf: Any) -> None:
        names = getattr(leaf, "names", None)
        rank = (len([n for n in names if n != "layers"]) if names is not None
                else len(nn.meta.unbox(leaf).shape))
        if rank >= 2:
            found.add(_path_str(path[:-1]))

    jax.tree_util.tree_map_with_path(
        visit, abstract_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return sorted(found)


def entries(modules: str) -> list[str]:
    """Returns the entries of a `finetune.lora_modules` string (comma-separated, trimmed)."""
    return [e.strip() for e in modules.split(",") if e.strip()]


def module_regex(modules: str) -> str:
    """Returns the qwix `module_path` regex for `finetune.lora_modules` (full path or last name)."""
    return "|".join(f"(?:(?:.*/)?(?:{e}))" for e in entries(modules))


def check_modules(finetune_cfg: ml_collections.ConfigDict, abstract_params: Any) -> None:
    """Returns None; raises ConfigError naming `finetune.lora_modules` if an entry is not a valid
    regex or matches none of the model's weight modules (the message lists them)."""
    field, value = "finetune.lora_modules", finetune_cfg.lora_modules
    items = entries(value)
    if not items:
        raise config_lib.ConfigError(field, value, "names no module")
    known = weight_modules(abstract_params)
    named = [m for m in known if m]  # the root module has no name to match
    for e in items:
        try:
            pattern = re.compile(f"(?:.*/)?(?:{e})")
        except re.error as err:
            raise config_lib.ConfigError(field, value, f"{e!r} is not a regex ({err})") from None
        if not any(pattern.fullmatch(m) for m in named):
            raise config_lib.ConfigError(
                field, value, f"{e!r} matches no module of the model; its modules with weight "
                f"matrices are {named}")


def apply(model: nn.Module, finetune_cfg: ml_collections.ConfigDict) -> nn.Module:
    """Returns `model` with LoRA adapters (rank, alpha, modules from `finetune_cfg`)."""
    provider = LinenLoraProvider(module_path=module_regex(finetune_cfg.lora_modules),
                                 rank=int(finetune_cfg.lora_rank),
                                 alpha=float(finetune_cfg.lora_alpha))
    return qwix.apply_lora_to_model(model, provider)


def trainable_labels(abstract_params: Any) -> Any:
    """Returns a pytree like `abstract_params` of 'adapter' (trained) or 'frozen' labels."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "adapter" if is_adapter(_path_str(path)) else "frozen",
        abstract_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
