"""Compression study: post-training quantization and pruning over a size × data family, and distillation.

Byte-level Transformer LMs on the stdlib corpus (the quickstart's `common.lm_base`, text only) are
trained at every size × token budget D. The text LM rather than the MLP/task family: its per-run
cost is dominated by process start-up and compilation at these sizes (a tiny run of 10 steps
takes about as long as a tiny MLP run), and its validation loss is the quantity the scaling laws
of quantization (Kumar et al. 2024) and sparsity (Frantar et al. 2023) speak about. After training,
a compression stage (`post_train`) writes every family run's final checkpoint, quantized (symmetric
absmax integers, one scale per output channel, through qwix) at several bit widths and
magnitude-pruned (one shot, unstructured at several sparsities and 2:4), into
ROOT/compressed/<run>-<scheme>/ run directories that are evaluated like any run; completed ones
are kept, so a rerun only does what is missing. A distillation arm trains the smallest sizes at
the largest D with the largest family model as teacher (`distill.teacher`, T = 1, mix 0.5), over
seeds; the same students trained alone are the family's seed-0 runs plus the `alone` sweep's
other seeds (same init and data order per seed, so the comparison is paired).

The analysis reports ΔL = L_quantized − L_float per checkpoint and bit width, the fit
ΔL = C·N^(−γ_N)·D^(γ_D)·e^(−k·bits) with bootstrap CIs over source runs (`analysis.compression`)
and whether ΔL grows with D at fixed N (γ_D's CI, and model-free the sign of the ΔL-vs-D slope
per size and bit width), loss vs sparsity per size, and the distillation gain (alone − distilled
final validation loss, nats/token) per student size with a paired bootstrap CI over seeds.
Frantar et al.'s L(S, N, D) is not fitted: it describes training at a sparsity, while the pruning
here is one-shot on a dense checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

import ml_collections

from experiments import common, compression_report

log = logging.getLogger(__name__)

NAME = "compression"
DESCRIPTION = ("size × data family of byte-level LMs, each quantized (int8/int4/int3) and pruned "
               "(25-75%, 2:4) after training, plus distillation from the largest model: ΔL(N, D, "
               "bits) fit, loss vs sparsity, distillation gain with CIs")
PAPER = ("Kumar et al. (2024), \"Scaling Laws for Precision\" (post-training quantization "
         "degradation growing with D); Frantar et al. (2023), \"Scaling Laws for Sparsely-"
         "Connected Foundation Models\"; Hinton, Vinyals, Dean (2015), \"Distilling the "
         "Knowledge in a Neural Network\"")
EXPECTED_OUTCOME = (
    "Quantization costs little at 8 bits and grows quickly below 4 bits (ΔL roughly exponential in "
    "−bits). Kumar et al. find that post-training quantization hurts more the longer a model of "
    "fixed size was trained (ΔL grows with D at fixed N; γ_D > 0) and less for larger models. "
    "One-shot magnitude pruning is nearly free at 25% and costs more at 50-75%; 2:4 costs about as "
    "much as 50% unstructured or more. A student trained on the teacher's distribution reaches a "
    "lower data loss than the same student alone when the teacher is much better; the gain is "
    "small at these token budgets and may shrink for students closer to the teacher.")
EXPECTED_RUNTIME = {"tiny": "903 s on 2 CPU cores at load 8-11 (7 runs, 16 compressed checkpoints)",
                    "small": "326 s on 2 CPU cores (15 runs, 63 compressed checkpoints)",
                    "medium": "~30 min on one GPU (not measured)",
                    "large": "GPU/TPU cluster (hours; not measured)"}
FIGURES = ("comp_loss_vs_bits", "comp_loss_vs_sparsity", "comp_distill_gain")

METRIC, COMPRESSED = compression_report.METRIC, compression_report.COMPRESSED


def settings(scale: str) -> dict[str, Any]:
    """Returns sizes (target non-embedding N), token budgets D, compressions, students and seeds."""
    return common.pick(
        scale,
        tiny=dict(sizes=(3.4e3, 6.7e3), tokens=(1280, 2560), quant=("int8", "int4"),
                  prune=(0.5, "2:4"), students=1, seeds=(0, 1)),
        small=dict(sizes=(6.7e3, 12.5e3, 25e3), tokens=(100_000, 200_000, 400_000),
                   quant=("int8", "int4", "int3"), prune=(0.25, 0.5, 0.75, "2:4"), students=2,
                   seeds=(0, 1)),
        medium=dict(sizes=(0.25e6, 0.5e6, 1e6, 2e6), tokens=(5e6, 1e7, 2e7),
                    quant=("int8", "int4", "int3"), prune=(0.25, 0.5, 0.75, "2:4"), students=2,
                    seeds=(0, 1, 2)),
        large=dict(sizes=(10e6, 20e6, 40e6, 80e6), tokens=(2e8, 4e8, 8e8),
                   quant=("int8", "int4", "int3"), prune=(0.25, 0.5, 0.75, "2:4"), students=3,
                   seeds=(0, 1, 2)),
    )


def _sweep(scale: str, name: str, base: ml_collections.ConfigDict, sizes: Any, tokens: Any,
           seeds: Any) -> ml_collections.ConfigDict:
    sw = common.lm_sweep(scale, name, base)
    sw.sizes = tuple(float(n) for n in sizes)
    sw.tokens = tuple(int(d) for d in tokens)
    sw.seeds = tuple(seeds)
    return sw


def sweeps(scale: str, data_dir: str = "", tfds_name: str = "",
           root: str | pathlib.Path | None = None) -> dict[str, ml_collections.ConfigDict]:
    """Returns {'family', 'alone', 'distill'} sweeps, in the order they train; the students of
    'distill' learn from the family's largest run at the largest D (its directory under `root`)."""
    from scaling.sweeps.spec import expand

    s = settings(scale)
    base = common.lm_base(scale, data_dir, tfds_name)
    base.checkpoint.max_to_keep = 0  # a study of final checkpoints: keep the log-spaced ones only
    family = _sweep(scale, "compression_family", base, s["sizes"], s["tokens"], (0,))
    d_max, n_max = max(s["tokens"]), max(s["sizes"])
    teacher = next(r for r in expand(family)
                   if r.axes["N_target"] == n_max and r.axes["D_target"] == d_max)
    prefix = pathlib.Path(root) / "family" if root is not None else pathlib.Path("family")
    students = sorted(s["sizes"])[:s["students"]]
    alone = _sweep(scale, "compression_alone", base.copy_and_resolve_references(), students,
                   (d_max,), [x for x in s["seeds"] if x != 0])
    distilled = base.copy_and_resolve_references()
    distilled.distill.teacher = str(prefix / teacher.dir)
    distill = _sweep(scale, "compression_distill", distilled, students, (d_max,), s["seeds"])
    return {"family": family, "alone": alone, "distill": distill}


