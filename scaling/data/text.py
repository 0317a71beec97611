"""Text from any TFDS dataset, packed into fixed-length rows with a nested (budget-prefix) order.

Token stream. The documents of a split are put in a seeded order (grain's index shuffle of the
document indices; original order if data.shuffle is False), tokenized, each followed by one EOS,
and concatenated into one token stream S. Empty documents are skipped. The stream depends only on
(dataset, split, text_key, tokenizer, seed, shuffle), never on the model or the budget, and it is
built lazily: only the prefix a run needs is read and tokenized. `prepared.PreparedStream` is the
same stream read from shards that `scaling data prepare` tokenized once.

Rows. Row u is S[u*T : u*T + T + 1] for T = data.seq_len: consecutive rows overlap by one token,
so every stream token after the first is a target exactly once; inputs = row[:-1],
targets = row[1:]. A budget of data.num_tokens unique tokens is the first R rows, R being
num_tokens / T rounded up to whole global batches (R*T target tokens, at most one batch more
than asked), so that every epoch is whole batches and a run of config.train_steps steps with
epochs = 1 sees exactly its unique rows; num_tokens = 0 takes every full row of the split.

Order (nested budgets). Global row g (counting over the whole run) is position g of one fixed,
budget-independent visiting order of the stream's rows during the first epoch (g < R), so for a
fixed seed a run with budget D1 < D2 sees exactly a prefix of what the D2 run sees, whatever the
model. That order walks the stream in windows of W = data.shuffle_window_tokens / T rows and
visits each window's rows in a seeded permutation (W = 0 or data.shuffle False: stream order).
Without it consecutive batches of a small batch come from one long document, and the loss of
every run of a sweep rises and falls together with the content of the stream (measured on the
stdlib corpus at 16 x 64 tokens per step: validation loss up 0.2-1.6 nats at the same steps in
every run). The R unique rows are then the first R positions of that order (a prefix of it, all
in the first ceil(R / W) windows). Later epochs (data.epochs > 1) repeat the same R rows, each
epoch in its own seeded permutation of the R positions (identity if data.shuffle is False). Rows
never straddle epochs, so the unique-token budget is honoured exactly.
"""

from __future__ import annotations

import collections
import difflib
import math
import threading
from typing import Any, Protocol, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from scaling.data.tokenizers import Tokenizer

STDLIB_NAME = "stdlib_corpus"
_DOCS_PER_CHUNK = 64


def sub_seed(seed: int, salt: int) -> int:
    """Returns a 32-bit seed derived from (seed, salt)."""
    from scaling.data.tasks.base import splitmix64

    mixed = splitmix64(np.array([(int(seed) & 0xFFFFFFFFFFFF) * 1_000_003 + salt], np.uint64))
    return int(mixed[0] & np.uint64(0xFFFFFFFF))


def _as_str(x: Any) -> str:
    if isinstance(x, (bytes, np.bytes_)):
        return bytes(x).decode("utf-8", errors="replace")
    if isinstance(x, np.ndarray) and x.shape == ():
        return _as_str(x.item())
    return str(x)


class TextSource(Sequence[str]):
    """Random access to the texts (str) of one split of a TFDS dataset."""

    def __init__(self, source: Sequence[dict], text_key: str, name: str, split: str):
        self._source = source
        self.text_key = text_key
        self.name = name
        self.split = split

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return _as_str(self._source[int(i)][self.text_key])

    def text(self, i: int) -> str:
        """Returns the text of document `i`."""
        return self[i]


def _not_found(name: str) -> ValueError:
    base = name.split("/")[0].split(":")[0]
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(base, known, n=5)
    hint = f" Did you mean one of {close}?" if close else ""
    return ValueError(f"config.data.tfds_name={name!r}: no TFDS dataset of that name.{hint}")


