"""Post-training weight quantization through qwix: symmetric absmax integers, per channel or group.

Every compressible weight (`scaling.compress.weights`) is quantized by `qwix.quantize` on its
matrix view W_LIO — one scale per (layer, output channel), or per (layer, channel, group of G
consecutive inputs) — and dequantized back with `qwix.dequantize`, so the checkpoint holds the
exact values the quantized model computes with ("fake quantization") and evaluates with the
unchanged model code. Each channel or group then takes at most 2^bits distinct values.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import qwix

from scaling.compress.spec import CompressionError, QuantSpec
from scaling.compress.weights import WeightView

_QTYPES: dict[str, Any] = {"int8": jnp.int8, "int4": jnp.int4, "int3": "int3", "int2": "int2"}


def check_quantizable(views: dict[str, WeightView], dtypes: dict[str, Any], spec: QuantSpec) -> None:
    """Raises CompressionError when a weight's dtype or shape cannot take the scheme (before any work)."""
    for path, view in views.items():
        dt = np.dtype(dtypes[path])
        if not np.issubdtype(dt, np.floating) and dt.name != "bfloat16":
            raise CompressionError(f"{path}: dtype {dt.name} is not a float type; only float weights "
                                   "can be quantized")
        if 8 * dt.itemsize <= spec.bits:
            raise CompressionError(f"{path}: dtype {dt.name} ({8 * dt.itemsize} bits) cannot hold "
                                   f"{spec.bits}-bit quantized values with their scale")
        if spec.group_size and view.inputs % spec.group_size:
            raise CompressionError(f"--group_size={spec.group_size} does not divide the {view.inputs} "
                                   f"inputs of {path} (shape {view.shape})")


def quantize_weight(w: np.ndarray, view: WeightView, spec: QuantSpec) -> tuple[np.ndarray, int]:
    """Returns (the dequantized weight, same shape and dtype, and the bytes its quantized form takes).

    Bytes count the integer values at `spec.storage` width and one float32 scale per channel or group.
    """
    w_LIO = jnp.asarray(view.to_matrix(np.asarray(w)), jnp.float32)
    tiled = {1: spec.group_size} if spec.group_size else {}
    q = qwix.quantize(w_LIO, _QTYPES[spec.scheme], channelwise_axes=(0, 2), tiled_axes=tiled)
    deq_LIO = np.asarray(qwix.dequantize(q))
    n_scales = int(np.prod(q.scale.shape))
    storage_bits = {"int8": 8, "int4": 4, "int2": 2}[spec.storage]
    nbytes = (w_LIO.size * storage_bits + 7) // 8 + 4 * n_scales
    return view.from_matrix(deq_LIO).astype(np.asarray(w).dtype), int(nbytes)


def quantize_weights(leaves: dict[str, np.ndarray], views: dict[str, WeightView],
                     spec: QuantSpec) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Returns ({path: dequantized weight}, record) for every weight in `views`.

    The record counts the quantized weights, their bytes (integers + scales) against float32,
    and the tensors touched.
    """
    check_quantizable(views, {p: leaves[p].dtype for p in views}, spec)
    out, total_bytes, n_weights = {}, 0, 0
    for path, view in views.items():
        out[path], nbytes = quantize_weight(leaves[path], view, spec)
        total_bytes += nbytes
        n_weights += int(np.prod(view.shape))
    record = {**spec.to_dict(), "library": f"qwix {qwix.__version__}", "tensors": sorted(views),
              "n_weights": n_weights, "weight_bytes": total_bytes, "float32_bytes": 4 * n_weights}
    return out, record
