"""Test setup: 8 fake CPU devices (set before jax is imported anywhere) and shared fixtures."""

import os

# The tests' models are tiny: XLA:CPU's LLVM optimisation passes take most of each compile (about
# 10 s for a 2-layer train step) and buy nothing at these sizes. Level 0 without the expensive
# passes compiles 3-4x faster; every comparison in the suite is between programs built alike.
# Subprocesses the tests start inherit the flags (see `xla_flags`). Runs outside the tests keep
# XLA's defaults.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int) -> str:
    """Returns the XLA_FLAGS of a test process with `devices` fake CPU devices and fast compiles."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAGS}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same small programs (the tiny model's init, train and eval steps). One
# persistent compilation cache for the whole pytest run -- created by the process that loads this file
# first (the xdist controller), inherited through the environment by the workers and by the
# subprocesses tests start -- lets every later compile of a program load it instead. Thresholds are
# zero so that the quick compiles of tiny models are cached too. Removed when the pytest run ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _compile_cache_dir = tempfile.mkdtemp(prefix="scaling-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _compile_cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    atexit.register(shutil.rmtree, _compile_cache_dir, True)

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT / "tests" / "data"  # published data, see tests/data/README.md


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    """Returns the folder of published reference data shipped with the tests (tests/data)."""
    assert REFERENCE_DIR.is_dir(), f"reference data not found at {REFERENCE_DIR}"
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def stdlib_tiny_data_dir(tmp_path_factory) -> pathlib.Path:
    """Returns a TFDS data dir holding the built `stdlib_corpus/tiny` (built once per session)."""
    from scaling.data.corpora.stdlib_corpus import ensure_built

    data_dir = tmp_path_factory.mktemp("tfds_data")
    ensure_built(data_dir, config="tiny")
    return data_dir
