"""`stdlib_corpus`: an offline text corpus made of the Python standard library's own .py sources.

Needs no download: the documents are the `.py` files under `sysconfig.get_paths()['stdlib']` of
the interpreter that builds it, one document per file (feature `text`, plus its relative `path`).
Excluded: `site-packages`/`dist-packages` (except in the `site` config), every directory named `test`, `tests` or `idle_test`,
and `__pycache__`. Each file goes to a split by a stable hash of its relative path (SHA-256 of the
POSIX path): 90% `train`, 5% `validation`, 5% `test`, so a file never moves between splits when
others are added. The Python version and the per-split file lists are stored in the dataset's
metadata (`builder.info.metadata`).

Builder configs: `full` (default, every selected file; about 12 MB on CPython 3.11), `tiny`
(a fixed subset, about 300 KB train and 40 KB per evaluation split, for tests) and `site` (the
stdlib plus the installed packages' .py files under `site-packages/`, capped at 160 MB train and
2 MB per evaluation split: over 1e8 byte tokens, for data-pipeline benchmarks; its content depends
on what is installed). Build once with `ensure_built(data_dir)`, then read like any TFDS dataset:
`tfds.data_source('stdlib_corpus/tiny', split='train', data_dir=data_dir)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import pathlib
import platform
import sysconfig
import tokenize
from typing import Iterator

import tensorflow_datasets as tfds
from etils import epath

SPLIT_PERCENT = {"train": 90, "validation": 5, "test": 5}
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                           "__pycache__"})


@dataclasses.dataclass(eq=False)
class StdlibCorpusConfig(tfds.core.BuilderConfig):
    """A builder config; byte caps of 0 keep every file of the split."""

    max_train_bytes: int = 0
    max_eval_bytes: int = 0
    with_site_packages: bool = False  # also the installed packages' .py files


SITE_PREFIX = "site-packages/"


def stdlib_root() -> pathlib.Path:
    """Returns the directory of this interpreter's standard library sources."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _path_hash(rel: str) -> int:
    return int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big")


def split_of(rel: str) -> str:
    """Returns the split ('train' | 'validation' | 'test') of a relative path, by its hash."""
    bucket = _path_hash(rel) % 100
    edge = 0
    for name, pct in SPLIT_PERCENT.items():
        edge += pct
        if bucket < edge:
            return name
    return "test"


def site_root() -> pathlib.Path:
    """Returns the directory of this interpreter's installed pure-Python packages."""
    return pathlib.Path(sysconfig.get_paths()["purelib"])


def source_path(rel: str) -> pathlib.Path:
    """Returns the file a relative corpus path names (SITE_PREFIX: under site_root())."""
    if rel.startswith(SITE_PREFIX):
        return site_root() / rel[len(SITE_PREFIX):]
    return stdlib_root() / rel


def list_files(root: pathlib.Path | None = None, prefix: str = "") -> dict[str, list[str]]:
    """Returns {split: relative POSIX paths (with `prefix`)}, each list in hash order."""
    root = root or stdlib_root()
    out: dict[str, list[str]] = {s: [] for s in SPLIT_PERCENT}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for f in filenames:
            if f.endswith(".py"):
                rel = prefix + (pathlib.Path(dirpath) / f).relative_to(root).as_posix()
                out[split_of(rel)].append(rel)
    for s in out:
        out[s].sort(key=lambda r: (_path_hash(r), r))
    return out


def _read(path: pathlib.Path) -> str:
    try:
        with tokenize.open(path) as f:  # honours PEP 263 coding cookies
            return f.read()
    except (SyntaxError, UnicodeDecodeError):
        return path.read_text(encoding="utf-8", errors="replace")


def _cap(files: list[str], max_bytes: int) -> list[str]:
    if not max_bytes:
        return files
    out, total = [], 0
    for rel in files:  # in hash order, skipping files that would overflow the cap
        size = source_path(rel).stat().st_size
        if total + size <= max_bytes:
            out.append(rel)
            total += size
    return out


class StdlibCorpus(tfds.core.GeneratorBasedBuilder):
    """The Python standard library's .py files as a text corpus (train/validation/test by path hash)."""

    # Plain attribute: TFDS's own lookup of the defining module's path needs the
    # `importlib_resources` backport, which TFDS only declares for Python < 3.9.
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        StdlibCorpusConfig(name="full", description="Every selected stdlib .py file."),
        StdlibCorpusConfig(name="tiny", description="~300 KB train, ~40 KB validation/test.",
                           max_train_bytes=300_000, max_eval_bytes=40_000),
        StdlibCorpusConfig(name="site", description="The stdlib and the installed packages' "
                           ".py files: 160 MB train, 2 MB validation/test (data benchmarks).",
                           max_train_bytes=160_000_000, max_eval_bytes=2_000_000,
                           with_site_packages=True),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "path": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # nothing to download
        cfg = self.builder_config
        files = list_files()
        if cfg.with_site_packages:
            site = list_files(site_root(), SITE_PREFIX)
            files = {s: sorted(fs + site[s], key=lambda r: (_path_hash(r), r))
                     for s, fs in files.items()}
        files = {s: _cap(fs, cfg.max_train_bytes if s == "train" else cfg.max_eval_bytes)
                 for s, fs in files.items()}
        self.info.metadata.update({
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "split_rule": "sha256(relative path) % 100: <90 train, <95 validation, else test",
            "excluded_dirs": sorted(EXCLUDED_DIRS),
            "files": files,
        })
        return {s: self._generate_examples(fs) for s, fs in files.items()}

    def _generate_examples(self, files: list[str]) -> Iterator[tuple[str, dict]]:
        for rel in files:
            yield rel, {"text": _read(source_path(rel)), "path": rel}


@contextlib.contextmanager
def _file_lock(path: pathlib.Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_built(data_dir: str | os.PathLike | None = None, config: str = "full") -> None:
    """Builds `stdlib_corpus/<config>` into `data_dir` (array_record) unless already built."""
    data_dir = str(data_dir) if data_dir else None
    builder = StdlibCorpus(config=config, data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        _warn_if_other_python(builder)
        return
    with _file_lock(pathlib.Path(builder.data_dir_root) / f".stdlib_corpus_{config}.lock"):
        builder = StdlibCorpus(config=config, data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            with _quiet_progress():
                builder.download_and_prepare(file_format="array_record")


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hides TFDS progress bars (a build takes about a second) and restores the setting after."""
    from tensorflow_datasets.core.utils import tqdm_utils

    previous = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(previous)


def _warn_if_other_python(builder: tfds.core.DatasetBuilder) -> None:
    built = builder.info.metadata.get("python_version") if builder.info.metadata else None
    if built and built != platform.python_version():
        logging.warning("stdlib_corpus in %s was built from Python %s's stdlib, not %s",
                        builder.data_dir, built, platform.python_version())
