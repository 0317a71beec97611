"""Sweep declarations -> concrete, validated runs (pure: no training, no files).

A sweep config file (`configs/sweeps/<name>.py`) defines `get_config()` returning the tree of
`default_sweep()` with fields overridden:

    base        a full run config (`scaling.config.default_config()` with overrides)
    family      the model-size rule that turns a target N into a shape (see `family_shape`)
    sizes       target non-embedding parameter counts N (unset: the base model only)
    tokens | tokens_per_param | flops
                the data axis: trained-token budgets D, ratios D/N, or IsoFLOP compute budgets C
                (FLOPs); at most one of the three is set (an empty one is an error)
    axes        any config fields as axes: a list of groups, each a dict {field: [values]}; the
                fields of one group are zipped (equal lengths), groups are combined by product
    seeds       `config.seed` values (an axis of their own)
    batch, lr   batch size and peak learning rate as rules of N (constant | table | power | mup |
                tuned: read from a tuning sweep's tuned.json)
    tune        the learning-rate tuning stage: an LR grid per size (see `scaling.sweeps.tuning`)
    resources   what one run needs: CPUs, GPUs, TPU chips, processes (multi-host) and the CPU
                device count per process; sweep-level, so not part of a run's id

Expansion order per run: base -> family shape -> axes -> N from `scaling.models.accounting` ->
batch and LR rules (skipped for a field an axis sets) -> data budget rounded to whole optimizer
steps -> seed. Every run gets a stable id (`config_hash` of its resolved config), a readable name
such as `N3.2M-D50M-wd0.1-s0` and a directory `runs/<name>` under the sweep root.

IsoFLOP budgets: for budget C and a model with F FLOPs per token (`accounting.flops_per_token`,
training, at `data.seq_len`) and T tokens per step, the run trains `steps = round(C / (F*T))`
steps, so its compute `steps*F*T` is within half a step's FLOPs of C. Sizes that would train fewer
than `min_steps` steps at a budget are left out of that budget, and so are sizes whose tokens per
parameter D/N at a budget fall outside `isoflop_window` (when set): each budget then trains the
sizes near its compute-optimal ratio, a window that slides up in N with C (Hoffmann et al.'s
IsoFLOP grids do the same), instead of every size at every budget. A budget that no size fits is
an error. Every problem (unknown field, empty axis, budget too small, duplicate runs, invalid run
config) raises `SweepError` naming it before any run starts.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import pathlib
import re
from typing import Any, Iterable

import ml_collections
from ml_collections import config_dict

from scaling import config as config_lib
from scaling import validation

BUDGET_AXES = ("tokens", "tokens_per_param", "flops")
RULE_KINDS = {"batch": ("constant", "table", "power", "tuned"),
              "lr": ("constant", "table", "power", "mup", "tuned")}

# Short labels for run names; a field not listed uses its last component (strings: no label).
DEFAULT_LABELS: dict[str, str] = {
    "optim.weight_decay": "wd",
    "optim.lr": "lr",
    "optim.name": "",
    "optim.schedule": "",
    "optim.warmup_steps": "wu",
    "optim.b2": "b2",
    "model.parameterization": "",
    "model.mlp": "",
    "model.norm": "",
    "model.positions": "",
    "model.embed_dropout": "edrop",
    "model.attn_dropout": "adrop",
    "model.resid_dropout": "rdrop",
    "model.d_model": "d",
    "model.n_layers": "L",
    "train.batch_size": "bs",
    "train.label_smoothing": "ls",
    "train.z_loss": "z",
    "data.epochs": "ep",
    "data.num_tokens": "U",
    "data.augment.token_substitution": "tsub",
    "data.augment.span_mask": "smask",
    "data.augment.random_crop": "crop",
    "data.augment.operand_swap": "swap",
    "data.task.mix_rate": "mix",
}


class SweepError(ValueError):
    """An invalid sweep; the message names the offending field, axis, budget or run."""


@dataclasses.dataclass
class Run:
    """One concrete run of a sweep: its resolved config and the numbers the manifest records."""

    id: str
    name: str
    dir: str  # relative to the sweep root
    config: ml_collections.ConfigDict  # resolved (vocab size etc. filled), name set
    axes: dict[str, Any]
    n: int  # non-embedding parameters
    n_total: int  # all parameters
    d: int  # trained tokens (examples for the MLP family) = steps * tokens_per_step
    c: float  # training FLOPs = flops_per_token * d
    steps: int
    batch: int
    lr: float
    tokens_per_step: int
    flops_per_token: float
    shape: dict[str, int]
    budget: float | None = None  # the IsoFLOP budget C this run belongs to (FLOPs), if any

    def manifest_entry(self, status: str = "pending") -> dict[str, Any]:
        """Returns this run's manifest line (id, name, dir, axes, n, d, c, status and extras)."""
        return {"id": self.id, "name": self.name, "dir": self.dir, "axes": dict(self.axes),
                "n": self.n, "d": self.d, "c": self.c, "status": status,
                "n_total": self.n_total, "steps": self.steps, "batch": self.batch,
                "lr": self.lr, "budget": self.budget}


