"""What a compression asks for (quantization scheme, pruning pattern), validated before anything runs."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# qwix's integer qtypes by bit width: int8 and int4 are JAX dtypes, int2/int3 are qwix's
# synthetic types (symmetric only), stored in the int4 container.
SCHEMES: dict[str, int] = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}
# Integer containers the quantized values can be stored in, with the bits each holds.
STORAGE_BITS: dict[str, int] = {"int8": 8, "int4": 4, "int2": 2}
PATTERNS = ("unstructured", "N:M")


class CompressionError(ValueError):
    """A compression request that cannot be carried out; the message names the flag or tensor."""


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """Post-training weight quantization: symmetric absmax integers per channel or per group."""

    scheme: str  # qwix qtype name, a key of SCHEMES
    storage: str  # container of the integer values, a key of STORAGE_BITS
    group_size: int = 0  # 0: one scale per output channel; G > 0: one per G consecutive inputs

    @property
    def bits(self) -> int:
        """Returns the bit width of the quantized values."""
        return SCHEMES[self.scheme]

    @property
    def granularity(self) -> str:
        """Returns "per-channel" or "per-group"."""
        return "per-group" if self.group_size else "per-channel"

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON record of the scheme (run.json "compression.quantize")."""
        return {"scheme": self.scheme, "bits": self.bits, "storage": self.storage,
                "granularity": self.granularity, "group_size": self.group_size,
                "calibration": "absmax", "symmetric": True}


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    """One-shot magnitude pruning: unstructured to a sparsity, or N of every M consecutive inputs."""

    sparsity: float  # fraction of the pruned tensors' weights set to zero
    pattern: str = "unstructured"  # "unstructured" or "N:M", e.g. "2:4"

    @property
    def n_m(self) -> tuple[int, int] | None:
        """Returns (N, M) for an N:M pattern, None for unstructured."""
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON record of the request (run.json "compression.prune")."""
        return {"pattern": self.pattern, "target_sparsity": self.sparsity}


def quant_spec(scheme: str, group_size: int = 0, storage: str | None = None) -> QuantSpec:
    """Returns a validated QuantSpec; CompressionError names the flag for a bad request."""
    if scheme not in SCHEMES:
        raise CompressionError(f"--quantize={scheme!r}: unknown scheme; known: {', '.join(SCHEMES)}")
    bits = SCHEMES[scheme]
    if storage is None:
        storage = min((s for s, b in STORAGE_BITS.items() if b >= bits), key=STORAGE_BITS.get)
    if storage not in STORAGE_BITS:
        raise CompressionError(f"--storage={storage!r}: unknown integer dtype; known: "
                               f"{', '.join(STORAGE_BITS)}")
    if STORAGE_BITS[storage] < bits:
        raise CompressionError(f"--quantize={scheme} needs {bits} bits per value, but --storage={storage} "
                               f"holds only {STORAGE_BITS[storage]}")
    if group_size < 0:
        raise CompressionError(f"--group_size={group_size}: must be 0 (per channel) or a positive size")
    return QuantSpec(scheme=scheme, storage=storage, group_size=int(group_size))


def prune_spec(sparsity: float | None, pattern: str = "unstructured") -> PruneSpec:
    """Returns a validated PruneSpec (an N:M pattern implies sparsity 1 − N/M when none is given)."""
    if pattern != "unstructured":
        match = re.fullmatch(r"(\d+):(\d+)", pattern)
        if not match:
            raise CompressionError(f"--pattern={pattern!r}: expected 'unstructured' or N:M such as 2:4")
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise CompressionError(f"--pattern={pattern}: need 0 < N < M")
        implied = 1.0 - n / m
        if sparsity is None:
            sparsity = implied
        elif abs(sparsity - implied) > 1e-9:
            raise CompressionError(f"--prune={sparsity:g} disagrees with --pattern={pattern}, which "
                                   f"prunes a fraction 1 - {n}/{m} = {implied:g}")
    if sparsity is None:
        raise CompressionError("--pattern=unstructured needs a target sparsity (--prune)")
    if not 0.0 <= sparsity < 1.0:
        raise CompressionError(f"--prune={sparsity:g}: sparsity must lie in [0, 1)")
    return PruneSpec(sparsity=float(sparsity), pattern=pattern)
