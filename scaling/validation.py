"""Config validation: every check `scaling.config.validate` runs, each naming the field it rejects.

Order: the field set (unknown or missing fields, against `default_config()`), the types of the
leaves, the enums, the numeric domain of every field whose domain is known (finite, in range), the
model/data consistency (heads, lengths), then the mesh; `check_vocab` compares an explicit
model.vocab_size with the tokenizer or task where a config meets its data.
All of it is pure and cheap: nothing is compiled, no data is read (the tokenizer or task is only
asked for its vocabulary size when that needs no file).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Iterator

import ml_collections

from scaling.config import (CUDNN_ATTENTION_DTYPES, CUDNN_MAX_HEAD_DIM,
                            CUDNN_MAX_HEAD_DIM_PRE_HOPPER, ENUMS, FREE_FORM_FIELDS, MESH_AXES,
                            ConfigError, d_ff, default_config, head_dim, mesh_shape, n_kv_heads)

INF = math.inf


@dataclasses.dataclass(frozen=True)
class Domain:
    """The allowed values of a numeric field: lo..hi, each end open or closed, always finite."""

    lo: float = -INF
    hi: float = INF
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def contains(self, v: Any) -> bool:
        """Returns True if `v` is a finite number (an integer if required) within the bounds."""
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if self.integer and not float(v).is_integer():
            return False
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below

    def describe(self) -> str:
        """Returns the domain in words, e.g. 'must be a finite number in [0, 1)'."""
        kind = "an integer" if self.integer else "a finite number"
        if self.hi == INF:
            if self.lo == 0 and self.lo_open:
                return f"must be {kind} > 0"
            return f"must be {kind} {'>' if self.lo_open else '>='} {self.lo:g}"
        hi = int(self.hi) if float(self.hi).is_integer() else self.hi
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        return f"must be {kind} in {left}{self.lo:g}, {hi}{right}"


POSITIVE = Domain(0, INF, lo_open=True)
NON_NEGATIVE = Domain(0)
UNIT_OPEN = Domain(0, 1, hi_open=True)  # [0, 1)
UNIT = Domain(0, 1)  # [0, 1]
COUNT = Domain(1, integer=True)  # 1, 2, ...
NON_NEGATIVE_INT = Domain(0, integer=True)

# The numeric domain of every field that always has one (kind-specific ones are checked below).
DOMAINS: dict[str, Domain] = {
    "seed": Domain(0, 2**32 - 1, integer=True),
    "model.vocab_size": NON_NEGATIVE_INT,
    "model.vocab_multiple": COUNT,
    "model.mup_base_head_dim": NON_NEGATIVE_INT,
    "model.embed_dropout": UNIT_OPEN,
    "model.attn_dropout": UNIT_OPEN,
    "model.resid_dropout": UNIT_OPEN,
    "model.input_dim": NON_NEGATIVE_INT,
    "model.num_classes": NON_NEGATIVE_INT,
    "data.tokenizer_train_chars": NON_NEGATIVE_INT,
    "data.seq_len": COUNT,
    "data.num_tokens": NON_NEGATIVE_INT,
    "data.shuffle_window_tokens": NON_NEGATIVE_INT,
    "data.epochs": POSITIVE,
    "data.prefetch": NON_NEGATIVE_INT,
    "data.eval_batch_size": NON_NEGATIVE_INT,
    "data.task.mix_rate": UNIT,
    "data.task.num_examples": NON_NEGATIVE_INT,
    "data.augment.token_substitution": UNIT_OPEN,
    "data.augment.span_mask": UNIT_OPEN,
    "data.augment.span_length": COUNT,
    "train.batch_size": COUNT,
    "train.microbatches": COUNT,
    "train.z_loss": NON_NEGATIVE,
    "train.label_smoothing": UNIT_OPEN,
    "train.log_every": COUNT,
    "train.eval_every": NON_NEGATIVE_INT,
    "train.peak_flops": NON_NEGATIVE,
    "train.max_skipped_steps": NON_NEGATIVE_INT,
    "train.max_rewinds": NON_NEGATIVE_INT,
    "train.rewind_lr_factor": Domain(0, 1, lo_open=True, hi_open=True),
    "optim.lr": POSITIVE,
    "optim.b1": UNIT_OPEN,
    "optim.b2": UNIT_OPEN,
    "optim.eps": NON_NEGATIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.clip_norm": NON_NEGATIVE,
    "optim.warmup_steps": NON_NEGATIVE_INT,
    "optim.final_lr_frac": UNIT,
    "optim.wsd_decay_frac": Domain(0, 1, lo_open=True),
    "prune.sparsity": UNIT_OPEN,
    "prune.start_step": NON_NEGATIVE_INT,
    "prune.end_step": NON_NEGATIVE_INT,
    "prune.every": COUNT,
    "distill.temperature": POSITIVE,
    "distill.mix": UNIT,
    "finetune.lora_rank": NON_NEGATIVE_INT,
    "finetune.lora_alpha": POSITIVE,
    "checkpoint.log_max": COUNT,
    "checkpoint.every": NON_NEGATIVE_INT,
    "checkpoint.max_to_keep": NON_NEGATIVE_INT,
}
TRANSFORMER_DOMAINS: dict[str, Domain] = {
    "model.d_model": COUNT,
    "model.n_layers": COUNT,
    "model.n_heads": COUNT,
    "model.n_kv_heads": NON_NEGATIVE_INT,
    "model.head_dim": NON_NEGATIVE_INT,
    "model.d_ff": NON_NEGATIVE_INT,
    "model.scan_unroll": NON_NEGATIVE_INT,
    "model.max_seq_len": COUNT,
    "model.norm_eps": POSITIVE,
    "model.rope_theta": POSITIVE,
    "model.init_std": POSITIVE,
    "model.mup_output_mult": POSITIVE,
}
MLP_DOMAINS: dict[str, Domain] = {
    "model.mlp_width": COUNT,
    "model.mlp_depth": COUNT,
    "model.init_std": POSITIVE,
}


def check(cond: bool, field: str, value: Any, why: str) -> None:
    """Returns None; raises ConfigError(field, value, why) unless `cond`."""
    if not cond:
        raise ConfigError(field, value, why)


def get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """Returns the value of the dotted field (e.g. 'optim.lr') of `config`."""
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _leaves(tree: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted in FREE_FORM_FIELDS:
            continue
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Returns None; raises ConfigError for a field `default_config()` does not declare (a typo,
    wherever it was set: flag, config file or config.json), a missing field, or a wrong type."""
    defaults = dict(_leaves(default_config()))
    given = dict(_leaves(config))
    known = set(defaults) | {f.rsplit(".", 1)[0] for f in defaults} | \
        {".".join(f.split(".")[:i]) for f in defaults for i in range(1, f.count(".") + 1)}
    for field, value in given.items():
        if field in defaults:
            continue
        parts = field.split(".")  # name the outermost unknown name (a group or a leaf)
        field = next(".".join(parts[:i]) for i in range(1, len(parts) + 1)
                     if ".".join(parts[:i]) not in known)
        value = get(config, field)
        if isinstance(value, ml_collections.ConfigDict):
            value = value.to_dict()
        parent, _, leaf = field.rpartition(".")
        siblings = sorted(f.rpartition(".")[2] for f in known if f.rpartition(".")[0] == parent)
        close = difflib.get_close_matches(leaf, siblings, n=1)
        prefix = f"{parent}." if parent else ""
        hint = f"did you mean {prefix}{close[0]}?" if close else \
            f"{'config.' + parent if parent else 'the config'} has {siblings}"
        raise ConfigError(field, value, f"unknown field (not in default_config()); {hint}")
    for field, default in defaults.items():
        if field not in given:
            raise ConfigError(field, None, "missing; start config files from default_config()")
        value = given[field]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True
        check(ok, field, value, f"must be of type {type(default).__name__}")