# ------------------------------------------------------------------------------------ defaults


def default_sweep() -> ml_collections.ConfigDict:
    """Returns the sweep tree with defaults: the base run config and empty axes (a 1-run sweep)."""
    s = ml_collections.ConfigDict()
    s.name = "sweep"
    s.base = config_lib.default_config()
    # Sequence fields are tuples so that they can be overridden on the command line, e.g.
    # --config.sizes='(1e5, 2e5)' --config.axes='({"optim.weight_decay": (0.0, 0.1)},)'.

    f = s.family = ml_collections.ConfigDict()
    f.head_dim = 16  # Transformer: fixed head size; n_heads = d_model / head_dim
    f.aspect = 16.0  # Transformer: target d_model / n_layers
    f.aspect_slack = 2.0  # shapes with aspect in [aspect/slack, aspect*slack] are candidates
    f.min_layers = 1
    f.max_layers = 64
    f.ff_ratio = 0.0  # d_ff = ff_ratio * d_model rounded to 8; 0: the config's default d_ff rule
    f.width_multiple = 8  # MLP family: mlp_width is a multiple of this (depth from base)
    f.tolerance = 0.1  # the chosen shape's N must be within this relative error of the target

    # The size and data axes are unset (None) by default: no size axis runs the base model, no
    # data axis its own length. Set to an empty sequence they are an error, like any empty axis.
    s.sizes = config_dict.placeholder(tuple)  # target non-embedding N
    s.tokens = config_dict.placeholder(tuple)  # trained-token budgets D
    s.tokens_per_param = config_dict.placeholder(tuple)  # D = ratio * N
    s.flops = config_dict.placeholder(tuple)  # IsoFLOP compute budgets C (training FLOPs)
    s.min_steps = 4  # fewest optimizer steps a run may have
    # IsoFLOP budgets: (lowest, highest) tokens per parameter D/N a (size, budget) run may have;
    # sizes outside it are left out of that budget (empty: every size at every budget)
    s.isoflop_window = ()
    # Text runs whose budget D exceeds this many unique tokens train on that many unique tokens
    # for D / max_unique_tokens epochs (each epoch reshuffled) instead of failing: 0 = no cap (a
    # run that needs more text than the split holds is an error), -1 = the base split's size.
    s.max_unique_tokens = 0
    s.axes = ()  # [{field: [values], ...}, ...]: zip within a group, product across groups
    s.seeds = (0,)
    s.labels = ()  # [(field, short label)] overriding DEFAULT_LABELS in run names

    b = s.batch = ml_collections.ConfigDict()
    b.rule = "constant"  # constant (base) | table | power
    b.table = ()  # [(max_n, batch)]: the first row with N <= max_n (the last row beyond)
    b.ref_n = 0.0  # power: batch = ref_value * (N / ref_n) ** exponent, rounded to `multiple`
    b.ref_value = 0.0
    b.exponent = 0.0
    b.multiple = 1
    b.tuned_file = ""  # tuned: a tuned.json (relative to the sweep config file, or absolute)
    b.tuned_source = "optimum"  # tuned: a tuned size's own optimum, else the law | fit: the law

    r = s.lr = ml_collections.ConfigDict()
    r.rule = "constant"  # constant (base) | table | power | mup
    r.table = ()  # [(max_n, lr)]
    r.ref_n = 0.0  # power: lr = ref_value * (N / ref_n) ** exponent
    r.ref_value = 0.0
    r.exponent = 0.0
    r.base_width = 0  # mup: the width the base LR was tuned at (0: base.model.mup_base_width)
    r.tuned_file = ""  # tuned: a tuned.json (relative to the sweep config file, or absolute)
    r.tuned_source = "optimum"  # tuned: a tuned size's own optimum, else the law | fit: the law

    # Tuning stage (scaling/sweeps/tuning.py): per size, a grid of peak LRs predicted *
    # lr_factor**k around the LR rule's prediction (optionally x batch sizes and beta2 values);
    # an optimum at an LR edge extends the grid; the fitted LR*(N) is written to `out`.
    t = s.tune = ml_collections.ConfigDict()
    t.enabled = False
    t.lr_factor = math.sqrt(2.0)  # ratio of neighbouring grid LRs
    t.lr_points = 5  # initial grid points per size, centred on the rule's prediction
    t.max_extend = 3  # grid points that may be added beyond each edge of the initial grid
    t.batch_factor = 2.0  # ratio of neighbouring grid batch sizes
    t.batch_points = 1  # 1: batch size not swept
    t.b2 = ()  # Adam beta2 values crossed with the grid (empty: not swept)
    t.metric = "val/loss"  # eval.jsonl metric whose final value decides (lower is better)
    t.bootstrap = 1000  # bootstrap replicates of the fits' CIs
    t.out = "tuned.json"  # written in the sweep root

    x = s.resources = ml_collections.ConfigDict()
    x.cpus = 1.0  # per process (Ray resource request)
    x.gpus = 0.0  # per process
    x.tpu_chips = 0.0  # per process (Ray custom resource "TPU"); one process per TPU host
    x.processes = 1  # processes (hosts) one run spans, via jax.distributed
    x.devices_per_process = 0  # CPU: XLA host device count per process (0: inherit)
    # runs of one model shape and length trained together by one vmapped step (population
    # training): at most this many per process; 0 = auto (runner.AUTO_POPULATION), 1 = off
    x.population = 0

    s.compile_cache = True  # share a JAX persistent compilation cache among the sweep's runs
    s.max_retries = 1  # extra attempts of a failed run (divergence is not retried)
    return s


