"""Train-step throughput: tokens/s, model FLOP/s and MFU against the matmul peak measured now.

Usage: python benchmarks/train_throughput.py [--sizes tiny,small,medium] [--steps 10]
       [--dtype float32|bfloat16] [--attention einsum|xla|cudnn] [--set model.remat=dots ...]

For each model size it compiles the real sharded train step (all local devices on the `data` axis),
times `--steps` steps on synthetic tokens after a warm-up, and prints tokens/s, model FLOP/s
(analytic training FLOPs per token × tokens/s) and MFU = model FLOP/s / peak. The peak is the best
n×n matmul FLOP/s in the benchmark's dtype measured in this same process (n = 1024 on CPU, 8192 on
accelerators), so the ratio is meaningful on a noisy shared machine; on accelerators MFU against the
published dense bf16 peak is printed as well. Model FLOPs count the attention math whichever
`--attention` implementation computes it.

`gpt-small` (d256 · L4 · T256 · B16, N = 3.1M) and `gpt-large` (d512 · L8 · T256 · B8, N = 25M)
are GPT-2-style blocks as nanoGPT and nanodo build them (learned positions, LayerNorm, GELU
MLP of 4·d, tied embeddings, byte vocabulary of 256, float32, no dropout), for comparing with
those peers. Each line ends in `mfu=<fraction>`, computed as the peers do:
6·N·tokens/s over the best 2048³ float32 matmul measured in this process (on CPU; the
accelerator's usual size elsewhere). `tokens/CPU-s` divides by the process's CPU time instead of
wall time: on a CPU shared with other jobs it moves less than tokens/s.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from scaling import config as config_lib
from scaling import perf
from scaling.models import accounting
from scaling.train import setup as setup_lib

SIZES = {  # name: (n_layers, d_model, n_heads, seq_len, batch)
    "tiny": (2, 64, 4, 128, 16),
    "small": (4, 128, 4, 256, 16),
    "medium": (6, 256, 8, 256, 16),
    "large": (12, 768, 12, 1024, 32),
    "gpt-small": (4, 256, 4, 256, 16),
    "gpt-large": (8, 512, 8, 256, 8),
}
GPT2_STYLE = {"vocab_size": 256, "positions": "learned", "norm": "layernorm", "norm_eps": 1e-5,
              "mlp": "gelu", "tie_embeddings": True}
CPU_PEAK_MATMUL = 2048  # the peers' MFU denominator: the best 2048³ float32 matmul


def make_config(name: str, dtype: str,
                attention: str = "einsum") -> config_lib.ml_collections.ConfigDict:
    """Returns the config of a standard benchmark size (byte vocab 320)."""
    n_layers, d_model, n_heads, seq_len, batch = SIZES[name]
    c = config_lib.default_config()
    c.model.vocab_size = 320
    if name.startswith("gpt-"):
        c.model.update(GPT2_STYLE)
    c.model.n_layers, c.model.d_model, c.model.n_heads = n_layers, d_model, n_heads
    c.model.max_seq_len = c.data.seq_len = seq_len
    c.model.dtype = dtype
    c.model.attention_impl = attention
    c.train.batch_size = batch
    c.train.num_steps = 1000
    return c


def apply_overrides(config: config_lib.ml_collections.ConfigDict, overrides: list[str]
                    ) -> config_lib.ml_collections.ConfigDict:
    """Returns `config` with each 'group.field=value' override applied (typed as the field)."""
    for item in overrides:
        field, sep, raw = item.partition("=")
        group, _, key = field.rpartition(".")
        parent = config
        for part in filter(None, group.split(".")):
            parent = parent[part]
        if not sep or key not in parent:
            raise ValueError(f"--set {item!r}: expected an existing field as 'group.field=value'")
        old = parent[key]
        parent[key] = (raw.lower() in ("1", "true") if isinstance(old, bool)
                       else type(old)(raw))
    return config


def bench(config: config_lib.ml_collections.ConfigDict, steps: int,
          peaks: dict[str, float]) -> dict:
    """Returns measured tokens/s, model FLOP/s and MFU against each of `peaks` for one config."""
    config_lib.validate(config, jax.device_count())
    trainer = setup_lib.build(config)
    rng = np.random.default_rng(0)
    shape = (config.train.batch_size, config.data.seq_len)
    batch = {"inputs": rng.integers(0, 256, shape).astype(np.int32),
             "targets": rng.integers(0, 256, shape).astype(np.int32),
             "weights": np.ones(shape, np.float32)}
    step = trainer.jit_train_step(batch)
    state, m = step(trainer.init_state(), batch)
    jax.block_until_ready(m)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    tokens_per_s = steps * shape[0] * shape[1] / elapsed
    flops_per_token = accounting.flops_per_token(config.model, config.data.seq_len)
    model_flops = tokens_per_s * flops_per_token
    n = accounting.param_counts(config.model)["non_embedding"]
    return {"N": n, "tokens_per_s": tokens_per_s, "model_flops_per_s": model_flops,
            "mfu": {name: model_flops / peak for name, peak in peaks.items()},
            "mfu_6n": 6.0 * n * tokens_per_s / peaks["measured"],
            "tokens_per_cpu_s": steps * shape[0] * shape[1] / cpu_s}


def main() -> None:
    """Prints a throughput table for the chosen sizes."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,small,medium")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attention", default="einsum", choices=["einsum", "xla", "cudnn"],
                        help="model.attention_impl")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override, e.g. model.remat=dots (repeatable)")
    args = parser.parse_args()
    device = jax.local_devices()[0]
    n = CPU_PEAK_MATMUL if device.platform == "cpu" else perf.matmul_size(device)
    peaks = {"measured": perf.total_peak_flops(perf.measure_matmul_peak(n, args.dtype))}
    print(f"devices: {jax.device_count()} x {device.device_kind}; attention {args.attention}; "
          f"peak {peaks['measured']:.3g} FLOP/s (measured {args.dtype} {n}³ matmul)")
    if device.platform != "cpu" and device.device_kind in perf.KNOWN_PEAKS:
        peaks["published"] = perf.total_peak_flops(perf.KNOWN_PEAKS[device.device_kind])
        print(f"published dense bf16 peak {peaks['published']:.3g} FLOP/s")
    print(f"{'size':>9} {'N':>10} {'tokens/s':>12} {'model FLOP/s':>14} "
          + " ".join(f"{'MFU ' + name:>14}" for name in peaks)
          + f" {'tokens/CPU-s':>13}  mfu=6·N·tokens/s / peak")
    for name in args.sizes.split(","):
        config = apply_overrides(make_config(name, args.dtype, args.attention), args.set)
        r = bench(config, args.steps, peaks)
        print(f"{name:>9} {r['N']:>10.3g} {r['tokens_per_s']:>12.4g} "
              f"{r['model_flops_per_s']:>14.4g} "
              + " ".join(f"{r['mfu'][p]:>14.1%}" for p in peaks)
              + f" {r['tokens_per_cpu_s']:>13.4g}  mfu={r['mfu_6n']:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
