"""Tokenize a TFDS dataset's splits once into ArrayRecord shards with a manifest (`scaling data prepare`).

Each split's documents are cut into contiguous ranges, one shard per range, and the shards are
written by a pool of worker processes in parallel (each opens the dataset and the tokenizer
itself). The directory is written under a temporary name and renamed into place when every shard
and the manifest are on disk, so a killed prepare never leaves a directory that looks finished.
The manifest records the dataset, the tokenizer (name, fingerprint, vocabulary, dtype), and per
split the document and token counts and each shard's records, bytes and SHA-256; `verify` checks
the files against it. The layout and the reading side are in `prepared.py`.
"""

from __future__ import annotations

import copy
from concurrent import futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from scaling.data import prepared as prepared_lib

DEFAULT_RECORD_TOKENS = 16_384
_ENCODE_DOCS = 64  # documents tokenized per call


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One shard to write: documents [lo, hi) of a split into `path`."""

    config_json: str
    split: str
    lo: int
    hi: int
    path: str
    record_tokens: int


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(job: ShardJob) -> dict[str, Any]:
    """Returns {'doc_tokens', 'records', 'bytes', 'sha256'} after writing one shard (a worker)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from scaling.data import text as text_lib
    from scaling.data.tokenizers import make_tokenizer

    config = ml_collections.ConfigDict(json.loads(job.config_json))
    d = config.data
    source = text_lib.open_text_source(d.tfds_name, job.split, d.text_key, d.tfds_data_dir)
    tok = make_tokenizer(config)
    dtype = prepared_lib.token_dtype(tok.vocab_size)
    doc_tokens = np.zeros(job.hi - job.lo, dtype=np.int64)
    records = 0
    # group_size:1 puts each record in its own chunk: reading one row never decodes its neighbours
    writer = ArrayRecordWriter(job.path, "group_size:1")
    try:
        for lo in range(job.lo, job.hi, _ENCODE_DOCS):
            hi = min(job.hi, lo + _ENCODE_DOCS)
            texts = [source.text(i) for i in range(lo, hi)]
            nonempty = [i for i, t in enumerate(texts) if t]
            encoded = tok.encode_batch([texts[i] for i in nonempty]) if nonempty else []
            for i, ids in zip(nonempty, encoded):
                ids = np.asarray(ids, dtype=dtype)
                doc_tokens[lo - job.lo + i] = ids.size
                for start in range(0, ids.size, job.record_tokens):
                    writer.write(ids[start:start + job.record_tokens].tobytes())
                    records += 1
    finally:
        writer.close()
    path = pathlib.Path(job.path)
    return {"doc_tokens": doc_tokens, "records": records, "bytes": path.stat().st_size,
            "sha256": _sha256(path)}


def _tokenizer_for_workers(config: ml_collections.ConfigDict, tmp: pathlib.Path
                           ) -> tuple[ml_collections.ConfigDict, Any]:
    """Returns (config whose tokenizer the workers load, tokenizer); a trained one is saved in tmp."""
    from scaling.data.tokenizers import make_tokenizer, tokenizer_file

    config = copy.deepcopy(config)
    config.data.prepared_dir = ""
    tok = make_tokenizer(config, tmp)  # trains and saves bpe/sentencepiece under tmp/tokenizer/
    if config.data.tokenizer in ("bpe", "sentencepiece") and not config.data.tokenizer_path:
        config.data.tokenizer_path = str(tokenizer_file(config, tmp))
    return config, tok


