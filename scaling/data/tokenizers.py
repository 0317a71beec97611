"""Tokenizers: byte-level (default), BPE and SentencePiece trained locally, or a local Hugging Face one.

Every tokenizer maps text to integer ids in [0, vocab_size) and has `pad_id`, `bos_id` and `eos_id`.
Trained tokenizers (`bpe`, `sentencepiece`) learn from the training split of the configured TFDS
dataset and are saved to a file that later runs (and resumed runs) reload instead of retraining:
`data.tokenizer_path` if set, else `<workdir>/tokenizer/<kind>.{json,model}`; with neither, the
tokenizer lives in memory only (cached for the life of the process).
"""

from __future__ import annotations

import abc
import hashlib
import io
import os
import pathlib
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

import ml_collections
import numpy as np

# Byte-level ids: 0..255 are the UTF-8 bytes, then the specials.
BYTE_PAD_ID = 256
BYTE_BOS_ID = 257
BYTE_EOS_ID = 258
BYTE_VOCAB_SIZE = 259

# Trained tokenizers put their specials first.
TRAINED_PAD, TRAINED_BOS, TRAINED_EOS, TRAINED_UNK = "<pad>", "<bos>", "<eos>", "<unk>"

# Trained vocabularies hold all 256 bytes (byte-level BPE / byte fallback) plus specials.
MIN_TRAINED_VOCAB = 264