def open_text_source(name: str, split: str, text_key: str, data_dir: str | None) -> TextSource:
    """Returns the texts of `split` of TFDS dataset `name`, read through `tfds.data_source`."""
    data_dir = data_dir or None
    if name.split("/")[0].split(":")[0] == STDLIB_NAME:
        from scaling.data.corpora import stdlib_corpus

        parts = name.split(":")[0].split("/")
        stdlib_corpus.ensure_built(data_dir, parts[1] if len(parts) > 1 else "full")
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise _not_found(name) from None
    except ValueError as e:
        if "split" in str(e).lower():
            raise ValueError(f"config.data.split/eval_split={split!r}: dataset {name!r} has no "
                             f"such split ({e})") from None
        raise
    except (NotImplementedError, FileNotFoundError, AssertionError) as e:
        raise ValueError(
            f"config.data.tfds_name={name!r}: not prepared for random access in data_dir="
            f"{data_dir or '(TFDS default)'}; prepare it offline with file_format='array_record' "
            f"(e.g. `tfds build {name} --file_format=array_record`). Cause: {e}") from None
    if len(source) == 0:
        raise ValueError(f"config.data.tfds_name={name!r}: split {split!r} is empty (0 documents)")
    first = source[0]
    if not isinstance(first, dict) or text_key not in first:
        keys = sorted(first) if isinstance(first, dict) else type(first).__name__
        raise ValueError(f"config.data.text_key={text_key!r}: dataset {name!r} has no such "
                         f"feature; available keys: {keys}")
    return TextSource(source, text_key, name, split)