def check_domains(config: ml_collections.ConfigDict, domains: dict[str, Domain]) -> None:
    """Returns None; raises ConfigError for the first field outside its domain."""
    for field, domain in domains.items():
        v = get(config, field)
        check(domain.contains(v), field, v, domain.describe())


def _check_attention_impl(m: ml_collections.ConfigDict, seq_len: int) -> None:
    if m.attention_impl == "einsum":
        return
    check(m.attn_dropout == 0, "model.attn_dropout", m.attn_dropout,
          f"model.attention_impl={m.attention_impl!r} (fused) has no attention dropout; "
          "use 'einsum' or set it to 0")
    if m.attention_impl == "cudnn":
        check(m.dtype in CUDNN_ATTENTION_DTYPES, "model.dtype", m.dtype,
              f"model.attention_impl='cudnn' needs one of {list(CUDNN_ATTENTION_DTYPES)}")
        k = head_dim(m)
        check(k % 8 == 0 and k <= CUDNN_MAX_HEAD_DIM, "model.head_dim", k,
              f"model.attention_impl='cudnn' needs a multiple of 8 that is "
              f"<= {CUDNN_MAX_HEAD_DIM} (<= {CUDNN_MAX_HEAD_DIM_PRE_HOPPER} before Hopper)")
        check(seq_len % 2 == 0, "data.seq_len", seq_len,
              "model.attention_impl='cudnn' needs an even length (cuDNN's backward pass)")


