"""A JAX persistent compilation cache shared by the runs of a sweep.

Runs of one sweep compile the same few programs again and again (same shapes, same optimizer;
seeds and most ablations change no shapes). Pointing every run at one cache directory lets the
second and later runs load compiled executables instead of compiling them. The thresholds are
lowered to zero so that even the quick compiles of tiny CPU models are cached.
"""

from __future__ import annotations

import os
import pathlib

ENV_VAR = "SCALING_COMPILE_CACHE_DIR"


def enable_compile_cache(directory: str | os.PathLike) -> pathlib.Path:
    """Points JAX's persistent compilation cache at `directory` (created); returns its path."""
    import jax

    path = pathlib.Path(directory).absolute()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def enable_from_env() -> pathlib.Path | None:
    """Enables the cache at $SCALING_COMPILE_CACHE_DIR if set; returns its path or None."""
    directory = os.environ.get(ENV_VAR)
    return enable_compile_cache(directory) if directory else None