# Documents used to train a tokenizer: at most this many characters in total (0: the whole split).
DEFAULT_TRAIN_CHARS = 50_000_000


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class Tokenizer(abc.ABC):
    """Text <-> ids; ids lie in [0, vocab_size)."""

    name: str = "tokenizer"

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Returns the number of ids (specials included)."""

    @property
    @abc.abstractmethod
    def pad_id(self) -> int:
        """Returns the padding id."""

    @property
    @abc.abstractmethod
    def bos_id(self) -> int:
        """Returns the beginning-of-sequence id."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int:
        """Returns the end-of-sequence (document separator) id."""

    @abc.abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """Returns the ids of `text` (int32 [n]); no specials are added."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Returns the text of `ids`; special ids are dropped."""

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Returns the ids of each text (int32 arrays)."""
        return [self.encode(t) for t in texts]

    def fingerprint(self) -> str:
        """Returns a short string identifying this tokenizer's mapping (for caches)."""
        return f"{self.name}:{self.vocab_size}"

    def token_bytes(self) -> np.ndarray:
        """Returns the UTF-8 bytes each id stands for (int64 [vocab_size]; 0 for specials).

        Summed over a text's ids this is the text's length in bytes (bits per byte divide by
        it). This default decodes each id alone, which is exact for vocabularies of whole
        characters; tokenizers with byte pieces override it.
        """
        return np.asarray([len(self.decode([i]).encode("utf-8")) for i in range(self.vocab_size)],
                          dtype=np.int64)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, then PAD=256, BOS=257, EOS=258 (vocab 259); needs no files."""

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    @property
    def pad_id(self) -> int:
        return BYTE_PAD_ID

    @property
    def bos_id(self) -> int:
        return BYTE_BOS_ID

    @property
    def eos_id(self) -> int:
        return BYTE_EOS_ID

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        # one conversion for all texts, then views: 2-3x faster than encoding each (a mixture
        # batch's task rows encode a few dozen short texts per training step)
        encoded = [text.encode("utf-8") for text in texts]
        ids = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int32)
        out, start = [], 0
        for e in encoded:
            out.append(ids[start:start + len(e)])
            start += len(e)
        return out

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids_n = np.asarray(ids, dtype=np.int64).reshape(-1)
        ids_n = ids_n[(ids_n >= 0) & (ids_n < 256)]
        return ids_n.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return (np.arange(BYTE_VOCAB_SIZE) < 256).astype(np.int64)


class BPETokenizer(Tokenizer):
    """Byte-level BPE from the `tokenizers` library (specials <pad>=0, <bos>=1, <eos>=2)."""

    name = "bpe"

    def __init__(self, tok: Any):
        """Wraps a trained `tokenizers.Tokenizer` that holds the <pad>, <bos>, <eos> specials."""
        self._tok = tok
        self._pad = tok.token_to_id(TRAINED_PAD)
        self._bos = tok.token_to_id(TRAINED_BOS)
        self._eos = tok.token_to_id(TRAINED_EOS)
        if None in (self._pad, self._bos, self._eos):
            raise ValueError(f"BPE tokenizer lacks one of the specials "
                             f"{[TRAINED_PAD, TRAINED_BOS, TRAINED_EOS]}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        """Returns a byte-level BPE with `vocab_size` ids learned from `texts`."""
        import tokenizers
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[TRAINED_PAD, TRAINED_BOS, TRAINED_EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        """Returns the BPE tokenizer saved at `path` (a tokenizers JSON file)."""
        import tokenizers

        return cls(tokenizers.Tokenizer.from_file(str(path)))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer to `path` (JSON)."""
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                skip_special_tokens=True)

    def fingerprint(self) -> str:
        return f"bpe:{self.vocab_size}:{_digest(self._tok.to_str().encode())}"

    def token_bytes(self) -> np.ndarray:
        # byte-level BPE: every character of a token is one byte (the byte-level alphabet)
        out = np.zeros(self.vocab_size, dtype=np.int64)
        specials = {self._pad, self._bos, self._eos}
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            out[i] = 0 if i in specials else len(token)
        return out


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece (BPE model, byte fallback, identity normalization; pad=0 bos=1 eos=2 unk=3)."""

    name = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "SentencePieceTokenizer":
        """Returns a SentencePiece BPE model with `vocab_size` ids learned from `texts`."""
        import sentencepiece as spm

        buf = io.BytesIO()
        try:
            cls._train(spm, texts, vocab_size, buf)
        except RuntimeError as e:
            if "required_chars" in str(e):
                raise ValueError(
                    f"config.data.tokenizer_vocab_size={vocab_size} is too small for "
                    f"SentencePiece with byte fallback on this corpus ({e})") from None
            raise
        return cls(buf.getvalue())

    @staticmethod
    def _train(spm, texts: Iterable[str], vocab_size: int, buf: io.BytesIO) -> None:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size,
            model_type="bpe", pad_id=0, bos_id=1, eos_id=2, unk_id=3, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, allow_whitespace_only_pieces=True,
            user_defined_symbols=["\n"], max_sentence_length=1 << 20, minloglevel=2,
            num_threads=1, hard_vocab_limit=False,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SentencePieceTokenizer":
        """Returns the SentencePiece model saved at `path` (a .model file)."""
        return cls(pathlib.Path(path).read_bytes())

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model proto to `path`."""
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_bytes(self._proto)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def pad_id(self) -> int:
        return int(self._sp.pad_id())

    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self._sp.eos_id())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(x, dtype=np.int32) for x in self._sp.encode(list(texts))]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    def fingerprint(self) -> str:
        return f"sentencepiece:{self.vocab_size}:{_digest(self._proto)}"

    def token_bytes(self) -> np.ndarray:
        sp, out = self._sp, np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if sp.is_control(i) or sp.is_unknown(i):
                continue
            out[i] = 1 if sp.is_byte(i) else len(sp.id_to_piece(i).replace("\u2581", " ")
                                                   .encode("utf-8"))
        return out


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer loaded from a local directory (never downloads)."""

    name = "hf"

    def __init__(self, path: str | os.PathLike):
        import transformers

        if not pathlib.Path(path).is_dir():
            raise FileNotFoundError(
                f"data.tokenizer_path={str(path)!r}: a Hugging Face tokenizer needs a local "
                "directory (as written by `save_pretrained`)")
        self._path = str(path)
        self._tok = transformers.AutoTokenizer.from_pretrained(self._path, local_files_only=True)
        eos = self._tok.eos_token_id
        if eos is None:
            eos = self._tok.sep_token_id
        if eos is None:
            raise ValueError(f"Hugging Face tokenizer at {self._path!r} has no eos (or sep) token")
        self._eos = int(eos)
        bos = self._tok.bos_token_id
        self._bos = int(bos) if bos is not None else self._eos
        pad = self._tok.pad_token_id
        self._pad = int(pad) if pad is not None else self._eos

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False), dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = self._tok(list(texts), add_special_tokens=False)["input_ids"]
        return [np.asarray(x, dtype=np.int32) for x in out]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                skip_special_tokens=True)

    def fingerprint(self) -> str:
        return f"hf:{self._path}:{self.vocab_size}"

    def token_bytes(self) -> np.ndarray:
        # byte-level vocabularies (GPT-2 style): one character per byte; SentencePiece-style
        # ones: <0xNN> byte pieces are one byte and U+2581 stands for a space
        backend = getattr(self._tok, "backend_tokenizer", None)
        byte_level = backend is not None and type(backend.decoder).__name__ == "ByteLevel"
        special = set(self._tok.all_special_ids)
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i, token in enumerate(self._tok.convert_ids_to_tokens(list(range(self.vocab_size)))):
            if i in special or token is None:
                continue
            if byte_level:
                out[i] = len(token)
            elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                out[i] = 1
            else:
                out[i] = len(token.replace("\u2581", " ").encode("utf-8"))
        return out


# ------------------------------------------------------------------------------------- factory

_MEMORY_CACHE: dict[tuple, Tokenizer] = {}
_LOCK = threading.Lock()
_SUFFIX = {"bpe": "json", "sentencepiece": "model"}


def tokenizer_file(config: ml_collections.ConfigDict, workdir: str | os.PathLike | None
                   ) -> pathlib.Path | None:
    """Returns where a trained tokenizer of `config` is (or will be) saved; None: memory only."""
    d = config.data
    if d.tokenizer_path:
        return pathlib.Path(d.tokenizer_path)
    if d.get("prepared_dir"):  # the tokenizer `scaling data prepare` trained and saved
        return pathlib.Path(d.prepared_dir) / "tokenizer" / f"{d.tokenizer}.{_SUFFIX[d.tokenizer]}"
    if workdir is None:
        return None
    return pathlib.Path(workdir) / "tokenizer" / f"{d.tokenizer}.{_SUFFIX[d.tokenizer]}"


def _training_texts(config: ml_collections.ConfigDict) -> Callable[[], Iterator[str]]:
    """Returns a function yielding the training split's documents (capped in characters)."""
    from scaling.data import text as text_lib

    d = config.data
    cap = int(d.get("tokenizer_train_chars", DEFAULT_TRAIN_CHARS))

    def gen() -> Iterator[str]:
        source = text_lib.open_text_source(d.tfds_name, d.split, d.text_key, d.tfds_data_dir)
        seen = 0
        for i in range(len(source)):
            t = source.text(i)
            if not t:
                continue
            yield t
            seen += len(t)
            if cap and seen >= cap:
                break

    return gen


