"""Compress one checkpoint of a run into a new, self-describing run directory.

The output directory is a run directory like any other (config.json, run.json, status.json,
checkpoints/<step>/ with the train state, data position and config, and the tokenizer when the
source has one), so `scaling evaluate` and `scaling analyze` read it unchanged. Its run.json adds
a ``compression`` record: the source run (directory, id, name) and step, the quantization scheme
(bits, per-channel or group size, storage, library, bytes) and the pruning (pattern, target and
achieved sparsity, non-zero non-embedding parameters), and copies the source's axes plus
``quant_bits``, ``group_size``, ``sparsity``, ``prune_pattern``, ``source_run`` (its id) and
``source_step`` for analysis.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from scaling import checkpoint as ckpt_lib
from scaling import config as config_lib
from scaling import sharding as sharding_lib
from scaling.compress import prune as prune_lib
from scaling.compress import quantize as quant_lib
from scaling.compress.spec import CompressionError, PruneSpec, QuantSpec
from scaling.compress.weights import leaf_dict, replace_leaves, weight_views
from scaling.train import loop as loop_lib
from scaling.train import setup as setup_lib
from scaling.train import state as state_lib


def tag(quant: QuantSpec | None, prune: PruneSpec | None) -> str:
    """Returns a short name for a compression, e.g. "int4-g32", "s0.5", "2:4+int8"."""
    parts = []
    if prune is not None:
        parts.append(f"s{prune.sparsity:g}" if prune.pattern == "unstructured" else prune.pattern)
    if quant is not None:
        parts.append(quant.scheme + (f"-g{quant.group_size}" if quant.group_size else ""))
    return "+".join(parts)


def _read_source(source: pathlib.Path) -> tuple[Any, dict[str, Any]]:
    """Returns (resolved config, run.json) of a source run directory; errors name the file."""
    for name in ("config.json", "run.json"):
        if not (source / name).is_file():
            raise CompressionError(f"{source}: not a run directory (no {name})")
    config = config_lib.load_json(source / "config.json")
    try:
        run = json.loads((source / "run.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CompressionError(f"{source / 'run.json'}: not valid JSON ({err})") from None
    return config, run


def compress_run(source: str | pathlib.Path, out: str | pathlib.Path, *, step: int | None = None,
                 quant: QuantSpec | None = None, prune: PruneSpec | None = None,
                 evaluate: bool = True, progress: bool = False) -> dict[str, Any]:
    """Writes the compressed checkpoint `step` (default: latest) of `source` as run dir `out`.

    Pruning (if any) comes first, then quantization (zeros stay zero under symmetric quantization).
    Returns the new run.json; with `evaluate`, eval.jsonl holds the compressed checkpoint's metrics.
    """
    if quant is None and prune is None:
        raise CompressionError("nothing to do: give --quantize and/or --prune/--pattern")
    source, out = pathlib.Path(source), pathlib.Path(out)
    if out.resolve() == source.resolve():
        raise CompressionError(f"--out={out}: must differ from the source run directory")
    if (out / "checkpoints").exists() or (out / "run.json").exists():
        raise CompressionError(f"--out={out}: already holds a run; give a new directory")
    config, run = _read_source(source)
    trainer = setup_lib.build(config)
    with sharding_lib.logical_context(trainer.mesh, trainer.rules):
        boxed = state_lib.abstract_params(trainer.model, config)
    views = weight_views(trainer.abstract_state.params, nn.get_partition_spec(boxed))
    if not views:
        raise CompressionError(f"{source}: the model has no weights to compress")
    abstract = leaf_dict(trainer.abstract_state.params)
    if quant is not None:  # shape and dtype checks before any checkpoint is read
        quant_lib.check_quantizable(views, {p: abstract[p].dtype for p in views}, quant)
    if prune is not None and prune.n_m is not None:
        m = prune.n_m[1]
        bad = [p for p, v in views.items() if v.inputs % m]
        if bad:
            raise CompressionError(f"--pattern={prune.pattern}: {bad[0]} (shape {views[bad[0]].shape}) "
                                   f"has {views[bad[0]].inputs} inputs, not a multiple of {m}")
    checkpointer = ckpt_lib.Checkpointer(source, config)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise CompressionError(f"{source}: no checkpoint to compress")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise CompressionError(f"{source}: no checkpoint at step {step}; available: {steps}")
        state, data_state = checkpointer.restore(step, trainer.abstract_state, trainer.shardings)
    finally:
        checkpointer.close()

    leaves = {p: np.asarray(v) for p, v in leaf_dict(jax.device_get(state.params)).items()}
    record: dict[str, Any] = {"source_dir": str(source.resolve()), "source_id": run.get("id"),
                              "source_name": run.get("name"), "source_step": int(step)}
    if prune is not None:
        masks = prune_lib.magnitude_masks(leaves, views, prune)
        leaves.update(prune_lib.apply_masks(leaves, masks))
        record["prune"] = prune_lib.sparsity_record(masks, int(run["n_params_nonembed"]), prune)
    if quant is not None:
        quantized, record["quantize"] = quant_lib.quantize_weights(leaves, views, quant)
        leaves.update(quantized)
    new_params = replace_leaves(jax.device_get(state.params), {p: leaves[p] for p in views})
    state = state.replace(params=jax.device_put(new_params, trainer.shardings.params))

    name = f"{run.get('name') or source.name}-{tag(quant, prune)}"
    config = config_lib.from_dict(json.loads(config_lib.to_json(config)))
    config.name = name
    spec_blob = json.dumps({"source": run.get("id"), "step": int(step),
                            "quant": quant and quant.to_dict(), "prune": prune and prune.to_dict()},
                           sort_keys=True)
    axes = dict(run.get("axes") or {})
    axes.update({"source_run": run.get("id"), "source_step": int(step),
                 "quant_bits": quant.bits if quant else None,
                 "group_size": quant.group_size if quant else None,
                 "sparsity": record["prune"]["sparsity"] if prune else None,
                 "prune_pattern": prune.pattern if prune else None})
    new_run = {**run, "id": hashlib.sha256(spec_blob.encode()).hexdigest()[:10], "name": name,
               "axes": axes, "compression": record}
    out.mkdir(parents=True, exist_ok=True)
    if (source / "tokenizer").is_dir() and not (out / "tokenizer").exists():
        shutil.copytree(source / "tokenizer", out / "tokenizer")
    if jax.process_index() == 0:
        (out / "config.json").write_text(config_lib.to_json(config))
        loop_lib.write_json_atomic(out / "run.json", new_run)
    writer = ckpt_lib.Checkpointer(out, config)
    try:
        writer.save(step, state, data_state, config)
    finally:
        writer.close()
    loop_lib.write_status(out, "completed", step)
    if evaluate:
        from scaling.evaluate import evaluate_run

        evaluate_run(out, str(step), progress=progress)
    return new_run
