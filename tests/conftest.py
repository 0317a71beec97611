"""Test setup: 8 fake CPU devices (set before jax is imported anywhere) and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
