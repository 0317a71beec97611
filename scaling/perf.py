"""Hardware reference figures measured in the same process: the matmul peak that MFU divides by."""

from __future__ import annotations

import time

import jax

# Published dense bf16 peaks (FLOP/s per chip) for accelerators; the CPU peak is always measured.
KNOWN_PEAKS = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
}


def matmul_size(device: jax.Device) -> int:
    """Returns the matmul size n that reaches `device`'s peak: 1024 on CPU, 8192 otherwise."""
    return 1024 if device.platform == "cpu" else 8192


def measure_matmul_peak(n: int | None = None, dtype: str = "float32", repeats: int = 5,
                        device: jax.Device | None = None) -> float:
    """Returns the best measured FLOP/s of an n×n×n matmul on one device (2n³ FLOPs per call).

    `n` defaults to `matmul_size(device)`: a 1024³ matmul is too small to saturate a GPU."""
    device = device or jax.local_devices()[0]
    n = n or matmul_size(device)
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.device_put(jax.random.normal(key_a, (n, n), dtype), device)
    b = jax.device_put(jax.random.normal(key_b, (n, n), dtype), device)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def peak_flops_per_device(configured: float = 0.0, dtype: str = "float32") -> tuple[float, str]:
    """Returns (peak FLOP/s per device, where it came from): configured, published, or measured."""
    if configured > 0:
        return configured, "configured"
    device = jax.local_devices()[0]
    if device.platform != "cpu" and device.device_kind in KNOWN_PEAKS:
        return KNOWN_PEAKS[device.device_kind], f"published peak of {device.device_kind}"
    return measure_matmul_peak(dtype=dtype), f"measured {dtype} matmul peak on {device.platform}"


def total_peak_flops(per_device: float) -> float:
    """Returns the peak FLOP/s of all devices; fake CPU devices share one host, so count it once."""
    if jax.devices()[0].platform == "cpu":
        return per_device * jax.process_count()
    return per_device * jax.device_count()
