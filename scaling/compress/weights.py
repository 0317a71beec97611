"""Which parameters compression touches, and their (layers, inputs, outputs) matrix view.

Compressed are the matrix weights outside the embedding: the Transformer's attention (q, k, v,
o) and MLP (wi, wi_gate, wi_up, wo) weights and the MLP model's kernels. Embeddings, the
unembedding, norm scales and biases stay in float, as in the usual post-training quantization and
pruning setups (and N, the non-embedding count, is what the sparsity law is stated in).

Each weight is viewed as a stack of matrices W_LIO: the scanned ``layers`` axis (or a size-1 one),
the contraction (input) axes merged into I, and the output axes merged into O. Channels are the
columns O of each layer; groups are runs of consecutive inputs within a channel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

# leaf name -> number of contraction axes that follow the optional "layers" axis
CONTRACTION_AXES: dict[str, int] = {"q": 1, "k": 1, "v": 1, "o": 2, "wi": 1, "wi_gate": 1, "wi_up": 1,
                                    "wo": 1, "kernel": 1}


@dataclasses.dataclass(frozen=True)
class WeightView:
    """How one parameter maps to its stacked matrix view [L, I, O]."""

    path: str  # "layers/attn/q"
    shape: tuple[int, ...]  # the parameter's own shape
    layers: int  # L (1 when the parameter has no layers axis)
    inputs: int  # I, the merged contraction axes
    outputs: int  # O, the merged output axes

    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        """Returns the parameter as W_LIO (a reshape, no copy)."""
        return w.reshape(self.layers, self.inputs, self.outputs)

    def from_matrix(self, w_LIO: np.ndarray) -> np.ndarray:
        """Returns W_LIO reshaped back to the parameter's own shape."""
        return w_LIO.reshape(self.shape)


def _path_str(path: tuple) -> str:
    """Returns "a/b/c" from a tree path's dict keys (box attributes such as .value are skipped)."""
    return "/".join(str(k.key) for k in path if hasattr(k, "key"))


def weight_views(params: Any, logical_names: Any) -> dict[str, WeightView]:
    """Returns {path: WeightView} of the compressible weights in a params tree.

    logical_names: the same tree with each leaf's logical axis names (a PartitionSpec or tuple),
    used to find the scanned ``layers`` axis.
    """
    leaves = dict((_path_str(p), v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0])
    names = dict((_path_str(p), tuple(v)) for p, v in jax.tree_util.tree_flatten_with_path(
        logical_names, is_leaf=lambda x: isinstance(x, tuple))[0])
    views = {}
    for path, leaf in leaves.items():
        n_in = CONTRACTION_AXES.get(path.rsplit("/", 1)[-1])
        if n_in is None:
            continue
        shape = tuple(leaf.shape)
        axes = names.get(path, ())
        has_layers = bool(axes) and axes[0] == "layers"
        rest = shape[1:] if has_layers else shape
        if len(rest) < n_in + 1:
            continue
        views[path] = WeightView(path=path, shape=shape, layers=shape[0] if has_layers else 1,
                                 inputs=math.prod(rest[:n_in]), outputs=math.prod(rest[n_in:]))
    return views


def replace_leaves(params: Any, new: dict[str, Any]) -> Any:
    """Returns params with the leaves at the paths in `new` replaced (other leaves unchanged)."""
    def pick(path: tuple, leaf: Any) -> Any:
        return new.get(_path_str(path), leaf)

    return jax.tree_util.tree_map_with_path(pick, params)


def leaf_dict(params: Any) -> dict[str, Any]:
    """Returns {path: leaf} of a params tree."""
    return {_path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