def prepare(config: ml_collections.ConfigDict, out_dir: str | os.PathLike,
            splits: Sequence[str] | None = None, *, workers: int = 1, shards: int = 0,
            record_tokens: int = DEFAULT_RECORD_TOKENS,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Returns the manifest after tokenizing `splits` of config.data's dataset into `out_dir`.

    splits: default (data.split, data.eval_split); shards: per split, 0 = one per worker (and
    at least one per 2^20 documents); progress(done, total) is called as shards finish."""
    from scaling.data import text as text_lib

    d = config.data
    if d.source == "task":
        raise ValueError("config.data.source='task': task data is generated, not prepared; "
                         "prepare a text dataset (source 'tfds' or 'mixture')")
    out = pathlib.Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise prepared_lib.PreparedDataError(f"--out={out}: exists and is not an empty directory; nothing written "
                         "(prepare into a new directory)")
    if workers < 1 or record_tokens < 1 or shards < 0:
        raise prepared_lib.PreparedDataError(f"workers={workers}, record_tokens={record_tokens}, shards={shards}: "
                         "need workers >= 1, record_tokens >= 1, shards >= 0")
    splits = list(dict.fromkeys(splits or [d.split, d.eval_split]))
    sizes = {s: len(text_lib.open_text_source(d.tfds_name, s, d.text_key, d.tfds_data_dir))
             for s in splits}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        worker_config, tok = _tokenizer_for_workers(config, tmp)
        config_json = worker_config.to_json()
        jobs: list[ShardJob] = []
        for s in splits:
            (tmp / s).mkdir()
            n = sizes[s]
            k = max(1, min(n, shards or max(workers, math.ceil(n / (1 << 20)))))
            bounds = np.linspace(0, n, k + 1).round().astype(int)
            for i in range(k):
                name = f"{s}/tokens-{i:05d}-of-{k:05d}.array_record"
                jobs.append(ShardJob(config_json, s, int(bounds[i]), int(bounds[i + 1]),
                                     str(tmp / name), record_tokens))
        results = _run(jobs, workers, progress)
        manifest = {
            "format": prepared_lib.FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tfds_name": d.tfds_name, "text_key": d.text_key,
            "tokenizer": {"kind": d.tokenizer, "name": tok.name,
                          "fingerprint": tok.fingerprint(), "vocab_size": int(tok.vocab_size),
                          "eos_id": int(tok.eos_id),
                          "dtype": prepared_lib.token_dtype(tok.vocab_size).str},
            "record_tokens": int(record_tokens),
            "splits": {},
        }
        for s in splits:
            mine = [(j, r) for j, r in zip(jobs, results) if j.split == s]
            doc_tokens = np.concatenate([r["doc_tokens"] for _, r in mine])
            np.save(tmp / s / "index.npy", doc_tokens, allow_pickle=False)
            manifest["splits"][s] = {
                "num_docs": int(doc_tokens.size),
                "num_tokens": int(doc_tokens.sum()),
                "stream_tokens": int(np.sum(doc_tokens[doc_tokens > 0] + 1)),
                "index": f"{s}/index.npy",
                "index_sha256": _sha256(tmp / s / "index.npy"),
                "shards": [{"file": str(pathlib.Path(j.path).relative_to(tmp)), "docs": [j.lo, j.hi],
                            "records": r["records"], "bytes": r["bytes"], "sha256": r["sha256"]}
                           for j, r in mine],
            }
        (tmp / prepared_lib.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n",
                                                 encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _run(jobs: list[ShardJob], workers: int, progress: Callable[[int, int], None] | None
         ) -> list[dict[str, Any]]:
    """Returns the results of `jobs` in order, written by `workers` processes (1: this one)."""
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers == 1 or len(jobs) == 1:
        for i, job in enumerate(jobs):
            results[i] = write_shard(job)
            if progress:
                progress(i + 1, len(jobs))
    else:
        # spawn, not fork: the parent may hold JAX/XLA threads, which fork does not copy safely.
        # A process pool executor, not multiprocessing.Pool: a worker that dies fails the
        # prepare (BrokenProcessPool) instead of being replaced forever.
        ctx = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
            pending = {pool.submit(write_shard, job): i for i, job in enumerate(jobs)}
            for done, future in enumerate(futures.as_completed(pending), start=1):
                results[pending[future]] = future.result()
                if progress:
                    progress(done, len(jobs))
    return [r for r in results if r is not None]


def verify(directory: str | os.PathLike) -> list[str]:
    """Returns the problems found (empty: every shard and index matches the manifest's SHA-256)."""
    root = pathlib.Path(directory)
    manifest = prepared_lib.read_manifest(root, field="directory")
    problems = []
    for split, info in manifest["splits"].items():
        files = [(info["index"], info["index_sha256"], None)]
        files += [(s["file"], s["sha256"], s["bytes"]) for s in info["shards"]]
        for rel, sha, size in files:
            path = root / rel
            if not path.exists():
                problems.append(f"{path}: missing")
            elif size is not None and path.stat().st_size != int(size):
                problems.append(f"{path}: {path.stat().st_size} bytes, manifest says {size}")
            elif _sha256(path) != sha:
                problems.append(f"{path}: SHA-256 differs from the manifest (corrupt)")
        if not problems:
            try:
                prepared_lib.PreparedSplit(root, split, manifest)
            except prepared_lib.PreparedDataError as err:
                problems.append(str(err))
    return problems
