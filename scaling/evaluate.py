"""Evaluation of checkpoints: validation loss and capability-task metrics -> `eval.jsonl` rows.

Metrics (one row per (step, metric)):
    val/loss              mean next-token cross-entropy on the held-out split, nats/token
    val/token_accuracy    fraction of held-out tokens predicted exactly (argmax)
    val/bits_per_byte     the same cross-entropy in bits per UTF-8 byte of the held-out text:
                          nats summed over all predicted tokens / ln 2 / the bytes those tokens
                          stand for (`Tokenizer.token_bytes`; EOS separators count 0 bytes but
                          their loss counts), comparable across tokenizers
    val/bytes_per_token   mean UTF-8 bytes per predicted held-out token
    <task>/exact_match    fraction of task examples whose whole answer span is argmax-correct
    <task>/answer_logprob mean log-probability per answer token, nats/token (the continuous
                          metric of Schaeffer et al. 2023)
    <task>/answer_seq_logprob  mean over examples of the summed log-probability of the answer, nats
    <task>/answer_tokens  mean answer length ℓ, tokens (exact match ≈ exp(ℓ · answer_logprob))
    <task>/token_accuracy fraction of answer tokens predicted exactly
    <task>/subtask_<i>/exact_match     exact match of subtask i's examples (multitask data such
                                       as sparse parity)
    <task>/subtask_<i>/answer_logprob  mean log-probability per answer token of subtask i's
                                       examples, nats/token (minus the subtask's cross-entropy;
                                       token-weighted, these average to <task>/answer_logprob)
Every row also carries step, tokens, flops, n_params and n_params_nonembed, so a row is
self-describing for the analysis.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np

from scaling import checkpoint as ckpt_lib
from scaling import config as config_lib
from scaling import data as data_lib
from scaling import metrics_writer
from scaling import sharding as sharding_lib
from scaling.train import setup as setup_lib
from scaling.train import step as step_lib

log = logging.getLogger(__name__)

DEVICE_KEYS = ("inputs", "targets", "weights")


def _pad_rows(batch: dict[str, np.ndarray], multiple: int) -> tuple[dict[str, np.ndarray], int]:
    """Returns the batch padded with zero-weight rows to a multiple of `multiple`, and its size."""
    n = len(batch["inputs"])
    pad = (-n) % multiple
    if pad == 0:
        return batch, n
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        out[k] = np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
    return out, n


def _to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh, rules: Any) -> dict:
    """Returns device arrays for a batch that every process holds in full."""
    out = {}
    for k in DEVICE_KEYS:
        v = np.asarray(batch[k])
        sharding = sharding_lib.batch_sharding(mesh, rules, v.ndim)
        out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
    return out


class Evaluator:
    """Holds the fixed evaluation data and a compiled eval step for one resolved config."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path | None,
                 mesh: jax.sharding.Mesh, model: Any, eval_step: Callable | None = None):
        self.config = config
        self.mesh = mesh
        self.rules = config_lib.logical_rules(config)
        self.model = model
        self.task = config.data.task.name
        shape = config_lib.mesh_shape(config, mesh.devices.size)
        self.dp = shape["data"] * shape["fsdp"]
        self.val_batches = (data_lib.make_eval_batches(config, workdir)
                            if config.data.source != "task" else [])
        self.val_bytes = 0.0
        if self.val_batches:
            table_V = data_lib.make_tokenizer(config, workdir).token_bytes()
            self.val_bytes = sum(batch_bytes(b, table_V) for b in self.val_batches)
        self.task_batches = data_lib.make_task_eval(config, workdir) if self.task else []
        self._step = eval_step if eval_step is not None else jit_eval_step(model)

    def _run(self, params: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        padded, n = _pad_rows(batch, self.dp)
        with sharding_lib.logical_context(self.mesh, self.rules):
            out = self._step(params, _to_global(padded, self.mesh, self.rules))
        out = jax.device_get(out)
        return {k: (v[:n] if np.ndim(v) else v) for k, v in out.items()}

    def metrics(self, params: Any) -> dict[str, float]:
        """Returns {metric name: value} for `params` (see the module docstring for units)."""
        result: dict[str, float] = {}
        if self.val_batches:
            nll = weight = correct = 0.0
            for b in self.val_batches:
                o = self._run(params, b)
                nll += float(o["nll_sum"])
                weight += float(o["weight_sum"])
                correct += float(o["correct_sum"])
            result["val/loss"] = nll / max(weight, 1.0)
            result["val/token_accuracy"] = correct / max(weight, 1.0)
            if self.val_bytes > 0:
                result["val/bits_per_byte"] = nll / math.log(2.0) / self.val_bytes
                result["val/bytes_per_token"] = self.val_bytes / max(weight, 1.0)
        if self.task_batches:
            lp, ntok, corr, exact, sub = [], [], [], [], []
            for b in self.task_batches:
                o = self._run(params, b)
                lp.append(o["example_logprob"])
                ntok.append(o["example_tokens"])
                corr.append(o["example_correct"])
                exact.append(o["example_correct"] >= o["example_tokens"] - 0.5)
                if "subtask" in b:
                    sub.append(np.asarray(b["subtask"]))
            lp, ntok, corr = map(np.concatenate, (lp, ntok, corr))
            exact = np.concatenate(exact).astype(np.float64)
            keep = ntok > 0
            t = self.task
            result[f"{t}/exact_match"] = float(np.mean(exact[keep]))
            result[f"{t}/answer_logprob"] = float(np.sum(lp[keep]) / np.sum(ntok[keep]))
            result[f"{t}/answer_seq_logprob"] = float(np.mean(lp[keep]))
            result[f"{t}/answer_tokens"] = float(np.mean(ntok[keep]))
            result[f"{t}/token_accuracy"] = float(np.sum(corr[keep]) / np.sum(ntok[keep]))
            if sub:
                sub_ids = np.concatenate(sub)
                for i in np.unique(sub_ids[keep]):
                    mask = keep & (sub_ids == i)
                    result[f"{t}/subtask_{int(i)}/exact_match"] = float(np.mean(exact[mask]))
                    result[f"{t}/subtask_{int(i)}/answer_logprob"] = float(
                        np.sum(lp[mask]) / np.sum(ntok[mask]))
        return result

    def rows(self, params: Any, step: int, run: dict[str, Any]) -> list[dict[str, Any]]:
        """Returns eval.jsonl rows for `params` at `step` of the run described by `run`."""
        tokens = step * run["tokens_per_step"]
        base = {"step": int(step), "tokens": int(tokens),
                "flops": float(tokens * run["flops_per_token"]),
                "n_params": run["n_params"], "n_params_nonembed": run["n_params_nonembed"]}
        return [dict(base, metric=k, value=v) for k, v in self.metrics(params).items()]

    __call__ = rows


def batch_bytes(batch: dict[str, np.ndarray], token_bytes_V: np.ndarray) -> float:
    """Returns the UTF-8 bytes the weighted targets of a text batch stand for (bytes).

    token_bytes_V: bytes per token id (`Tokenizer.token_bytes`).
    """
    targets = np.asarray(batch["targets"])
    if targets.size and int(targets.max()) >= len(token_bytes_V):
        raise ValueError(f"evaluation target id {int(targets.max())} is outside the tokenizer's "
                         f"{len(token_bytes_V)} ids")
    return float(np.sum(np.asarray(batch["weights"], np.float64) * token_bytes_V[targets]))


def select_steps(available: list[int], steps: str) -> list[int]:
    """Returns the checkpoint steps chosen by 'all', 'last' or a comma-separated list."""
    if not available:
        return []
    if steps == "all":
        return available
    if steps == "last":
        return [available[-1]]
    wanted = [int(s) for s in steps.split(",") if s.strip()]
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise ValueError(f"no checkpoint at steps {missing}; available: {available}")
    return wanted


def evaluate_run(run_dir: str | pathlib.Path, steps: str = "all",
                 progress: bool = True) -> list[dict[str, Any]]:
    """Evaluates the chosen checkpoints of a run; rewrites their rows in eval.jsonl; returns rows."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    config = config_lib.from_dict(json.loads((run_dir / "config.json").read_text()))
    run = json.loads((run_dir / "run.json").read_text())
    trainer = setup_lib.build(config)
    checkpointer = ckpt_lib.Checkpointer(run_dir, config)
    chosen = select_steps(checkpointer.all_steps(), steps)
    evaluator = Evaluator(config, run_dir, trainer.mesh, trainer.model)
    rows: list[dict[str, Any]] = []
    from tqdm.auto import tqdm

    try:
        for step in tqdm(chosen, desc=f"evaluate {run_dir.name}", disable=not progress):
            params = checkpointer.restore_params(step, trainer.abstract_state,
                                                trainer.shardings)
            rows.extend(evaluator.rows(params, step, run))
    finally:
        checkpointer.close()
    if jax.process_index() == 0:
        replace_rows(run_dir / "eval.jsonl", rows, set(chosen))
    return rows


def replace_rows(path: pathlib.Path, rows: Iterable[dict[str, Any]], steps: set[int],
                 metric_prefix: str = "") -> None:
    """Rewrites eval.jsonl atomically: old rows of `steps` are replaced by `rows`.

    With metric_prefix, only old rows whose metric starts with it are replaced (e.g. "harness/").
    """
    kept: list[str] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                old = json.loads(line)
                if (int(old.get("step", -1)) not in steps
                        or not str(old.get("metric", "")).startswith(metric_prefix)):
                    kept.append(line)
            except (json.JSONDecodeError, ValueError, AttributeError):
                log.warning("%s: dropping an unreadable line", path)
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in kept:
            f.write(line + "\n")
    writer = metrics_writer.JsonlWriter(tmp)
    writer.write_many(rows)
    writer.close()
    tmp.replace(path)


def jit_eval_step(model: Any) -> Callable:
    """Returns the jitted eval step of `model` (see `step.make_eval_step`); evaluators of one
    model may share it, so that its program compiles once (a population's members do)."""
    return jax.jit(step_lib.make_eval_step(model))


def make_inline_evaluator(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                          mesh: jax.sharding.Mesh, model: Any,
                          eval_step: Callable | None = None) -> Callable | None:
    """Returns an evaluator for the loop if `train.eval_at_checkpoints` or `train.eval_every`
    (with `eval_step`, a shared `jit_eval_step(model)`, when given)."""
    if not (config.train.eval_at_checkpoints or config.train.eval_every > 0):
        return None
    return Evaluator(config, workdir, mesh, model, eval_step)