def data_vocab_size(config: ml_collections.ConfigDict) -> tuple[int, str] | None:
    """Returns (ids the data can hold, what they come from) when known without files, else None.

    Task sources: the task's vocabulary; text: the byte tokenizer's 259 ids or a trained BPE /
    SentencePiece size. A saved or Hugging Face tokenizer is only known once loaded (None)."""
    d = config.data
    if d.source == "task":
        from scaling.data import tasks

        params = d.task.params.to_dict()
        try:
            task = tasks.make_task(d.task.name, params)
        except (TypeError, ValueError) as err:  # the task rejects one of its knobs
            raise ConfigError("data.task.params", params, str(err)) from None
        return int(task.vocab_size), f"task {d.task.name!r}"
    from scaling.data import tokenizers

    if d.tokenizer == "byte":
        return tokenizers.BYTE_VOCAB_SIZE, "the byte tokenizer"
    if d.tokenizer in ("bpe", "sentencepiece") and not d.tokenizer_path:
        return int(d.tokenizer_vocab_size), \
            f"the trained {d.tokenizer} tokenizer (data.tokenizer_vocab_size)"
    return None


def check_vocab(config: ml_collections.ConfigDict) -> None:
    """Returns None; raises ConfigError if an explicit model.vocab_size cannot hold the data's ids.

    Run where a config meets its data (the `train` command, sweep expansion, the sweep worker),
    not in `validate`: unit tests build models of any vocabulary and feed them synthetic ids."""
    m = config.model
    if m.kind != "transformer" or m.vocab_size <= 0:
        return
    need = data_vocab_size(config)
    if need is not None:
        check(m.vocab_size >= need[0], "model.vocab_size", m.vocab_size,
              f"is smaller than the {need[0]} ids of {need[1]}; ids beyond the embedding table "
              "would be silently wrong (0: size it from the data)")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Returns None; raises ConfigError naming the first invalid field and its value."""
    check_fields(config)
    for field, allowed in ENUMS.items():
        v = get(config, field)
        check(v in allowed, field, v, f"must be one of {list(allowed)}")
    check_domains(config, DOMAINS)
    m, d, t = config.model, config.data, config.train
    if d.num_tokens == 0:
        check_domains(config, {"train.num_steps": COUNT})
    check(d.source == "tfds" or bool(d.task.name), "data.task.name", d.task.name,
          f"data.source={d.source!r} needs a task")
    if d.task.name:
        from scaling.data import tasks

        check(d.task.name in tasks.TASKS, "data.task.name", d.task.name,
              f"unknown task; known: {sorted(tasks.TASKS)}")
    check(t.batch_size % t.microbatches == 0, "train.microbatches", t.microbatches,
          f"must divide train.batch_size={t.batch_size}")
    if d.tokenizer in ("bpe", "sentencepiece"):
        check_domains(config, {"data.tokenizer_vocab_size": COUNT})
    if d.tokenizer == "hf" and d.source != "task":
        check(bool(d.tokenizer_path), "data.tokenizer_path", d.tokenizer_path,
              "data.tokenizer='hf' needs a local directory holding a Hugging Face tokenizer")

    if m.kind == "transformer":
        check_domains(config, TRANSFORMER_DOMAINS)
        if d.source != "task":
            check(d.eval_tokens >= d.seq_len, "data.eval_tokens", d.eval_tokens,
                  f"must be at least one row (data.seq_len={d.seq_len} tokens)")
        check(m.head_dim > 0 or m.d_model % m.n_heads == 0, "model.d_model", m.d_model,
              f"must be divisible by model.n_heads={m.n_heads}")
        check(m.n_heads % n_kv_heads(m) == 0, "model.n_heads", m.n_heads,
              f"must be divisible by model.n_kv_heads={m.n_kv_heads}")
        check(d.seq_len <= m.max_seq_len, "data.seq_len", d.seq_len,
              f"exceeds model.max_seq_len={m.max_seq_len}")
        if m.positions == "rope":
            check(head_dim(m) % 2 == 0, "model.head_dim", head_dim(m),
                  "rope needs an even head_dim")
        if m.parameterization == "mup":
            check_domains(config, {"model.mup_base_width": COUNT})
        _check_attention_impl(m, d.seq_len)
    else:
        check_domains(config, MLP_DOMAINS)

    pr = config.prune
    if pr.pattern != "unstructured":  # N:M: the pattern fixes the sparsity (0 means "implied")
        from scaling.compress.spec import CompressionError, prune_spec

        try:
            implied = prune_spec(None, pr.pattern).sparsity
        except CompressionError as err:
            raise ConfigError("prune.pattern", pr.pattern, str(err).split(": ", 1)[-1]) from None
        check(pr.sparsity in (0.0, implied), "prune.sparsity", pr.sparsity,
              f"disagrees with prune.pattern={pr.pattern!r}, which prunes 1 - N/M = {implied:g}")
    _validate_mesh(config, num_devices)


def _validate_mesh(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
    m, t, x = config.model, config.train, config.mesh
    for axis in MESH_AXES:
        v = x[axis]
        check(v == -1 or v >= 1, f"mesh.{axis}", v, "must be >= 1 (or -1 for data)")
    check(x.fsdp != -1 and x.tensor != -1, "mesh", (x.data, x.fsdp, x.tensor),
          "only mesh.data may be -1")
    known = {r[0] for r in x.rules}
    for name, axes in x.rules:
        for a in (axes if isinstance(axes, (list, tuple)) else [axes]):
            check(a is None or a in MESH_AXES, "mesh.rules", [name, axes],
                  f"unknown mesh axis {a!r}; mesh axes are {list(MESH_AXES)}")
    missing = {"batch", "embed", "vocab"} - known
    check(not missing, "mesh.rules", sorted(missing), "logical axes have no rule")
    if num_devices is None:
        return
    shape = mesh_shape(config, num_devices)
    total = shape["data"] * shape["fsdp"] * shape["tensor"]
    check(total == num_devices, "mesh", shape,
          f"mesh has {total} devices but {num_devices} are available")
    dp = shape["data"] * shape["fsdp"]
    micro = t.batch_size // t.microbatches
    check(micro % dp == 0, "train.batch_size", t.batch_size,
          f"batch per microbatch ({micro}) must be divisible by the data-parallel size "
          f"data*fsdp={dp}")
    tp = shape["tensor"]
    if m.kind == "transformer" and tp > 1:
        check(m.n_heads % tp == 0, "model.n_heads", m.n_heads,
              f"must be divisible by mesh.tensor={tp}")
        check(n_kv_heads(m) % tp == 0, "model.n_kv_heads", n_kv_heads(m),
              f"must be divisible by mesh.tensor={tp}")
        check(d_ff(m) % tp == 0, "model.d_ff", d_ff(m), f"must be divisible by mesh.tensor={tp}")
    if m.kind == "transformer" and shape["fsdp"] > 1:
        check(m.d_model % shape["fsdp"] == 0, "model.d_model", m.d_model,
              f"must be divisible by mesh.fsdp={shape['fsdp']}")
