"""Export one checkpoint of a run directory as a Hugging Face model directory.

Writes OUT_DIR/config.json, OUT_DIR/model.safetensors (float32, via `safetensors.numpy`), the
tokenizer files where the run's tokenizer can be expressed (`scaling.export.tokenizer`), and
OUT_DIR/scaling_export.json recording the source run, step and what was folded or left out.
Loading needs `transformers` with PyTorch (`AutoModelForCausalLM.from_pretrained(OUT_DIR)`);
writing needs neither.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from typing import Any

import ml_collections

from scaling import config as config_lib
from scaling.export import hf
from scaling.export import tokenizer as tokenizer_export
from scaling.models import mup

FORMATS = ("hf",)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_run` wrote: directory, step, HF architecture and notes for the user."""

    out_dir: pathlib.Path
    step: int
    architecture: str
    notes: list[str]


def read_run_config(run_dir: pathlib.Path) -> ml_collections.ConfigDict:
    """Returns the resolved config saved in run_dir/config.json (a clear error if absent)."""
    path = run_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.json)")
    return config_lib.load_json(path)


def restore_params(run_dir: pathlib.Path, config: ml_collections.ConfigDict,
                   step: int | None) -> tuple[dict[str, Any], int]:
    """Returns (the checkpoint's parameters as a nested dict of numpy arrays, its step)."""
    import flax.linen as nn
    import jax

    from scaling import checkpoint as ckpt_lib
    from scaling.train import setup as setup_lib

    # Restored replicated on this machine's devices, whatever mesh the run trained on.
    local = copy.deepcopy(config)
    local.mesh.data, local.mesh.fsdp, local.mesh.tensor = -1, 1, 1
    trainer = setup_lib.build(local)
    checkpointer = ckpt_lib.Checkpointer(run_dir, config)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise FileNotFoundError(f"{run_dir}: has no checkpoints to export")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ValueError(f"{run_dir}: no checkpoint at step {step}; available: {steps}")
        params = checkpointer.restore_params(step, trainer.abstract_state, trainer.shardings)
    finally:
        checkpointer.close()
    return jax.device_get(nn.meta.unbox(params)), int(step)


def write_hf(params: dict[str, Any], m: ml_collections.ConfigDict, out_dir: pathlib.Path,
             special_ids: dict[str, int] | None = None) -> str:
    """Writes config.json and model.safetensors for model `m` into out_dir; returns the arch."""
    from safetensors.numpy import save_file

    arch = hf.architecture(m)
    tensors = hf.hf_tensors(params, m)
    cfg = hf.hf_config(m, special_ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return arch


def export_run(run_dir: str | pathlib.Path, out_dir: str | pathlib.Path, step: int | None = None,
               fmt: str = "hf") -> ExportResult:
    """Exports checkpoint `step` (default: the latest) of a run; returns what was written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r}: must be one of {list(FORMATS)}")
    run_dir, out_dir = pathlib.Path(run_dir), pathlib.Path(out_dir)
    config = read_run_config(run_dir)
    m = config.model
    arch = hf.architecture(m)  # unsupported models fail before anything is restored or written
    params, step = restore_params(run_dir, config, step)
    write_hf(params, m, out_dir, tokenizer_export.special_ids(config, run_dir))
    notes = [tokenizer_export.write_tokenizer(config, run_dir, out_dir)]
    if hf.query_factor(m) != 1.0:
        notes.append(f"attention scale {mup.attention_scale(m):.6g} folded into q weights "
                     f"(factor {hf.query_factor(m):.6g})")
    if mup.output_multiplier(m) != 1.0:
        notes.append(f"muP output multiplier {mup.output_multiplier(m):.6g} folded into lm_head"
                     + (" (untied from the embedding)" if m.tie_embeddings else ""))
    if m.dtype != "float32" or m.param_dtype != "float32":
        notes.append(f"weights written as float32 (the run computed in {m.dtype}, stored "
                     f"{m.param_dtype})")
    record = {"run_dir": str(run_dir.resolve()), "step": step, "architecture": arch,
              "format": fmt, "notes": notes}
    (out_dir / "scaling_export.json").write_text(json.dumps(record, indent=2) + "\n",
                                                 encoding="utf-8")
    return ExportResult(out_dir, step, arch, notes)