class TokenStream:
    """The split's documents in seeded order, tokenized and EOS-separated, built lazily (thread-safe)."""

    def __init__(self, source: TextSource, tokenizer: Tokenizer, seed: int, shuffle: bool):
        self.source = source
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        docs = grain.MapDataset.source(source)
        if shuffle:
            docs = docs.shuffle(seed=sub_seed(seed, 0xD0C5))
        self._docs = docs
        n_chunks = math.ceil(len(source) / _DOCS_PER_CHUNK)
        chunks = grain.MapDataset.range(n_chunks).map(self._encode_chunk)
        self._chunks = iter(chunks.to_iter_dataset(
            grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))
        dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
        self._buf = np.zeros(1 << 16, dtype=dtype)
        self._len = 0
        self.exhausted = False
        self.num_docs_read = 0

    def _encode_chunk(self, c: int) -> tuple[np.ndarray, int]:
        lo = c * _DOCS_PER_CHUNK
        hi = min(len(self.source), lo + _DOCS_PER_CHUNK)
        texts = [t for t in (self._docs[i] for i in range(lo, hi)) if t]
        eos = np.array([self.tokenizer.eos_id], dtype=np.int64)
        parts = []
        for ids in self.tokenizer.encode_batch(texts) if texts else []:
            if len(ids):
                parts.append(np.asarray(ids, dtype=np.int64))
                parts.append(eos)
        tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return tokens, hi - lo

    def _append(self, tokens: np.ndarray) -> None:
        need = self._len + tokens.size
        if need > self._buf.size:
            new = np.zeros(max(need, 2 * self._buf.size), dtype=self._buf.dtype)
            new[:self._len] = self._buf[:self._len]
            self._buf = new
        self._buf[self._len:need] = tokens
        self._len = need

    def ensure(self, n: int) -> bool:
        """Returns whether the stream holds at least `n` tokens (tokenizing more if needed)."""
        with self._lock:
            while self._len < n and not self.exhausted:
                try:
                    tokens, ndocs = next(self._chunks)
                except StopIteration:
                    self.exhausted = True
                    break
                self._append(tokens)
                self.num_docs_read += ndocs
            return self._len >= n

    def total(self) -> int:
        """Returns the number of tokens of the whole split (EOS separators included)."""
        self.ensure(np.iinfo(np.int64).max)
        return self._len

    def __len__(self) -> int:
        return self._len

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Returns the tokens at `index` (int32, same shape); they must already be ensured."""
        if index.size and int(index.max()) >= self._len:
            raise IndexError(f"token stream holds {self._len} tokens, asked for {index.max()}")
        return self._buf[index].astype(np.int32)

    def get(self, start: int, stop: int) -> np.ndarray:
        """Returns tokens [start, stop) of the stream (int32); they must already be ensured."""
        if stop > self._len:
            raise IndexError(f"token stream holds {self._len} tokens, asked for [{start}, {stop})")
        return self._buf[start:stop].astype(np.int32)


_STREAMS: "collections.OrderedDict[tuple, TokenStream]" = collections.OrderedDict()
_STREAMS_LOCK = threading.Lock()
_MAX_STREAMS = 6


def token_stream(name: str, split: str, text_key: str, data_dir: str, tokenizer: Tokenizer,
                 seed: int, shuffle: bool) -> TokenStream:
    """Returns the (process-cached) token stream of a split in the order of `seed`."""
    key = (name, split, text_key, data_dir or "", tokenizer.fingerprint(), int(seed), bool(shuffle))
    with _STREAMS_LOCK:
        stream = _STREAMS.get(key)
        if stream is not None:
            _STREAMS.move_to_end(key)
            return stream
    source = open_text_source(name, split, text_key, data_dir)
    stream = TokenStream(source, tokenizer, seed, shuffle)
    with _STREAMS_LOCK:
        stream = _STREAMS.setdefault(key, stream)
        while len(_STREAMS) > _MAX_STREAMS:
            _STREAMS.popitem(last=False)
    return stream


def clear_cache() -> None:
    """Drops the process-wide cache of token streams."""
    with _STREAMS_LOCK:
        _STREAMS.clear()


class RowOrder:
    """Maps a global row index to a stream row: epoch 0 walks the stream window by window, each
    window's rows in a seeded permutation (stream order for window 0); later epochs visit the
    same rows in their own seeded permutations."""

    def __init__(self, num_rows: int, seed: int, reshuffle: bool, window: int = 0,
                 limit_rows: int | None = None):
        if num_rows <= 0:
            raise ValueError(f"RowOrder needs at least one row, got {num_rows}")
        self.num_rows = int(num_rows)
        self.seed = int(seed)
        self.reshuffle = bool(reshuffle)
        self.window = int(window) if reshuffle else 0
        # rows available to the first-epoch windows: the last window is cut only where the
        # stream ends (never by the budget, so that nested budgets share one order)
        self.limit_rows = int(limit_rows if limit_rows is not None else num_rows)
        if self.limit_rows < self.num_rows:
            raise ValueError(f"RowOrder: limit_rows={limit_rows} < num_rows={num_rows}")
        self._perms: "collections.OrderedDict[tuple[str, int], np.ndarray]" = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def _perm(self, kind: str, index: int, size: int) -> np.ndarray:
        with self._lock:
            key = (kind, index)
            p = self._perms.get(key)
            if p is None:
                salt = 0xE90C if kind == "epoch" else 0xB10C
                p = np.random.default_rng([sub_seed(self.seed, salt), index]).permutation(size)
                self._perms[key] = p
                while len(self._perms) > 8:
                    self._perms.popitem(last=False)
            return p

    def first_epoch(self, pos_n: np.ndarray) -> np.ndarray:
        """Returns the stream row (int64) visited at each first-epoch position."""
        pos_n = np.asarray(pos_n, dtype=np.int64)
        if self.window <= 0:
            return pos_n.copy()
        w = self.window
        block_n, offset_n = np.divmod(pos_n, w)
        out = np.empty_like(pos_n)
        for b in np.unique(block_n):
            size = min(w, self.limit_rows - int(b) * w)
            m = block_n == b
            out[m] = int(b) * w + self._perm("window", int(b), size)[offset_n[m]]
        return out

    def __call__(self, rows_g: np.ndarray) -> np.ndarray:
        """Returns the stream row (int64, same shape) of each global row index."""
        rows_g = np.asarray(rows_g, dtype=np.int64)
        epoch_g, pos_g = np.divmod(rows_g, self.num_rows)
        if self.reshuffle:
            for e in np.unique(epoch_g):
                if e == 0:
                    continue
                m = epoch_g == e
                pos_g[m] = self._perm("epoch", int(e), self.num_rows)[pos_g[m]]
        return self.first_epoch(pos_g)


class Stream(Protocol):
    """What packing needs of a token stream: TokenStream here, or prepared.PreparedStream."""

    source: Any  # has .name and .split
    tokenizer: Tokenizer

    def __len__(self) -> int: ...

    def ensure(self, n: int) -> bool: ...

    def total(self) -> int: ...

    def gather(self, index: np.ndarray) -> np.ndarray: ...

    def get(self, start: int, stop: int) -> np.ndarray: ...


class PackedText:
    """Rows of seq_len + 1 tokens over the first `num_rows` rows of a token stream."""

    def __init__(self, stream: Stream, seq_len: int, num_tokens: int, *, row_multiple: int = 1,
                 what: str = ""):
        self.stream = stream
        self.seq_len = int(seq_len)
        t = self.seq_len
        src = stream.source
        what = what or f"split {src.split!r} of {src.name!r}"
        if num_tokens > 0:
            self.num_rows = math.ceil(num_tokens / (t * row_multiple)) * row_multiple
            if not stream.ensure(self.num_rows * t + 1):
                total = len(stream)
                raise ValueError(
                    f"config.data.num_tokens={num_tokens}: {what} holds only {total} tokens with "
                    f"tokenizer {stream.tokenizer.name!r} (EOS separators included), i.e. at most "
                    f"{max(0, (total - 1) // t) * t} unique training tokens at seq_len={t} "
                    f"(budgets are rounded up to whole batches of {row_multiple} rows: "
                    f"{self.num_rows * t} here); lower data.num_tokens")
        else:
            total = stream.total()
            self.num_rows = max(0, (total - 1) // t)
        if self.num_rows == 0:
            raise ValueError(f"{what} is empty or too short: it holds {len(stream)} tokens, "
                             f"fewer than data.seq_len + 1 = {t + 1}")

    def window_limit(self, window: int) -> int:
        """Returns the rows the first-epoch windows of `window` rows may draw from: the budget's
        rows rounded up to whole windows, or fewer where the stream ends (tokenizes that far)."""
        if window <= 0:
            return self.num_rows
        want = math.ceil(self.num_rows / window) * window
        if self.stream.ensure(want * self.seq_len + 1):
            return want
        return max(self.num_rows, (len(self.stream) - 1) // self.seq_len)

    @property
    def num_unique_tokens(self) -> int:
        """Returns the number of unique target tokens in the rows (num_rows * seq_len)."""
        return self.num_rows * self.seq_len

    def rows(self, unique_n: np.ndarray) -> np.ndarray:
        """Returns rows (int32 [n, seq_len + 1]) for unique row indices."""
        t = self.seq_len
        starts_n = np.asarray(unique_n, dtype=np.int64) * t
        return self.stream.gather(starts_n[:, None] + np.arange(t + 1))

    def windows(self, unique_n: np.ndarray, in_budget: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Returns (windows int32 [n, 2*seq_len + 1], max crop offset int32 [n]) for random crops.

        A row's window extends into the next stream row only when that row is one of the budget's
        rows (`in_budget[u + 1]`, a boolean mask over stream rows; None: the first num_rows)."""
        t = self.seq_len
        out = np.empty((len(unique_n), 2 * t + 1), dtype=np.int32)
        max_off = np.zeros(len(unique_n), dtype=np.int32)
        for i, u in enumerate(np.asarray(unique_n, dtype=np.int64)):
            u = int(u)
            nxt = u + 1
            inside = (nxt < self.num_rows if in_budget is None
                      else nxt < len(in_budget) and bool(in_budget[nxt]))
            if inside:  # the window stays inside the budget's rows
                out[i] = self.stream.get(u * t, u * t + 2 * t + 1)
                max_off[i] = t
            else:
                out[i, :t + 1] = self.stream.get(u * t, u * t + t + 1)
                out[i, t + 1:] = self.stream.tokenizer.pad_id
        return out, max_off