def make_tokenizer(config: ml_collections.ConfigDict,
                   workdir: str | os.PathLike | None = None) -> Tokenizer:
    """Returns the tokenizer named by config.data.tokenizer (training and saving it if needed)."""
    d = config.data
    kind = d.tokenizer
    if kind == "byte":
        return ByteTokenizer()
    if kind == "hf":
        if not d.tokenizer_path:
            raise ValueError("config.data.tokenizer_path='': data.tokenizer='hf' needs a local "
                             "directory holding a Hugging Face tokenizer")
        return HFTokenizer(d.tokenizer_path)
    if kind not in _SUFFIX:
        raise ValueError(f"config.data.tokenizer={kind!r}: must be one of "
                         "['byte', 'bpe', 'sentencepiece', 'hf']")
    if kind == "sentencepiece":
        try:
            import sentencepiece  # noqa: F401
        except ImportError as e:
            raise ImportError("data.tokenizer='sentencepiece' needs `pip install sentencepiece`"
                              ) from e
    if int(d.tokenizer_vocab_size) < MIN_TRAINED_VOCAB:
        raise ValueError(f"config.data.tokenizer_vocab_size={d.tokenizer_vocab_size}: a trained "
                         f"{kind} tokenizer needs at least {MIN_TRAINED_VOCAB} ids (256 bytes, "
                         "the specials, and some merges)")
    cls = BPETokenizer if kind == "bpe" else SentencePieceTokenizer
    path = tokenizer_file(config, workdir)
    if path is not None and path.exists():
        return cls.load(path)
    if d.get("prepared_dir") and not d.tokenizer_path:
        raise ValueError(f"config.data.prepared_dir={d.prepared_dir!r} holds no {kind} tokenizer "
                         f"({path} is missing); it was prepared with another data.tokenizer")
    key = (kind, d.tfds_name, d.split, d.text_key, d.tfds_data_dir, int(d.tokenizer_vocab_size),
           int(d.get("tokenizer_train_chars", DEFAULT_TRAIN_CHARS)))
    with _LOCK:
        tok = _MEMORY_CACHE.get(key)
        if tok is None:
            tok = cls.train(_training_texts(config)(), int(d.tokenizer_vocab_size))
            _MEMORY_CACHE[key] = tok
    if path is not None:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tok.save(tmp)
        os.replace(tmp, path)
    return tok