# ------------------------------------------------------------------------------------ helpers


def format_count(x: float) -> str:
    """Returns `x` with 3 significant digits and a k/M/B/T suffix, e.g. 3.2M (a count)."""
    x = float(x)
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def format_flops(x: float) -> str:
    """Returns FLOPs `x` in compact scientific form, e.g. 1e15 or 2.5e14 (FLOPs)."""
    text = f"{float(x):.3g}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def _format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:.4g}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    return str(v)


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text)


def _get_field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def _plain(value: Any) -> Any:
    """Returns `value` with ConfigDicts/tuples turned into dicts/lists (JSON-able)."""
    if isinstance(value, ml_collections.ConfigDict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Returns a resolved copy of `config` (vocab size etc. filled by `scaling.data.resolve`)."""
    from scaling import data as data_lib

    return data_lib.resolve(copy.deepcopy(config))


# ------------------------------------------------------------------------------- model family


def model_numbers(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Returns N (non-embedding), N_total, training FLOPs per token (MLP: example), tokens/step."""
    from scaling.models import accounting

    r = accounting.run_numbers(config)
    return {"n": r["n_params_nonembed"], "n_total": r["n_params"],
            "flops_per_token": r["flops_per_token"], "tokens_per_step": r["tokens_per_step"]}


def _shape_n(scratch: ml_collections.ConfigDict, shape: dict[str, int]) -> int:
    """Returns N (non-embedding) of `scratch` (a model config, modified in place) with `shape`."""
    from scaling.models import accounting

    for k, v in shape.items():
        scratch[k] = v
    return int(accounting.param_counts(scratch)["non_embedding"])


def transformer_shape(layers: int, d_model: int,
                      family: ml_collections.ConfigDict) -> dict[str, int]:
    """Returns the model fields of a Transformer with `layers` x `d_model` under the family rule."""
    shape = {"n_layers": layers, "d_model": d_model, "n_heads": d_model // family.head_dim,
             "n_kv_heads": 0, "head_dim": 0}
    shape["d_ff"] = int(8 * round(family.ff_ratio * d_model / 8)) if family.ff_ratio > 0 else 0
    return shape


def family_candidates(model_cfg: ml_collections.ConfigDict, family: ml_collections.ConfigDict,
                      max_n: float = math.inf) -> list[tuple[dict[str, int], int]]:
    """Returns the (shape, N) pairs the family rule allows, N (non-embedding) up to about `max_n`.

    For each depth (MLP: the one depth) the widths are enumerated upwards and the first one past
    `max_n` is kept, so the closest shape above `max_n` is always among the candidates.
    """
    out = []
    scratch = copy.deepcopy(model_cfg)
    if model_cfg.kind == "mlp":
        for width in range(family.width_multiple, 1 << 20, family.width_multiple):
            n = _shape_n(scratch, {"mlp_width": width})
            out.append(({"mlp_width": width}, n))
            if n > max_n:
                break
        return out
    hd = family.head_dim
    for layers in range(family.min_layers, family.max_layers + 1):
        lo = family.aspect * layers / family.aspect_slack
        hi = family.aspect * layers * family.aspect_slack
        first = True
        for mult in range(max(1, math.ceil(lo / hd)), max(1, int(hi // hd)) + 1):
            shape = transformer_shape(layers, mult * hd, family)
            n = _shape_n(scratch, shape)
            out.append((shape, n))
            if n > max_n:
                break
            first = False
        if first and out and out[-1][1] > max_n:
            break  # even the narrowest shape of this depth is too big; deeper ones are bigger
    return out


def family_shape(model_cfg: ml_collections.ConfigDict, target_n: float,
                 family: ml_collections.ConfigDict) -> tuple[dict[str, int], int]:
    """Returns (model fields, achieved non-embedding N) for a target N under the family rule.

    Transformer rule: head_dim is fixed (`family.head_dim`; n_heads = d_model / head_dim, d_model
    a multiple of head_dim), the aspect ratio d_model / n_layers stays within a factor
    `aspect_slack` of `family.aspect`, and d_ff follows `ff_ratio` (or the config default). Among
    the shapes whose N is within `tolerance` (relative) of the target, the one with the aspect
    closest to `family.aspect` (in log space) wins; ties go to the closer N. MLP rule: the depth
    is the base's, the width the multiple of `width_multiple` with N closest to the target.
    Raises SweepError when no allowed shape is within the tolerance.
    """
    if target_n <= 0:
        raise SweepError(f"sweep.sizes: target N={target_n!r} must be positive")
    candidates = family_candidates(model_cfg, family, target_n * (1 + family.tolerance))
    if not candidates:
        raise SweepError("sweep.family: the rule allows no shapes (check min/max_layers, aspect)")

    def n_err(n: int) -> float:
        return abs(math.log(n / target_n)) if n > 0 else math.inf

    within = [(s, n) for s, n in candidates if abs(n / target_n - 1) <= family.tolerance]
    if not within:
        best, best_n = min(candidates, key=lambda sn: n_err(sn[1]))
        raise SweepError(
            f"sweep.sizes: target N={format_count(target_n)} is not reachable within "
            f"tolerance {family.tolerance:g} by the family rule; the closest shape {best} has "
            f"N={best_n} ({best_n / target_n - 1:+.1%}); change the target, "
            "family.aspect_slack or family.tolerance")
    if model_cfg.kind == "mlp":
        return min(within, key=lambda sn: n_err(sn[1]))

    def key(sn: tuple[dict[str, int], int]) -> tuple[float, float]:
        s, n = sn
        return (round(abs(math.log(s["d_model"] / (s["n_layers"] * family.aspect))), 9), n_err(n))

    return min(within, key=key)


# ------------------------------------------------------------------------------------- rules


def _rule_value(rule: ml_collections.ConfigDict, what: str, n: int, base_value: float) -> float:
    if rule.rule == "constant":
        return base_value
    if rule.rule == "table":
        rows = sorted((float(r[0]), r[1]) for r in rule.table)
        for max_n, value in rows:
            if n <= max_n:
                return value
        return rows[-1][1]
    if rule.rule == "power":
        return rule.ref_value * (n / rule.ref_n) ** rule.exponent
    if rule.rule == "mup":
        return rule.ref_value or base_value
    if rule.rule == "tuned":
        from scaling.sweeps import tuning

        return tuning.tuned_value(rule, what, n)
    raise SweepError(f"sweep.{what}.rule={rule.rule!r}: must be one of {list(RULE_KINDS[what])}")


def _check_rule(sweep: ml_collections.ConfigDict, what: str) -> None:
    rule = sweep[what]
    if rule.rule not in RULE_KINDS[what]:
        raise SweepError(f"sweep.{what}.rule={rule.rule!r}: must be one of "
                         f"{list(RULE_KINDS[what])}")
    if rule.rule == "table":
        if not rule.table:
            raise SweepError(f"sweep.{what}.table is empty but sweep.{what}.rule='table'")
        for row in rule.table:
            if len(row) != 2 or row[1] <= 0:
                raise SweepError(f"sweep.{what}.table row {row!r}: must be (max_n, value > 0)")
    if rule.rule == "power" and (rule.ref_n <= 0 or rule.ref_value <= 0):
        raise SweepError(f"sweep.{what}: rule 'power' needs ref_n > 0 and ref_value > 0 "
                         f"(got ref_n={rule.ref_n}, ref_value={rule.ref_value})")
    if rule.rule == "tuned":
        from scaling.sweeps import tuning

        tuning.load_tuned(rule, what)


def apply_rules(config: ml_collections.ConfigDict, sweep: ml_collections.ConfigDict, n: int,
                fixed: set[str]) -> None:
    """Sets train.batch_size, optim.lr (and muP fields) by the rules of N in place; returns None."""
    if "train.batch_size" not in fixed and sweep.batch.rule != "constant":
        value = _rule_value(sweep.batch, "batch", n, config.train.batch_size)
        multiple = max(1, int(sweep.batch.multiple))
        config.train.batch_size = max(multiple, int(round(value / multiple)) * multiple)
    if sweep.lr.rule == "mup":
        if "model.parameterization" not in fixed:
            config.model.parameterization = "mup"
        if sweep.lr.base_width and "model.mup_base_width" not in fixed:
            config.model.mup_base_width = int(sweep.lr.base_width)
    if "optim.lr" not in fixed and sweep.lr.rule != "constant":
        config.optim.lr = float(_rule_value(sweep.lr, "lr", n, config.optim.lr))


# ---------------------------------------------------------------------------------- expansion


def _axis_groups(sweep: ml_collections.ConfigDict,
                 base: ml_collections.ConfigDict) -> list[list[tuple[str, list[Any]]]]:
    groups = []
    seen: set[str] = set()
    for gi, group in enumerate(sweep.axes):
        group = _plain(group)
        if not isinstance(group, dict) or not group:
            raise SweepError(f"sweep.axes[{gi}]: must be a non-empty dict {{field: [values]}}, "
                             f"got {group!r}")
        fields = []
        for field, values in group.items():
            if field in seen:
                raise SweepError(f"sweep.axes[{gi}]: field {field!r} appears in two axes")
            seen.add(field)
            try:
                current = _get_field(base, field)
            except KeyError:
                raise SweepError(f"sweep.axes[{gi}]: unknown field {field!r} (not in the run "
                                 "config)") from None
            if isinstance(current, ml_collections.ConfigDict):
                raise SweepError(f"sweep.axes[{gi}]: field {field!r} is a group of fields, "
                                 "not a value")
            if not isinstance(values, (list, tuple)):
                raise SweepError(f"sweep.axes[{gi}]: the values of {field!r} must be a list, "
                                 f"got {values!r}")
            if len(values) == 0:
                raise SweepError(f"sweep.axes[{gi}]: axis {field!r} is empty")
            fields.append((field, list(values)))
        lengths = {len(v) for _, v in fields}
        if len(lengths) > 1:
            raise SweepError(f"sweep.axes[{gi}]: zipped fields have different lengths "
                             f"{ {f: len(v) for f, v in fields} }")
        groups.append(fields)
    return groups


def _labels(sweep: ml_collections.ConfigDict) -> dict[str, str]:
    labels = dict(DEFAULT_LABELS)
    for row in sweep.labels:
        if len(row) != 2:
            raise SweepError(f"sweep.labels row {row!r}: must be (field, label)")
        labels[str(row[0])] = str(row[1])
    return labels


# Fields whose value is another run's directory: names show that run's name, with this label
RUN_SOURCE_FIELDS = {"train.init_from": "from_", "distill.teacher": "teacher_"}


def run_name(axes: dict[str, Any], n: int, d: int, labels: dict[str, str],
             budget: float | None) -> str:
    """Returns the readable run name, e.g. C1e15-N3.2M-D50M-wd0.1-s0."""
    parts = []
    if budget is not None:
        parts.append(f"C{format_flops(budget)}")
    parts += [f"N{format_count(n)}", f"D{format_count(d)}"]
    for field, value in axes.items():
        if field in ("N_target", "D_target", "tokens_per_param", "C_budget", "seed", "lr_step",
                     "batch_step"):
            continue
        if field in RUN_SOURCE_FIELDS and isinstance(value, str):
            # another run's directory (RUN_DIR[:STEP]): its own name, not the path to it
            head, step = re.match(r"^(.*?)(?::(\d+))?$", value.strip()).groups()
            value = pathlib.PurePath(head.rstrip("/")).name + (f":{step}" if step else "")
            parts.append(f"{labels.get(field, RUN_SOURCE_FIELDS[field])}{value}")
            continue
        default = "" if isinstance(value, str) else field.rsplit(".", 1)[-1]
        label = labels.get(field, default)
        parts.append(f"{label}{_format_value(value)}")
    if "seed" in axes:
        parts.append(f"s{axes['seed']}")
    return _sanitize("-".join(parts))


def _validate_top(sweep: ml_collections.ConfigDict) -> None:
    known = set(default_sweep().keys())
    for key in sweep.keys():
        if key not in known:
            raise SweepError(f"sweep.{key}: unknown sweep field; known fields are {sorted(known)}")
    for a in ("sizes",) + BUDGET_AXES:
        if sweep[a] is None:
            continue
        if not len(sweep[a]):
            unset = "the base model only" if a == "sizes" else "the base run length"
            raise SweepError(f"sweep.{a}: axis is empty (leave it unset, None, for {unset})")
    used = [a for a in BUDGET_AXES if sweep[a]]
    if len(used) > 1:
        raise SweepError(f"sweep: at most one of {list(BUDGET_AXES)} may be set, got {used}")
    for a in ("sizes",) + BUDGET_AXES:
        for v in sweep[a] or ():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise SweepError(f"sweep.{a}: value {v!r} must be a finite positive number")
        if len(set(sweep[a] or ())) != len(sweep[a] or ()):
            raise SweepError(f"sweep.{a}: has duplicate values {list(sweep[a])}")
    if not len(sweep.seeds):
        raise SweepError("sweep.seeds: axis is empty (use [0] for one seed)")
    if len(set(sweep.seeds)) != len(sweep.seeds):
        raise SweepError(f"sweep.seeds: has duplicate values {list(sweep.seeds)}")
    if sweep.min_steps < 1:
        raise SweepError(f"sweep.min_steps={sweep.min_steps}: must be >= 1")
    window = tuple(sweep.isoflop_window or ())
    if window:
        if len(window) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in window) or not 0 < window[0] < window[1]:
            raise SweepError(f"sweep.isoflop_window={window!r}: must be (lowest, highest) tokens "
                             "per parameter with 0 < lowest < highest, or () for no window")
        if not sweep.flops:
            raise SweepError("sweep.isoflop_window: needs IsoFLOP budgets (sweep.flops)")
    if not isinstance(sweep.max_unique_tokens, int) or sweep.max_unique_tokens < -1:
        raise SweepError(f"sweep.max_unique_tokens={sweep.max_unique_tokens!r}: must be an "
                         "integer >= -1 (0: no cap, -1: the base split's size)")
    for what in ("batch", "lr"):
        _check_rule(sweep, what)
    from scaling.sweeps import tuning

    tuning.check_tune(sweep)
    x = sweep.resources
    if x.processes < 1:
        raise SweepError(f"sweep.resources.processes={x.processes}: must be >= 1")
    if not isinstance(x.population, int) or x.population < 0:
        raise SweepError(f"sweep.resources.population={x.population!r}: must be an integer >= 0 "
                         "(0: auto, 1: no population training)")
    for field in ("cpus", "gpus", "tpu_chips", "devices_per_process"):
        if not math.isfinite(x[field]) or x[field] < 0:
            raise SweepError(f"sweep.resources.{field}={x[field]!r}: must be a finite number >= 0")
    if sweep.batch.multiple < 1:
        raise SweepError(f"sweep.batch.multiple={sweep.batch.multiple}: must be >= 1")
    if sweep.max_retries < 0:
        raise SweepError(f"sweep.max_retries={sweep.max_retries}: must be >= 0")
    f = sweep.family
    if not 1 <= f.min_layers <= f.max_layers:
        raise SweepError(f"sweep.family.min_layers={f.min_layers}, max_layers={f.max_layers}: "
                         "need 1 <= min_layers <= max_layers")
    if not (math.isfinite(f.tolerance) and f.tolerance > 0) or f.width_multiple < 1 \
            or not (math.isfinite(f.ff_ratio) and f.ff_ratio >= 0):
        raise SweepError(f"sweep.family: tolerance={f.tolerance} (> 0), width_multiple="
                         f"{f.width_multiple} (>= 1) and ff_ratio={f.ff_ratio} (>= 0) are required")
    if f.head_dim <= 0 or f.head_dim % 2 or f.aspect <= 0 or f.aspect_slack < 1:
        raise SweepError(f"sweep.family: head_dim={f.head_dim} (even, > 0), aspect={f.aspect} "
                         f"(> 0) and aspect_slack={f.aspect_slack} (>= 1) are required")


def expand(sweep: ml_collections.ConfigDict, skipped: list[str] | None = None,
           lr_steps: dict[float, tuple[int, int]] | None = None) -> list[Run]:
    """Returns the sweep's runs in a stable order; raises SweepError naming any problem.

    (size, budget) pairs left out of an IsoFLOP budget for having fewer than `min_steps` steps
    are described in `skipped` when a list is given. `lr_steps`: with `tune.enabled`, each target
    N's (lowest, highest) LR grid step (default: the initial grid; see `tuning.grid_product`).
    """
    from scaling.sweeps import tuning

    _validate_top(sweep)
    base = copy.deepcopy(sweep.base)
    try:
        config_lib.validate(base)
        validation.check_vocab(base)
    except config_lib.ConfigError as err:
        raise SweepError(f"sweep.base: {err}") from None
    groups = _axis_groups(sweep, base)
    labels = _labels(sweep)
    axis_fields = {field for group in groups for field, _ in group}
    for field, why in (("seed", "use sweep.seeds"), ("name", "run names are made by the sweep")):
        if field in axis_fields:
            raise SweepError(f"sweep.axes: field {field!r} cannot be an axis ({why})")
    budget_fields = {"data.num_tokens", "train.num_steps"} & axis_fields
    if budget_fields and any(sweep[a] for a in BUDGET_AXES):
        raise SweepError(f"sweep.axes: {sorted(budget_fields)} conflict with the data axis "
                         f"({'/'.join(BUDGET_AXES)}), which sets the run length")
    x = sweep.resources
    num_devices = x.processes * x.devices_per_process if x.devices_per_process > 0 else None
    resolved_base = resolve(base)
    kind = resolved_base.model.kind
    budget_kind = next((a for a in BUDGET_AXES if sweep[a]), None)
    if kind != "mlp" and budget_kind is not None and resolved_base.data.epochs != 1:
        raise SweepError(f"sweep: token/FLOP budgets need base.data.epochs == 1, got "
                         f"{resolved_base.data.epochs} (use data.num_tokens and data.epochs as "
                         "axes for repeated-data studies)")

    unique_cap = _unique_cap(sweep, resolved_base) if kind != "mlp" and budget_kind else None
    sizes: list[float | None] = list(sweep.sizes or ()) or [None]
    shapes: dict[float, tuple[dict[str, int], int]] = {}
    for target in sweep.sizes or ():
        shapes[target] = family_shape(resolved_base.model, target, sweep.family)

    combos = [dict(itertools.chain.from_iterable(
        [(field, values[i]) for field, values in group] for group, i in zip(groups, idx)))
        for idx in itertools.product(*[range(len(g[0][1])) for g in groups])]

    runs: list[Run] = []
    per_budget: dict[float, int] = {}
    too_small: dict[float, list[str]] = {}
    for target, combo, seed in tuning.grid_product(sweep, sizes, combos, list(sweep.seeds),
                                                   lr_steps):
        grid_steps, combo = tuning.split_point(combo)
        config = copy.deepcopy(base)
        if target is not None:
            for field, value in shapes[target][0].items():
                _set_field(config, f"model.{field}", value)
        for field, value in combo.items():
            try:
                _set_field(config, field, value)
            except (TypeError, ValueError) as err:
                raise SweepError(f"sweep.axes: field {field!r} cannot take value {value!r}: "
                                 f"{err}") from None
        config.seed = int(seed)
        try:
            config = resolve(config)
            nums = model_numbers(config)
        except (config_lib.ConfigError, ValueError) as err:
            raise SweepError(f"sweep: run with {combo or 'the base config'}"
                             f"{'' if target is None else f', N={target:g}'}: {err}") from None
        apply_rules(config, sweep, nums["n"], set(combo))
        combo = {**combo, **tuning.apply_point(config, sweep, grid_steps)}
        if (target is not None and kind == "transformer" and config.model.parameterization == "mup"
                and "model.mup_base_head_dim" not in combo):
            # the family keeps the head size: muP's attention scale must not shrink with width
            config.model.mup_base_head_dim = int(sweep.family.head_dim)
        nums = model_numbers(config)
        n, fpt, tps = nums["n"], nums["flops_per_token"], nums["tokens_per_step"]

        axes: dict[str, Any] = {}
        if target is not None:
            axes["N_target"] = target
        budgets: list[tuple[str, float]] = [(budget_kind, v) for v in sweep[budget_kind]] \
            if budget_kind else [("", 0.0)]
        for bkind, bvalue in budgets:
            run_cfg = copy.deepcopy(config)
            run_axes = dict(axes)
            budget = None
            if bkind == "tokens":
                steps = round(bvalue / tps)
                run_axes["D_target"] = bvalue
            elif bkind == "tokens_per_param":
                steps = round(bvalue * n / tps)
                run_axes["tokens_per_param"] = bvalue
            elif bkind == "flops":
                steps = round(bvalue / (fpt * tps))
                run_axes["C_budget"] = bvalue
                budget = float(bvalue)
                per_budget.setdefault(budget, 0)
            else:
                steps = config_lib.train_steps(run_cfg)
            if steps < sweep.min_steps:
                what = {"tokens": f"token budget D={format_count(bvalue)}",
                        "tokens_per_param": f"tokens_per_param={bvalue:g}",
                        "flops": f"FLOP budget C={format_flops(bvalue)}",
                        "": "the base step count"}[bkind]
                if bkind == "flops":
                    least = format_flops(sweep.min_steps * fpt * tps)
                    need = f"N={format_count(n)} needs >= {least}"
                    too_small.setdefault(budget, []).append(need)
                    if skipped is not None:
                        skipped.append(f"C={format_flops(bvalue)}: left out {need} "
                                       f"({steps} steps < min_steps={sweep.min_steps})")
                    continue
                raise SweepError(f"sweep: {what} is too small for the model with "
                                 f"N={format_count(n)}: {steps} steps of {tps} tokens < "
                                 f"sweep.min_steps={sweep.min_steps}")
            if bkind == "flops" and sweep.isoflop_window:
                lo, hi = (float(v) for v in sweep.isoflop_window)
                ratio = steps * tps / n
                if not lo <= ratio <= hi:
                    too_small.setdefault(budget, []).append(
                        f"N={format_count(n)} has D/N={ratio:.3g}")
                    line = (f"C={format_flops(bvalue)}: left out N={format_count(n)} "
                            f"(D/N={ratio:.3g} outside isoflop_window=[{lo:g}, {hi:g}])")
                    if skipped is not None and line not in skipped:  # once, not once per seed
                        skipped.append(line)
                    continue
            if bkind:
                if kind == "mlp":
                    run_cfg.train.num_steps = int(steps)
                    run_cfg.data.num_tokens = 0
                else:
                    run_cfg.data.num_tokens = int(steps * tps)
                    if unique_cap is not None:
                        _repeat_beyond(run_cfg, int(steps), tps, unique_cap)
            if budget is not None:
                per_budget[budget] += 1
            run_axes.update(combo)
            run_axes["seed"] = int(seed)
            steps = config_lib.train_steps(run_cfg) if kind != "mlp" or not bkind else steps
            d = int(steps * tps)
            name = run_name(run_axes, n, d, labels, budget)
            run_cfg.name = name
            try:
                config_lib.validate(run_cfg, num_devices)
            except config_lib.ConfigError as err:
                where = f" on {num_devices} devices" if num_devices else ""
                raise SweepError(f"sweep: run {name}{where}: {err}") from None
            shape = {k: int(run_cfg.model[k]) for k in
                     (("mlp_width", "mlp_depth") if kind == "mlp" else
                      ("n_layers", "d_model", "n_heads", "d_ff"))}
            if kind != "mlp":
                shape["d_ff"] = config_lib.d_ff(run_cfg.model)
            runs.append(Run(id=config_lib.config_hash(run_cfg), name=name, dir="", config=run_cfg,
                            axes=run_axes, n=n, n_total=nums["n_total"], d=d, c=fpt * d,
                            steps=int(steps), batch=int(run_cfg.train.batch_size),
                            lr=float(run_cfg.optim.lr), tokens_per_step=tps,
                            flops_per_token=fpt, shape=shape, budget=budget))

    for budget, count in per_budget.items():
        if count == 0:
            raise SweepError(f"sweep.flops: budget C={format_flops(budget)} fits no size "
                             f"({'; '.join(too_small.get(budget, []))} for "
                             f"sweep.min_steps={sweep.min_steps} steps"
                             + (f" and sweep.isoflop_window={tuple(sweep.isoflop_window)}"
                                if sweep.isoflop_window else "") + ")")
    if not runs:
        raise SweepError("sweep: expands to no runs")
    if budget_kind:  # budgets outermost: the cheapest budget's runs first
        order = {float(v): i for i, v in enumerate(sweep[budget_kind])}
        runs.sort(key=lambda r: order[float(r.axes.get(
            {"tokens": "D_target", "tokens_per_param": "tokens_per_param",
             "flops": "C_budget"}[budget_kind]))])
    _check_duplicates(runs)
    _assign_dirs(runs)
    return runs


@functools.lru_cache(maxsize=16)
def _split_tokens(config_json: str) -> int:
    from scaling import data as data_lib

    return int(data_lib.num_unique_tokens(config_lib.from_dict(json.loads(config_json))))


def _unique_cap(sweep: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> int | None:
    """Returns the unique-token cap of budgeted text runs (tokens), or None for no cap."""
    if sweep.max_unique_tokens == 0:
        return None
    if sweep.max_unique_tokens > 0:
        return int(sweep.max_unique_tokens)
    if base.data.source == "task":
        return None
    try:
        return _split_tokens(config_lib.to_json(base))
    except Exception as err:  # the corpus could not be read: say which field to set instead
        raise SweepError(f"sweep.max_unique_tokens=-1: cannot count the tokens of "
                         f"{base.data.tfds_name!r} ({type(err).__name__}: {err}); give a number "
                         "instead") from None


def _repeat_beyond(run_cfg: ml_collections.ConfigDict, steps: int, tps: int, cap: int) -> None:
    """Returns None; makes a run of `steps` x `tps` tokens repeat at most `cap` unique tokens.

    The unique budget is the cap rounded down to whole batches (one token of margin for the last
    next-token target) and epochs = steps / unique steps, so `train_steps` is still `steps`.
    """
    unique_steps = (cap - 1) // tps
    if unique_steps >= steps:
        return
    if unique_steps < 1:
        raise SweepError(f"sweep.max_unique_tokens: {cap} unique tokens are less than one batch "
                         f"of {tps} tokens")
    run_cfg.data.num_tokens = int(unique_steps * tps)
    epochs = steps / unique_steps
    run_cfg.data.epochs = epochs
    while config_lib.train_steps(run_cfg) > steps:  # float rounding must not add a step
        epochs = math.nextafter(epochs, 0.0)
        run_cfg.data.epochs = epochs


def _check_duplicates(runs: Iterable[Run]) -> None:
    by_id: dict[str, Run] = {}
    for run in runs:
        if run.id in by_id:
            raise SweepError(f"sweep: duplicate runs {by_id[run.id].name} and {run.name} have the "
                             f"same config (id {run.id}); remove the repeated axis values or sizes")
        by_id[run.id] = run


def _assign_dirs(runs: list[Run]) -> None:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1:  # different configs that format to the same name
            run.name = f"{run.name}-{run.id[:6]}"
            run.config.name = run.name
        run.dir = f"runs/{run.name}"


def sweep_to_json(sweep: ml_collections.ConfigDict) -> str:
    """Returns the sweep tree as key-sorted JSON (saved as sweep.json in the sweep root)."""
    return json.dumps(_plain(sweep), indent=2, sort_keys=True, default=str)


def load_sweep(path: str) -> ml_collections.ConfigDict:
    """Returns the sweep tree of a config file defining get_config() (or a sweep.json)."""
    import importlib.util
    import pathlib

    p = pathlib.Path(path)
    if p.suffix == ".json":
        values = json.loads(p.read_text())
        for axis in ("sizes",) + BUDGET_AXES:  # older sweep.json files wrote unset axes as []
            if values.get(axis) == []:
                values[axis] = None
        sweep = default_sweep()
        base = config_lib.from_dict(values.pop("base", {}))
        sweep.update(values)
        sweep.base = base
        return sweep
    spec = importlib.util.spec_from_file_location(f"_sweep_{p.stem}", p)
    if spec is None or spec.loader is None:
        raise SweepError(f"cannot load sweep config {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = module.get_config()
    from scaling.sweeps import tuning

    tuning.resolve_paths(sweep, p)
    return sweep
