"""The one config tree: defaults shared by every run, and validation with field-named errors.

Every config file in `configs/` starts from `default_config()` and overrides fields. Every field a
run can read is declared here, so a typo on the command line (`--config.modle.d_model`) fails
instead of being ignored. `validate(config, num_devices)` runs before anything is compiled and
raises `ConfigError` naming the offending field and value.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

# Logical axis names -> mesh axes. Parameters use the plain names, activations the `act_` ones,
# so that FSDP can shard a weight's embed dimension without sharding activations along it.
DEFAULT_LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("input", None),
    ("hidden", "tensor"),
    ("classes", None),
)

MESH_AXES = ("data", "fsdp", "tensor")

ENUMS: dict[str, tuple[str, ...]] = {
    "model.kind": ("transformer", "mlp"),
    "model.norm": ("rmsnorm", "layernorm"),
    "model.positions": ("rope", "learned"),
    "model.mlp": ("swiglu", "gelu"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots", "dots_no_batch"),
    "model.parameterization": ("standard", "mup"),
    "model.mlp_activation": ("gelu", "relu"),
    "model.attention_impl": ("einsum", "xla", "cudnn"),
    "optim.name": ("adamw", "adafactor", "lion", "sgd"),
    "optim.schedule": ("cosine", "linear", "constant", "wsd"),
    "optim.wsd_decay_shape": ("linear", "cosine", "sqrt"),
    "data.source": ("tfds", "task", "mixture"),
    "data.tokenizer": ("byte", "bpe", "sentencepiece", "hf"),
    "data.task.loss_on": ("answer", "all"),
    "train.on_nonfinite": ("stop", "skip", "rewind"),
}


class ConfigError(ValueError):
    """An invalid config value; the message names the field and the value."""

    def __init__(self, field: str, value: Any, why: str):
        self.field = field
        self.value = value
        super().__init__(f"config.{field}={value!r}: {why}")


def default_config() -> ml_collections.ConfigDict:
    """Returns the full default config tree (a tiny byte-level LM on the offline stdlib corpus)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.name = ""  # free-form run name; sweeps fill it

    # ---------------------------------------------------------------- model
    m = c.model = ml_collections.ConfigDict()
    m.kind = "transformer"
    m.vocab_size = 0  # 0: from the tokenizer, rounded up to `vocab_multiple`
    m.vocab_multiple = 64
    m.d_model = 64
    m.n_layers = 2
    m.n_heads = 4
    m.n_kv_heads = 0  # 0: equal to n_heads (multi-head attention); fewer: grouped-query
    m.head_dim = 0  # 0: d_model // n_heads
    m.d_ff = 0  # 0: 4 * d_model (gelu) or the 8/3 * d_model rounded to 8 (swiglu)
    m.max_seq_len = 128
    m.norm = "rmsnorm"
    m.norm_eps = 1e-6
    m.positions = "rope"
    m.rope_theta = 10_000.0
    m.mlp = "swiglu"
    m.tie_embeddings = True
    m.embed_dropout = 0.0
    m.attn_dropout = 0.0
    # einsum: explicit softmax(QKᵀ)V (supports attn_dropout); xla | cudnn: fused
    # jax.nn.dot_product_attention without attention dropout (cudnn: GPU only, bfloat16/float16,
    # head_dim a multiple of 8 and <= 256, even data.seq_len)
    m.attention_impl = "einsum"
    m.resid_dropout = 0.0
    m.dtype = "float32"  # compute dtype
    m.param_dtype = "float32"
    m.scan_layers = True
    # with scan_layers, layers per scan iteration; 0 (auto): all of them on CPU (straight-line
    # code, so XLA fuses the backward pass instead of stacking every residual), 1 elsewhere
    m.scan_unroll = 0
    m.remat = "none"
    m.parameterization = "standard"
    m.init_std = 0.02  # standard: N(0, init_std); muP: the same at `mup_base_width`
    m.mup_base_width = 64  # muP: the width at which muP equals standard parameterization
    m.mup_output_mult = 1.0
    # muP: the head dimension at `mup_base_width`; 0: head_dim if set, else
    # mup_base_width // n_heads (a family that keeps the head count and grows the head size)
    m.mup_base_head_dim = 0
    # MLP family (model.kind == 'mlp'): vector input -> `mlp_depth` hidden layers -> classes
    m.mlp_width = 128
    m.mlp_depth = 2
    m.mlp_activation = "gelu"  # MLP family: gelu | relu
    m.input_dim = 0  # 0: from the task
    m.num_classes = 0  # 0: from the task

    # ---------------------------------------------------------------- data
    d = c.data = ml_collections.ConfigDict()
    d.source = "tfds"  # tfds | task | mixture (text with a task mixed in)
    d.tfds_name = "stdlib_corpus"
    d.tfds_data_dir = ""  # "" : the TFDS default data directory
    d.split = "train"
    d.eval_split = "validation"
    # a directory written by `scaling data prepare`: read its pre-tokenized shards instead of
    # tokenizing the split in memory (same rows, same order); "" : tokenize in memory
    d.prepared_dir = ""
    d.text_key = "text"
    d.tokenizer = "byte"  # byte | bpe | sentencepiece | hf
    d.tokenizer_path = ""  # hf: a local directory; bpe/sentencepiece: trained if empty
    d.tokenizer_vocab_size = 1024  # bpe/sentencepiece training
    d.tokenizer_train_chars = 50_000_000  # train-split characters used to train bpe/sp; 0: all
    d.seq_len = 128
    d.num_tokens = 0  # unique training tokens; 0: the whole split
    d.epochs = 1.0  # repetitions of the unique tokens
    d.shuffle = True  # documents, and rows within windows (below), in a seeded order
    # first epoch: rows are visited in a seeded permutation within windows of this many tokens
    # (consecutive batches then do not come from one document); 0: stream order
    d.shuffle_window_tokens = 4_194_304
    d.prefetch = 2
    d.eval_tokens = 65_536  # validation tokens per evaluation
    # rows per evaluation batch (validation and task); 0: train.batch_size. Small models evaluate
    # faster in fewer, larger batches (each batch is one device call)
    d.eval_batch_size = 0
    d.task = ml_collections.ConfigDict()
    d.task.name = ""  # sparse_parity | modular_arithmetic | addition | associative_recall
    d.task.mix_rate = 0.0  # fraction of sequences replaced by task examples (source=mixture)
    d.task.eval_examples = 512
    d.task.loss_on = "answer"  # training weights on task rows: answer | all
    d.task.num_examples = 0  # source=task: 0 an endless stream; >0 a fixed training set, repeated
    d.task.params = ml_collections.ConfigDict()  # task-specific knobs
    d.augment = ml_collections.ConfigDict()
    d.augment.token_substitution = 0.0  # probability per token
    d.augment.span_mask = 0.0  # probability a span of inputs is dropped/masked
    d.augment.span_length = 3
    d.augment.random_crop = False  # random offset of the packed window
    d.augment.operand_swap = False  # commutative ops: a∘b -> b∘a
    d.augment.pair_shuffle = False  # associative recall: permute the key->value pairs

    # ---------------------------------------------------------------- train
    t = c.train = ml_collections.ConfigDict()
    t.batch_size = 16  # global batch, sequences
    t.microbatches = 1  # gradient accumulation steps per optimizer step
    t.num_steps = 200  # used when data.num_tokens == 0
    t.z_loss = 0.0
    t.label_smoothing = 0.0
    t.log_every = 10
    t.eval_every = 0  # >0: also evaluate every `eval_every` steps and at the end (0: off)
    t.eval_at_checkpoints = False
    t.peak_flops = 0.0  # per device, FLOP/s; 0: the measured matmul peak of this backend
    t.progress = True
    # a non-finite loss, grad norm or parameter norm: stop (fail; the latest checkpoint stays the
    # last finite one) | skip (drop that update) | rewind (to the latest checkpoint, LR scaled)
    t.on_nonfinite = "stop"
    t.max_skipped_steps = 20  # skip: more skipped steps than this fail the run
    t.max_rewinds = 3  # rewind: more rewinds than this fail the run
    t.rewind_lr_factor = 0.5  # rewind: peak and final LR are multiplied by this at each rewind
    # RUN_DIR[:STEP]: start from that run's parameters at STEP (default: its newest checkpoint);
    # the optimizer state and schedule are fresh; a resume reads this run's own checkpoint
    t.init_from = ""

    # ---------------------------------------------------------------- fine-tuning
    f = c.finetune = ml_collections.ConfigDict()
    f.lora_rank = 0  # 0: full fine-tuning (every parameter trains); r > 0: LoRA, base frozen
    f.lora_alpha = 16.0  # LoRA scale alpha / rank
    # comma-separated module names or regexes, matched against a module's path or last name
    f.lora_modules = "attn,mlp"

    # ---------------------------------------------------------------- optimizer
    o = c.optim = ml_collections.ConfigDict()
    o.name = "adamw"
    o.lr = 3e-3
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.0
    o.decay_embeddings = False
    o.clip_norm = 1.0  # 0: no clipping
    o.schedule = "cosine"
    o.warmup_steps = 10
    o.final_lr_frac = 0.1  # cosine/linear/wsd end at lr * final_lr_frac
    o.wsd_decay_frac = 0.2  # WSD: fraction of steps in the cooldown
    o.wsd_decay_shape = "linear"

    # ---------------------------------------------------------------- gradual pruning
    # magnitude pruning of the attention/MLP weights during training, masks in the optimizer
    # state (`scaling.compress.gradual`): cubic ramp from start_step to end_step (end <= start:
    # one shot at start_step), masks refreshed every `every` steps, fixed afterwards
    p = c.prune = ml_collections.ConfigDict()
    p.sparsity = 0.0  # final fraction of zeros, in [0, 1) (0: off; an N:M pattern implies 1 - N/M)
    p.pattern = "unstructured"  # or "N:M", e.g. "2:4" (set once at start_step)
    p.start_step = 0
    p.end_step = 0
    p.every = 10

    # ---------------------------------------------------------------- distillation
    # a student trained on a teacher run's logits (Hinton et al. 2015; `scaling.compress.distill`):
    # objective (1 - mix)·CE(data) + mix·T²·KL(teacher_T ‖ student_T); the logged `loss` stays the
    # data cross-entropy. Teacher and student may differ in size and depth, not in vocabulary.
    s = c.distill = ml_collections.ConfigDict()
    s.teacher = ""  # RUN_DIR[:STEP] (default: its newest checkpoint); "": no distillation
    s.temperature = 1.0  # T > 0: both distributions are softened by T; the KL term is times T²
    s.mix = 0.5  # in [0, 1]: weight of the distillation term (0: data loss only; 1: teacher only)

    # ---------------------------------------------------------------- checkpoints
    k = c.checkpoint = ml_collections.ConfigDict()
    k.log_spaced = True  # 1, 2, 4, ..., log_max
    k.log_max = 512
    k.every = 1000  # and every `every` steps (0: off)
    k.save_final = True
    k.max_to_keep = 0  # 0: keep all
    # True: orbax copies the state to host memory and writes it while training goes on. The
    # loop blocks 0.45 s instead of 2.0 s for the 22 saves of the quickstart's smallest run; on
    # 2 busy CPU cores the background write competes with training, so the run's wall is the
    # same within noise (benchmarks/loop_overhead.py --save_rounds)
    k.async_save = True

    # ---------------------------------------------------------------- mesh
    x = c.mesh = ml_collections.ConfigDict()
    x.data = -1  # -1: all devices not used by the other axes
    x.fsdp = 1
    x.tensor = 1
    x.rules = [[name, list(axes) if isinstance(axes, tuple) else axes]
               for name, axes in DEFAULT_LOGICAL_RULES]
    return c


