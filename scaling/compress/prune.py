"""One-shot magnitude pruning of the compressible weights: unstructured or N:M.

Unstructured: in every layer of every weight (each matrix W_IO of the stacked view W_LIO), the
round(S·I·O) weights of smallest magnitude become zero, so every layer reaches the target sparsity
S exactly (uniform layer-wise magnitude pruning). N:M: in every output channel, each run of M
consecutive inputs keeps its N largest-magnitude weights (2:4 is the pattern sparse tensor cores
run), sparsity 1 − N/M. Ties are broken by position, so the counts are exact.

Masks are boolean arrays of the weight's shape (True: kept); `apply_masks` multiplies them in.
Hand-written rather than a library call: the pruning libraries for JAX (jaxpruner) are not among
the project's dependencies, and the two masks are a sort each.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling.compress.spec import CompressionError, PruneSpec
from scaling.compress.weights import WeightView


def unstructured_mask(w_LIO: np.ndarray, sparsity: float) -> np.ndarray:
    """Returns the keep-mask [L, I, O] zeroing the round(S·I·O) smallest |w| of every layer."""
    L = w_LIO.shape[0]
    flat = np.abs(w_LIO.reshape(L, -1))
    k = int(round(sparsity * flat.shape[1]))
    mask = np.ones_like(flat, dtype=bool)
    if k:
        drop = np.argsort(flat, axis=1, kind="stable")[:, :k]
        np.put_along_axis(mask, drop, False, axis=1)
    return mask.reshape(w_LIO.shape)


def n_m_mask(w_LIO: np.ndarray, n: int, m: int) -> np.ndarray:
    """Returns the keep-mask [L, I, O] keeping the n largest |w| of every m consecutive inputs."""
    L, I, O = w_LIO.shape
    if I % m:
        raise CompressionError(f"{n}:{m} pruning needs the inputs ({I}) to be a multiple of {m}")
    blocks = np.abs(w_LIO.reshape(L, I // m, m, O))
    drop = np.argsort(blocks, axis=2, kind="stable")[:, :, : m - n, :]
    mask = np.ones_like(blocks, dtype=bool)
    np.put_along_axis(mask, drop, False, axis=2)
    return mask.reshape(L, I, O)


def magnitude_masks(leaves: dict[str, np.ndarray], views: dict[str, WeightView],
                    spec: PruneSpec) -> dict[str, np.ndarray]:
    """Returns {path: keep-mask of the weight's shape} for every weight in `views`."""
    nm = spec.n_m
    for path, view in views.items():  # check every shape before any work
        if nm and view.inputs % nm[1]:
            raise CompressionError(f"--pattern={spec.pattern}: {path} (shape {view.shape}) has "
                                   f"{view.inputs} inputs, not a multiple of {nm[1]}")
    masks = {}
    for path, view in views.items():
        w_LIO = view.to_matrix(np.asarray(leaves[path]))
        m_LIO = n_m_mask(w_LIO, *nm) if nm else unstructured_mask(w_LIO, spec.sparsity)
        masks[path] = view.from_matrix(m_LIO)
    return masks


def apply_masks(leaves: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Returns {path: weight with the pruned entries set to zero} for the masked paths."""
    return {p: np.where(m, np.asarray(leaves[p]), 0).astype(np.asarray(leaves[p]).dtype)
            for p, m in masks.items()}


def sparsity_record(masks: dict[str, np.ndarray], n_params_nonembed: int, spec: PruneSpec) -> dict[str, Any]:
    """Returns the JSON record of a pruning: achieved sparsity, non-zero non-embedding N, tensors."""
    total = sum(int(m.size) for m in masks.values())
    zeros = sum(int(m.size - np.count_nonzero(m)) for m in masks.values())
    return {**spec.to_dict(), "sparsity": zeros / max(total, 1), "n_pruned_weights": total,
            "n_zeros": zeros, "n_params_nonembed_nonzero": int(n_params_nonembed - zeros),
            "tensors": sorted(masks)}
