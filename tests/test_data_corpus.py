"""The offline stdlib corpus builds without network and reads like any TFDS dataset."""

from __future__ import annotations

import platform
import time

import pytest
import tensorflow_datasets as tfds

from scaling.data.corpora import stdlib_corpus


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tfds")
    stdlib_corpus.ensure_built(d, "tiny")
    return str(d)


def test_tiny_corpus_reads_through_tfds_data_source(data_dir):
    sizes = {}
    paths = {}
    for split in ("train", "validation", "test"):
        src = tfds.data_source("stdlib_corpus/tiny", split=split, data_dir=data_dir)
        assert len(src) > 0
        docs = [src[i] for i in range(len(src))]
        sizes[split] = sum(len(d["text"]) for d in docs)
        paths[split] = {d["path"].decode() if isinstance(d["path"], bytes) else d["path"]
                        for d in docs}
        for p in paths[split]:
            assert p.endswith(".py") and stdlib_corpus.split_of(p) == split
            assert not {"site-packages", "test", "tests"} & set(p.split("/"))
    assert 200_000 < sizes["train"] <= 300_000
    assert 0 < sizes["validation"] <= 40_000 and 0 < sizes["test"] <= 40_000
    assert not (paths["train"] & paths["validation"] or paths["train"] & paths["test"])


def test_metadata_records_python_version_and_files(data_dir):
    builder = tfds.builder("stdlib_corpus/tiny", data_dir=data_dir)
    meta = builder.info.metadata
    assert meta["python_version"] == platform.python_version()
    src = tfds.data_source("stdlib_corpus/tiny", split="validation", data_dir=data_dir)
    assert len(meta["files"]["validation"]) == len(src)


def test_ensure_built_is_idempotent_and_fast(data_dir):
    start = time.perf_counter()
    stdlib_corpus.ensure_built(data_dir, "tiny")
    assert time.perf_counter() - start < 2.0


def test_split_assignment_is_stable_and_roughly_90_5_5():
    files = stdlib_corpus.list_files()
    n = sum(len(v) for v in files.values())
    assert n > 300
    assert 0.85 < len(files["train"]) / n < 0.95
    assert stdlib_corpus.split_of("json/decoder.py") == stdlib_corpus.split_of("json/decoder.py")
    assert all(stdlib_corpus.split_of(p) == s for s, fs in files.items() for p in fs)


def test_site_config_adds_the_installed_packages_under_a_prefix():
    site = stdlib_corpus.list_files(stdlib_corpus.site_root(), stdlib_corpus.SITE_PREFIX)
    paths = [p for fs in site.values() for p in fs]
    assert len(paths) > 100 and all(p.startswith("site-packages/") for p in paths)
    assert any(p == "site-packages/scaling/data/prepared.py" or p.startswith(
        "site-packages/numpy/") for p in paths)
    assert all(stdlib_corpus.source_path(p).is_file() for p in paths[:50])
    stdlib = stdlib_corpus.list_files()["train"][0]
    assert stdlib_corpus.source_path(stdlib) == stdlib_corpus.stdlib_root() / stdlib