# --------------------------------------------------------------------------------------- derived


def head_dim(m: ml_collections.ConfigDict) -> int:
    """Returns the attention head dimension."""
    return m.head_dim or m.d_model // m.n_heads


def scan_unroll(m: ml_collections.ConfigDict, platform: str) -> int:
    """Returns the layers per scan iteration on `platform` ('cpu', 'gpu', 'tpu'): set or auto."""
    if m.get("scan_unroll", 0) > 0:
        return min(m.scan_unroll, m.n_layers)
    return m.n_layers if platform == "cpu" else 1


def n_kv_heads(m: ml_collections.ConfigDict) -> int:
    """Returns the number of key/value heads."""
    return m.n_kv_heads or m.n_heads


def d_ff(m: ml_collections.ConfigDict) -> int:
    """Returns the MLP hidden width."""
    if m.d_ff:
        return m.d_ff
    if m.mlp == "swiglu":
        return int(8 * ((8 * m.d_model / 3 + 7) // 8))
    return 4 * m.d_model


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """Returns {'data', 'fsdp', 'tensor'} sizes with data=-1 resolved against `num_devices`."""
    x = config.mesh
    shape = {"data": x.data, "fsdp": x.fsdp, "tensor": x.tensor}
    if shape["data"] == -1:
        rest = shape["fsdp"] * shape["tensor"]
        if rest <= 0 or num_devices % rest:
            raise ConfigError("mesh.fsdp", x.fsdp,
                              f"fsdp*tensor={rest} does not divide the {num_devices} devices")
        shape["data"] = num_devices // rest
    return shape


def train_steps(config: ml_collections.ConfigDict) -> int:
    """Returns the number of optimizer steps: from the token budget if set, else train.num_steps.

    For the MLP family a "token" is one example, so data.num_tokens counts examples."""
    if config.data.num_tokens > 0:
        tokens_per_step = config.train.batch_size * (
            1 if config.model.kind == "mlp" else config.data.seq_len)
        return max(1, math.ceil(config.data.num_tokens * config.data.epochs / tokens_per_step))
    return config.train.num_steps


def logical_rules(config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
    """Returns the logical-axis rules as the tuple of pairs that flax expects."""
    out = []
    for name, axes in config.mesh.rules:
        if isinstance(axes, (list, tuple)):
            axes = tuple(axes)
        out.append((name, axes))
    return tuple(out)


# ------------------------------------------------------------------------------------ validation

# cuDNN fused (flash) attention: half-precision inputs, a head dim that is a multiple of 8 and at
# most 256 on Hopper or later, 128 before (that per-GPU bound is checked where the model is built).
CUDNN_ATTENTION_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 256
CUDNN_MAX_HEAD_DIM_PRE_HOPPER = 128

# Subtrees whose keys are free-form (task-specific knobs), so not compared with the defaults.
FREE_FORM_FIELDS = ("data.task.params",)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ConfigError (naming the field and value) if `config` cannot run on `num_devices`.

    Checks that every field is one `default_config()` declares (so a typo in a config file fails
    like one on the command line), types, enums, the numeric domain of every field, and the
    consistency of the model, data and mesh; see `scaling.validation`.
    """
    from scaling import validation

    validation.validate(config, num_devices)


# ------------------------------------------------------------------------------ serialization


def flatten_fields(values: dict, prefix: str = "") -> dict[str, Any]:
    """Returns {dotted field: value} for a nested dict of config values (e.g. config.to_dict())."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_fields(value, name + "."))
        else:
            out[name] = value
    return out


def to_json(config: ml_collections.ConfigDict) -> str:
    """Returns the config as indented, key-sorted JSON (what `run_dir/config.json` holds)."""
    return config.to_json_best_effort(indent=2, sort_keys=True)


def from_dict(values: dict) -> ml_collections.ConfigDict:
    """Returns the defaults updated recursively with `values` (e.g. a saved config.json)."""
    config = default_config()
    config.update(values)
    return config


class ConfigFileError(ValueError):
    """A config or run file that cannot be read or holds an invalid config; names the file."""

    def __init__(self, path: Any, why: str):
        self.path = str(path)
        super().__init__(f"{path}: {why}")


def load_json(path: Any) -> ml_collections.ConfigDict:
    """Returns the validated config saved in a JSON file (a run's config.json).

    Raises ConfigFileError naming the file if it is missing, is not JSON, or holds a config that
    `validate` rejects (the field is named too)."""
    import json
    import pathlib

    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(path, "not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(path, f"cannot be read ({err})") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigFileError(path, f"is not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise ConfigFileError(path, f"holds a JSON {type(values).__name__}, not a config object")
    try:
        config = from_dict(values)
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # a value of the wrong type
        raise ConfigFileError(path, f"invalid config ({err})") from None
    try:
        validate(config)
    except ConfigError as err:
        raise ConfigFileError(path, str(err)) from None
    return config


def config_hash(config: ml_collections.ConfigDict, length: int = 10) -> str:
    """Returns a stable hex id of the config's content (the run name is not part of it)."""
    import hashlib
    import json

    values = json.loads(config.to_json_best_effort())
    values.pop("name", None)
    blob = json.dumps(values, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
