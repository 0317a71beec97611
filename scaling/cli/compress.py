"""`scaling compress RUN_DIR[:STEP] --out DIR [--quantize int4 --group_size 32] [--prune 0.5]`."""

from __future__ import annotations

import pathlib

from absl import flags

from scaling.cli import common

DESCRIPTION = """Compresses one checkpoint of a run (default: its latest; RUN_DIR:STEP picks one) into a
new run directory --out that evaluates like any other run. Its run.json records the source run and
step, the quantization scheme (bits, per-channel or group size) and the pruning (pattern, sparsity,
non-zero non-embedding parameters); its eval.jsonl holds the compressed checkpoint's metrics.

Quantized and pruned are the matrix weights outside the embedding (attention and MLP weights);
embeddings, the unembedding and norms stay in float. Pruning comes first, then quantization.

  --quantize int8|int4|int3|int2   symmetric absmax integer weights through qwix, one scale per
                                   output channel, or per --group_size consecutive inputs
  --prune S --pattern unstructured one-shot magnitude pruning of every layer to sparsity S in [0, 1)
  --pattern N:M                    keep the N largest of every M consecutive inputs (e.g. 2:4)

usage: scaling compress RUN_DIR[:STEP] --out DIR [--quantize SCHEME [--group_size G]]
                        [--prune S] [--pattern unstructured|N:M] [--noevaluate]"""


def parse_source(arg: str) -> tuple[pathlib.Path, int | None]:
    """Returns (run directory, step or None) from RUN_DIR or RUN_DIR:STEP."""
    head, sep, tail = arg.rpartition(":")
    if sep and tail.isdigit() and head:
        return pathlib.Path(head), int(tail)
    if sep and head and not pathlib.Path(arg).exists():
        raise common.UsageError(f"{arg}: expected RUN_DIR or RUN_DIR:STEP with an integer STEP")
    return pathlib.Path(arg), None


def main(argv: list[str]) -> int:
    """Runs `scaling compress`; returns the exit code."""
    fv = common.new_flag_values(argv, with_config=False)
    flags.DEFINE_string("out", None, "The new run directory for the compressed checkpoint.",
                        flag_values=fv)
    flags.DEFINE_string("quantize", None, "Weight quantization scheme: int8, int4, int3 or int2.",
                        flag_values=fv)
    flags.DEFINE_integer("group_size", 0, "Inputs per quantization scale (0: one scale per output "
                         "channel).", flag_values=fv)
    flags.DEFINE_string("storage", None, "Integer container of the quantized values (int8, int4, "
                        "int2; default: the smallest that holds the scheme's bits).", flag_values=fv)
    flags.DEFINE_float("prune", None, "Target sparsity in [0, 1) of one-shot magnitude pruning.",
                       flag_values=fv)
    flags.DEFINE_string("pattern", None, "Pruning pattern: unstructured (default with --prune) or "
                        "N:M such as 2:4.", flag_values=fv)
    flags.DEFINE_boolean("evaluate", True, "Evaluate the compressed checkpoint into eval.jsonl.",
                         flag_values=fv)
    rest = common.parse(fv, argv, DESCRIPTION)
    if rest is None:
        return 0
    if len(rest) != 1:
        return common.fail("give exactly one RUN_DIR[:STEP] (see --help)")
    common.setup_logging(fv.verbose)

    def run() -> int:
        from scaling.compress import CompressionError, compress_run, prune_spec, quant_spec

        source, step = parse_source(rest[0])
        if not source.is_dir():
            raise common.UsageError(f"{source}: not a directory (give a run directory)")
        if not fv.out:
            raise common.UsageError("--out: give the new run directory")
        try:
            quant = quant_spec(fv.quantize, fv.group_size, fv.storage) if fv.quantize else None
            if quant is None and (fv.group_size or fv.storage):
                raise CompressionError("--group_size and --storage need --quantize")
            prune = None
            if fv.prune is not None or fv.pattern is not None:
                prune = prune_spec(fv.prune, fv.pattern or "unstructured")
            new_run = compress_run(source, fv.out, step=step, quant=quant, prune=prune,
                                   evaluate=fv.evaluate)
        except CompressionError as err:
            raise common.UsageError(str(err)) from None
        rec = new_run["compression"]
        parts = [f"{fv.out}: {new_run['name']} from step {rec['source_step']}"]
        if "quantize" in rec:
            q = rec["quantize"]
            parts.append(f"{q['bits']}-bit {q['granularity']} ({q['weight_bytes']} bytes of "
                         f"{q['float32_bytes']} in float32)")
        if "prune" in rec:
            p = rec["prune"]
            parts.append(f"sparsity {p['sparsity']:.4g}, non-zero N {p['n_params_nonembed_nonzero']}")
        print("; ".join(parts))
        return 0

    return common.run_with_errors(run, fv.debug)
