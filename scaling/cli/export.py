"""`scaling export RUN_DIR[:STEP] --format hf OUT_DIR`: a checkpoint as a Hugging Face model."""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from scaling.cli import common

DESCRIPTION = """\
Writes one checkpoint of a run (the latest, or RUN_DIR:STEP) as a Hugging Face model directory:
config.json, model.safetensors (float32) and, where the run's tokenizer can be expressed exactly
(byte-level, BPE, a Hugging Face tokenizer), the tokenizer files. Load it with
transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR) (needs PyTorch).

RMSNorm/RoPE/SwiGLU models (the default) export as Llama, LayerNorm/learned-position/GELU models as
GPT-2; other combinations have no equivalent HF architecture and are refused. muP's attention scale
and output multiplier are folded into the weights.
"""


def parse_source(text: str) -> tuple[pathlib.Path, int | None]:
    """Returns (run directory, checkpoint step or None for the latest) from RUN_DIR[:STEP]."""
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit():
        return pathlib.Path(head), int(tail)
    if sep and head and not pathlib.Path(text).exists():
        raise common.UsageError(f"{text}: STEP after ':' must be a checkpoint step (an integer)")
    return pathlib.Path(text), None


def check_source(run_dir: pathlib.Path, step: int | None) -> None:
    """Returns None; raises a UsageError naming the directory or step if it cannot be exported."""
    from scaling.cli.evaluate import checkpoint_steps
    from scaling.export import hf
    from scaling.export.run import read_run_config

    if not run_dir.is_dir():
        raise common.UsageError(f"{run_dir}: not a directory (give a run directory)")
    if not (run_dir / "config.json").exists():
        raise common.UsageError(f"{run_dir}: not a run directory (no config.json)")
    try:
        hf.architecture(read_run_config(run_dir).model)
    except hf.ExportError as err:
        raise common.UsageError(f"{run_dir}: cannot export: {err}") from None
    available = checkpoint_steps(run_dir)
    if not available:
        raise common.UsageError(f"{run_dir}: has no checkpoints to export")
    if step is not None and step not in available:
        raise common.UsageError(f"{run_dir}: no checkpoint at step {step}; available: {available}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `scaling export`; returns the exit status (0 ok, 2 bad input)."""
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog=argv[0] if argv else "scaling export",
                                     description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="RUN_DIR[:STEP]",
                        help="run directory, optionally with a checkpoint step (default: latest)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to write the model into")
    parser.add_argument("--format", choices=("hf",), default="hf",
                        help="output format: hf (Hugging Face transformers; the default)")
    parser.add_argument("--debug", action="store_true", help="print stack traces of errors")
    args = parser.parse_args(argv[1:])
    common.setup_logging(False)

    def run() -> int:
        run_dir, step = parse_source(args.source)
        check_source(run_dir, step)
        from scaling.export.run import export_run

        result = export_run(run_dir, args.out_dir, step, args.format)
        print(f"exported {run_dir} step {result.step} as {result.architecture} to "
              f"{result.out_dir}")
        for note in result.notes:
            print(f"  {note}")
        return 0

    return common.run_with_errors(run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
