"""Reading pre-tokenized text (`scaling data prepare`): the token stream of text.py, from disk.

A prepared directory holds one TFDS dataset's splits tokenized once (see `prepare.py` for how it
is written):

  DIR/manifest.json                                  what was tokenized, with what, and the files
  DIR/<split>/index.npy                              tokens of each document, in dataset order
  DIR/<split>/tokens-00000-of-00004.array_record     ArrayRecord shards, contiguous documents
  DIR/tokenizer/<kind>.<ext>                         a trained tokenizer (bpe / sentencepiece)

A document of n tokens is stored as ceil(n / record_tokens) consecutive records (little-endian
uint16, or uint32 for vocabularies over 65,536 ids); empty documents have none. Records are read
through grain's ArrayRecord source, so only the rows a batch needs are read.

`PreparedStream` is the same token stream as `text.TokenStream` for the same (split, tokenizer,
seed, shuffle): documents in grain's seeded index-shuffle order, each non-empty one followed by
EOS. So a run gives the same batches, and resumes the same, whether its text is tokenized in
memory or read from a prepared directory. What it keeps in memory is the per-document index
(8 bytes a document), the visiting order of the documents it has reached (16 bytes a document)
and a bounded cache of records, never the tokens of the budget.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import threading
from typing import Any

import grain
import numpy as np

from scaling.data.text import sub_seed
from scaling.data.tokenizers import Tokenizer

FORMAT = "scaling.prepared/1"
MANIFEST = "manifest.json"
DEFAULT_CACHE_BYTES = 32 << 20
_ORDER_CHUNK = 4096  # documents added to the visiting order at a time


class PreparedDataError(ValueError):
    """A prepared directory that is missing, corrupt, or does not match the run's config."""