# ------------------------------------------------------------------------- compression stage


def compressions(scale: str) -> list[tuple[Any, Any]]:
    """Returns the (QuantSpec | None, PruneSpec | None) pairs applied to every family checkpoint."""
    from scaling.compress.spec import prune_spec, quant_spec

    s = settings(scale)
    out: list[tuple[Any, Any]] = [(quant_spec(q), None) for q in s["quant"]]
    out += [(None, prune_spec(None, p) if isinstance(p, str) else prune_spec(float(p)))
            for p in s["prune"]]
    return out


def compressed_dir(root: pathlib.Path, source: pathlib.Path, quant: Any, prune: Any) -> pathlib.Path:
    """Returns ROOT/compressed/<source run>-<scheme> (':' of N:M patterns spelled 'of')."""
    from scaling.compress.run import tag

    return root / COMPRESSED / f"{source.name}-{tag(quant, prune).replace(':', 'of')}"


def _status(run_dir: pathlib.Path) -> str:
    try:
        return str(json.loads((run_dir / "status.json").read_text())["status"])
    except (OSError, json.JSONDecodeError, KeyError):
        return "missing"


def compress_family(root: str | pathlib.Path, scale: str, shard: int = 0, shards: int = 1,
                    progress: bool = False) -> int:
    """Writes and evaluates this shard's missing compressed checkpoints; returns how many it did.

    Every completed family run's final checkpoint gets every scheme of `compressions(scale)`; job i
    belongs to shard i mod shards. A compressed run that is complete and evaluated is kept; one
    with a checkpoint but no evaluation is evaluated; any other leftover directory (a stage killed
    mid-write) is removed and written again.
    """
    from scaling.compress.run import compress_run
    from scaling.evaluate import evaluate_run

    root = pathlib.Path(root)
    sources = [d for d in common.run_dirs(root / "family") if _status(d) == "completed"]
    jobs = [(src, q, p) for src in sources for q, p in compressions(scale)]
    done = 0
    for i, (src, quant, prune) in enumerate(jobs):
        if i % shards != shard:
            continue
        out = compressed_dir(root, src, quant, prune)
        steps = common.checkpoint_steps(out)
        if _status(out) == "completed" and steps:
            if steps[-1] not in common.evaluated_steps(out):
                evaluate_run(out, str(steps[-1]), progress=progress)
                done += 1
            continue
        if out.exists():
            shutil.rmtree(out)
        t0 = time.time()
        compress_run(src, out, quant=quant, prune=prune, evaluate=True, progress=progress)
        log.info("compressed %s in %.1f s", out.name, time.time() - t0)
        done += 1
    return done


def post_train(root: pathlib.Path, scale: str, progress: bool = False) -> None:
    """Returns None; runs the compression stage in worker processes (one per CPU worker).

    The workers see the family sweep's devices per process and its compilation cache, so the
    evaluation program compiled during training is reused for every compressed checkpoint.
    """
    from scaling.sweeps import launch

    sweep = sweeps(scale, tfds_name="stdlib_corpus", root=root)["family"]  # for its resources
    shards = common.default_workers(scale, "local")
    (root / COMPRESSED).mkdir(parents=True, exist_ok=True)
    env = launch.worker_env(dict(os.environ),
                            devices_per_process=int(sweep.resources.devices_per_process),
                            cache_dir=str(root / "family" / "compile_cache"))
    procs = []
    for shard in range(shards):
        code = (f"import logging; logging.basicConfig(level=logging.WARNING); "
                f"logging.getLogger('experiments').setLevel(logging.INFO); "
                f"from experiments import compression as c; "
                f"c.compress_family({str(root)!r}, {scale!r}, {shard}, {shards}, {bool(progress)})")
        log_path = root / COMPRESSED / f"stage-{shard}.log"
        with open(log_path, "w", encoding="utf-8") as fh:
            procs.append((log_path, subprocess.Popen([sys.executable, "-c", code], env=env,
                                                     stdout=fh, stderr=subprocess.STDOUT)))
    failed = [str(p) for p, proc in procs if proc.wait() != 0]
    if failed:
        raise common.ExperimentError(f"compression stage failed; see {', '.join(failed)}")


def analyze(root: pathlib.Path, out_dir: pathlib.Path, scale: str, bootstrap: int) -> dict[str, Any]:
    """Returns the ΔL table and fit, sparsity table and distillation gains; writes the report."""
    return compression_report.report(root, out_dir, settings(scale), bootstrap, sys.modules[__name__])
