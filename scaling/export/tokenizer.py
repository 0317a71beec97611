"""The run's tokenizer as Hugging Face tokenizer files, where it can be expressed exactly.

- byte (ids 0..255 = UTF-8 bytes, then <pad>, <bos>, <eos>): a byte-level BPE with no merges whose
  vocabulary maps each byte's byte-level character to the byte's value, plus the three specials
  at 256..258 — the same ids for every text.
- bpe: the run's own `tokenizers` JSON file.
- hf: the run's Hugging Face tokenizer directory, saved again.
- sentencepiece: not written (HF's SentencePiece conversions assume settings, such as a dummy
  prefix, that the run's model does not use); `write_tokenizer` says so.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import ml_collections

from scaling.data import tokenizers as tok_lib

if TYPE_CHECKING:
    import tokenizers


def byte_level_alphabet() -> dict[int, str]:
    """Returns {byte: character} of the byte-level (GPT-2) alphabet the `tokenizers` library uses."""
    # Spelled out: `tokenizers` exposes this alphabet only unordered (ByteLevel.alphabet()) and
    # transformers 5 no longer exports GPT-2's bytes_to_unicode; the test round-trips all bytes.
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer_object() -> "tokenizers.Tokenizer":
    """Returns a `tokenizers.Tokenizer` giving the project's byte-level ids (specials 256..258)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in byte_level_alphabet().items()}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = [tok_lib.TRAINED_PAD, tok_lib.TRAINED_BOS, tok_lib.TRAINED_EOS]
    tok.add_special_tokens(specials)
    got = [tok.token_to_id(s) for s in specials]
    want = [tok_lib.BYTE_PAD_ID, tok_lib.BYTE_BOS_ID, tok_lib.BYTE_EOS_ID]
    if got != want:
        raise RuntimeError(f"byte tokenizer specials got ids {got}, expected {want}")
    return tok


def write_tokenizer(config: ml_collections.ConfigDict, run_dir: str | pathlib.Path,
                    out_dir: str | pathlib.Path) -> str:
    """Returns a sentence saying which tokenizer files were written to out_dir (or why none)."""
    import transformers

    d = config.data
    if config.model.kind != "transformer" or d.source == "task":
        return ("tokenizer: not written (the run trains on a synthetic task's own token ids, "
                "not on text)")
    kind = d.tokenizer
    specials = {"pad_token": tok_lib.TRAINED_PAD, "bos_token": tok_lib.TRAINED_BOS,
                "eos_token": tok_lib.TRAINED_EOS}
    if kind == "byte":
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer_object(),
                                                    **specials)
    elif kind == "bpe":
        path = tok_lib.tokenizer_file(config, run_dir)
        if path is None or not path.exists():
            raise FileNotFoundError(f"{path}: the run's BPE tokenizer file is missing "
                                    "(data.tokenizer_path or <run>/tokenizer/bpe.json)")
        fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), **specials)
    elif kind == "hf":
        fast = transformers.AutoTokenizer.from_pretrained(d.tokenizer_path, local_files_only=True)
    else:
        return (f"tokenizer: not written (data.tokenizer={kind!r} has no exact Hugging Face "
                "equivalent here; encode text with the run's own tokenizer)")
    fast.model_max_length = int(config.model.max_seq_len)
    fast.save_pretrained(str(out_dir))
    return f"tokenizer: {kind} written as Hugging Face tokenizer files"


def special_ids(config: ml_collections.ConfigDict, run_dir: str | pathlib.Path) -> dict[str, int]:
    """Returns {"pad", "bos", "eos": id} of the run's tokenizer ({} for synthetic-task runs)."""
    if config.model.kind != "transformer" or config.data.source == "task":
        return {}
    path = tok_lib.tokenizer_file(config, run_dir) if config.data.tokenizer in (
        "bpe", "sentencepiece") else None
    if path is not None and not path.exists():
        raise FileNotFoundError(f"{path}: the run's {config.data.tokenizer} tokenizer file is "
                                "missing")
    tok = tok_lib.make_tokenizer(config, run_dir)
    return {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id}