def token_dtype(vocab_size: int) -> np.dtype:
    """Returns the on-disk dtype of token ids for a vocabulary of `vocab_size` ids."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def read_manifest(directory: str | os.PathLike, field: str = "config.data.prepared_dir"
                  ) -> dict[str, Any]:
    """Returns the manifest (dict) of a prepared directory; PreparedDataError naming it if absent."""
    path = pathlib.Path(directory) / MANIFEST
    if not path.exists():
        raise PreparedDataError(f"{field}={str(directory)!r}: no {MANIFEST} there; write the "
                                "directory with `scaling data prepare` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PreparedDataError(f"{path}: not a readable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PreparedDataError(f"{path}: format {got!r}, expected {FORMAT!r}")
    return manifest


def check_matches(manifest: dict[str, Any], directory: str | os.PathLike, tfds_name: str,
                  text_key: str, tokenizer: Tokenizer) -> None:
    """Returns None; PreparedDataError naming the field that differs between config and manifest."""
    field = f"config.data.prepared_dir={str(directory)!r}"
    for name, want in (("tfds_name", tfds_name), ("text_key", text_key)):
        if manifest[name] != want:
            raise PreparedDataError(f"{field} holds {name}={manifest[name]!r}, but "
                                    f"config.data.{name}={want!r}")
    got = manifest["tokenizer"]["fingerprint"]
    if got != tokenizer.fingerprint():
        raise PreparedDataError(
            f"{field} was tokenized with {got!r}, but config.data.tokenizer gives "
            f"{tokenizer.fingerprint()!r}; prepare it again with this config")


class PreparedSplit:
    """One split of a prepared directory: its document index and its shards (checked on open)."""

    def __init__(self, directory: str | os.PathLike, split: str,
                 manifest: dict[str, Any] | None = None):
        self.directory = pathlib.Path(directory)
        manifest = manifest or read_manifest(directory)
        self.name = manifest["tfds_name"]
        self.split = split
        splits = manifest["splits"]
        if split not in splits:
            raise PreparedDataError(
                f"config.data.prepared_dir={str(directory)!r} has no split {split!r} (it has "
                f"{sorted(splits)}); prepare it with `scaling data prepare --splits {split}`")
        info = splits[split]
        self.record_tokens = int(manifest["record_tokens"])
        self.dtype = np.dtype(manifest["tokenizer"]["dtype"])
        index = self.directory / info["index"]
        if not index.exists():
            raise PreparedDataError(f"{index}: missing (the document index of split {split!r})")
        self.doc_tokens = np.load(index, allow_pickle=False)
        if self.doc_tokens.shape != (int(info["num_docs"]),):
            raise PreparedDataError(f"{index}: holds {self.doc_tokens.shape} entries, the "
                                    f"manifest says {info['num_docs']} documents")
        records = np.ceil(self.doc_tokens / self.record_tokens).astype(np.int64)
        self.first_record = np.concatenate([[0], np.cumsum(records)[:-1]]).astype(np.int64)
        self.num_records = int(records.sum())
        self.paths = []
        for shard in info["shards"]:
            path = self.directory / shard["file"]
            if not path.exists():
                raise PreparedDataError(f"{path}: shard missing from the prepared directory")
            size = path.stat().st_size
            if size != int(shard["bytes"]):
                raise PreparedDataError(f"{path}: {size} bytes, the manifest says "
                                        f"{shard['bytes']} (truncated or rewritten shard)")
            self.paths.append(path)
        self.shards = info["shards"]
        if sum(int(s["records"]) for s in self.shards) != self.num_records:
            raise PreparedDataError(f"{self.directory / split}: the shards hold "
                                    f"{sum(int(s['records']) for s in self.shards)} records, the "
                                    f"index needs {self.num_records}")
        self.stream_tokens = int(np.sum(self.doc_tokens[self.doc_tokens > 0] + 1))

    def __len__(self) -> int:
        return len(self.doc_tokens)


class PreparedStream:
    """The token stream of text.TokenStream for (split, tokenizer, seed, shuffle), read from shards."""

    def __init__(self, split: PreparedSplit, tokenizer: Tokenizer, seed: int, shuffle: bool,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.source = split
        self.tokenizer = tokenizer
        self.exhausted = False
        self._eos = int(tokenizer.eos_id)
        self._docs = (grain.MapDataset.range(len(split)).shuffle(seed=sub_seed(seed, 0xD0C5))
                      if shuffle else None)
        self._order = np.zeros(0, dtype=np.int64)  # documents in visiting order (a prefix)
        self._ends = np.zeros(0, dtype=np.int64)  # stream end of each visited document
        self._records = grain.sources.ArrayRecordDataSource([str(p) for p in split.paths])
        self._cache: "collections.OrderedDict[int, np.ndarray]" = collections.OrderedDict()
        self._cache_bytes, self._cached = int(cache_bytes), 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._ends[-1]) if self._ends.size else 0

    @property
    def cache_nbytes(self) -> int:
        """Returns the bytes of records held in the cache (bounded by cache_bytes + one record)."""
        return self._cached

    @property
    def num_docs_read(self) -> int:
        """Returns how many documents the visiting order has reached."""
        return int(self._order.size)

    def _extend(self) -> None:
        n = len(self.source)
        lo = self._order.size
        hi = min(n, lo + max(_ORDER_CHUNK, lo // 4))
        ids = (np.fromiter((self._docs[i] for i in range(lo, hi)), np.int64, hi - lo)
               if self._docs is not None else np.arange(lo, hi, dtype=np.int64))
        tokens = self.source.doc_tokens[ids]
        lengths = np.where(tokens > 0, tokens + 1, 0)
        start = int(self._ends[-1]) if self._ends.size else 0
        self._order = np.concatenate([self._order, ids])
        self._ends = np.concatenate([self._ends, start + np.cumsum(lengths)])
        self.exhausted = hi >= n

    def ensure(self, n: int) -> bool:
        """Returns whether the stream holds at least `n` tokens (extending the visiting order)."""
        with self._lock:
            if n > self.source.stream_tokens:
                while not self.exhausted:
                    self._extend()
                return False
            while len(self) < n:
                self._extend()
            return True

    def total(self) -> int:
        """Returns the number of tokens of the whole split (EOS separators included)."""
        return self.source.stream_tokens

    def _read(self, record_ids: np.ndarray) -> dict[int, np.ndarray]:
        """Returns {record id: tokens} for `record_ids`, from the cache or the shards."""
        out, missing = {}, []
        with self._lock:
            for r in record_ids.tolist():
                hit = self._cache.get(r)
                if hit is None:
                    missing.append(r)
                else:
                    self._cache.move_to_end(r)
                    out[r] = hit
        if missing:
            try:
                blobs = self._records.__getitems__(missing)
            except (RuntimeError, OSError) as err:  # array_record's errors name no file
                raise PreparedDataError(
                    f"{self.source.directory / self.source.split}: cannot read records "
                    f"{missing[:4]}... from its shards ({err}); check them with "
                    "`scaling data verify`") from err
            with self._lock:
                for r, blob in zip(missing, blobs):
                    tokens = np.frombuffer(blob, dtype=self.source.dtype)
                    out[r] = tokens
                    self._cache[r] = tokens
                    self._cached += tokens.nbytes
                while self._cached > self._cache_bytes and len(self._cache) > 1:
                    self._cached -= self._cache.popitem(last=False)[1].nbytes
        return out

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Returns the tokens at stream positions `index` (int32, same shape)."""
        index = np.asarray(index, dtype=np.int64)
        flat = index.reshape(-1)
        if flat.size == 0:
            return np.zeros(index.shape, dtype=np.int32)
        if int(flat.max()) >= len(self):
            raise IndexError(f"token stream holds {len(self)} tokens, asked for {flat.max()}")
        with self._lock:  # one consistent prefix, even while another caller extends it
            ends, order = self._ends, self._order
        pos = np.searchsorted(ends, flat, side="right")
        doc = order[pos]
        n_tokens = self.source.doc_tokens[doc]
        offset = flat - (ends[pos] - (n_tokens + 1))
        out = np.full(flat.shape, self._eos, dtype=np.int32)
        body = offset < n_tokens
        rt = self.source.record_tokens
        record = self.source.first_record[doc[body]] + offset[body] // rt
        within = offset[body] % rt
        unique, inverse = np.unique(record, return_inverse=True)
        blobs = self._read(unique)
        values = np.empty(record.shape, dtype=np.int32)
        for k, r in enumerate(unique.tolist()):
            m = inverse == k
            tokens = blobs[r]
            if int(within[m].max()) >= tokens.size:
                raise PreparedDataError(f"{self.source.directory / self.source.split}: record "
                                        f"{r} holds {tokens.size} tokens, fewer than the index "
                                        "says; check it with `scaling data verify`")
            values[m] = tokens[within[m]]
        out[body] = values
        return out.reshape(index.shape)

    def get(self, start: int, stop: int) -> np.ndarray:
        """Returns tokens [start, stop) of the stream (int32)."""
        return self.gather(np.arange(start, stop, dtype=np.int64))


_SPLITS: dict[tuple[str, str], PreparedSplit] = {}
_STREAMS: "collections.OrderedDict[tuple, PreparedStream]" = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_MAX_STREAMS = 6


def open_stream(directory: str | os.PathLike, split: str, tfds_name: str, text_key: str,
                tokenizer: Tokenizer, seed: int, shuffle: bool) -> PreparedStream:
    """Returns the (process-cached) prepared token stream of a split in the order of `seed`."""
    directory = str(pathlib.Path(directory).absolute())
    manifest = read_manifest(directory)
    check_matches(manifest, directory, tfds_name, text_key, tokenizer)
    key = (directory, split, manifest["created"], tokenizer.fingerprint(), int(seed),
           bool(shuffle))
    with _CACHE_LOCK:
        stream = _STREAMS.get(key)
        if stream is not None:
            _STREAMS.move_to_end(key)
            return stream
        prepared = _SPLITS.get((directory, split))
    if prepared is None or prepared.shards != manifest["splits"].get(split, {}).get("shards"):
        prepared = PreparedSplit(directory, split, manifest)
    stream = PreparedStream(prepared, tokenizer, seed, shuffle)
    with _CACHE_LOCK:
        _SPLITS[(directory, split)] = prepared
        stream = _STREAMS.setdefault(key, stream)
        while len(_STREAMS) > _MAX_STREAMS:
            _STREAMS.popitem(last=False)
    return stream


def clear_cache() -> None:
    """Drops the process-wide cache of prepared splits and streams."""
    with _CACHE_LOCK:
        _SPLITS.clear()
        _STREAMS.clear()

