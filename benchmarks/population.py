"""Population training against separate runs: aggregate tokens/s for K = 1, 4, 16 members.

Usage: python benchmarks/population.py [--steps 30] [--ks 1,4,16] [--sizes quickstart,1m]
       [--data-dir DIR] [--shared-stream]

For each size, K runs that differ in peak LR and seed are trained twice through the real machinery
on the offline `stdlib_corpus/tiny` corpus, in this same process: once as one population
(`scaling.train.population.train_population`, one vmapped step) and once as K separate runs
(`scaling.train.loop.train`, one after another). Both write full run directories (metrics every
10 steps, log-spaced checkpoints, no evaluation). Aggregate tokens/s = K × steps × tokens per step
/ wall-clock seconds of the whole call (setup, compilation, data, logging and checkpoints
included: that is what a sweep pays), after an untimed warm-up of both paths. It ends with one line per size:
`speedup K=<largest K> N=<non-embedding params>: <ratio>x`.

`--shared-stream` also trains, for each K, the same population with every member on seed 0 (an LR
sweep: one data config and seed, so the members share one read of their data stream,
`scaling.train.population_data.Streams`) and prints its wall time against the K-stream
population's, as `shared stream K=<K>: <ratio>x` (K-stream wall / shared-stream wall).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import tempfile
import time

from scaling import config as config_lib
from scaling.data.corpora.stdlib_corpus import ensure_built
from scaling.train.loop import train
from scaling.train.population import train_population

SIZES = {  # name: (n_layers, d_model, n_heads, seq_len, batch)
    "quickstart": (2, 32, 4, 64, 16),  # N ~ 25k non-embedding, inside the quickstart's range
    "1m": (5, 128, 4, 128, 16),  # N ~ 1M non-embedding
}


def make_config(size: str, data_dir: pathlib.Path, steps: int, member: int,
                seed: int | None = None) -> config_lib.ml_collections.ConfigDict:
    """Returns member `member`'s config at a benchmark size (its own peak LR, and its own seed
    unless `seed` is given)."""
    n_layers, d_model, n_heads, seq_len, batch = SIZES[size]
    c = config_lib.default_config()
    c.data.tfds_name = "stdlib_corpus/tiny"
    c.data.tfds_data_dir = str(data_dir)
    c.data.seq_len = c.model.max_seq_len = seq_len
    c.model.n_layers, c.model.d_model, c.model.n_heads = n_layers, d_model, n_heads
    c.train.batch_size = batch
    c.train.num_steps = steps
    c.train.log_every = 10
    c.train.progress = False
    c.checkpoint.every = 0
    c.optim.lr = 3e-3 * (1.25 ** (member % 5))
    c.optim.warmup_steps = max(1, steps // 10)
    c.seed = member if seed is None else seed
    return c


def time_call(fn, *args, **kwargs) -> float:
    """Returns the wall-clock seconds `fn(*args, **kwargs)` takes."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    """Prints aggregate tokens/s of populations and separate runs, and their ratio, per size and K."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--ks", default="1,4,16")
    parser.add_argument("--sizes", default="quickstart,1m")
    parser.add_argument("--data-dir", default="", help="TFDS data dir (default: a temporary one)")
    parser.add_argument("--shared-stream", action="store_true",
                        help="also time each population as an LR sweep on one seed (one stream)")
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)
    ks = [int(k) for k in args.ks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        data_dir = pathlib.Path(args.data_dir) if args.data_dir else root / "tfds"
        ensure_built(data_dir, config="tiny")
        final = []
        for size in args.sizes.split(","):
            # warm-up, untimed: the process's one-time costs (imports, data, the matmul peak)
            warm = make_config(size, data_dir, 2, 0)
            train_population([warm], [root / f"{size}-warm-pop"])
            train(warm, root / f"{size}-warm-sep")
            ratio, n = 0.0, 0
            for k in ks:
                configs = [make_config(size, data_dir, args.steps, i) for i in range(k)]
                tokens = k * args.steps * configs[0].train.batch_size * configs[0].data.seq_len
                pop_dirs = [root / f"{size}-pop{k}-{i}" for i in range(k)]
                t_pop = time_call(train_population, configs, pop_dirs)
                t_sep = sum(time_call(train, c, root / f"{size}-sep{k}-{i}")
                            for i, c in enumerate(configs))
                n = json.loads((pop_dirs[0] / "run.json").read_text())["n_params_nonembed"]
                ratio = t_sep / t_pop
                print(f"{size} N={n} K={k}: population {tokens / t_pop:,.0f} tokens/s "
                      f"({t_pop:.1f} s), separate {tokens / t_sep:,.0f} tokens/s ({t_sep:.1f} s), "
                      f"ratio {ratio:.2f}x", flush=True)
                if args.shared_stream:
                    same = [make_config(size, data_dir, args.steps, i, seed=0) for i in range(k)]
                    t_same = time_call(train_population, same,
                                       [root / f"{size}-same{k}-{i}" for i in range(k)])
                    print(f"{size} N={n} K={k}: population on one seed {tokens / t_same:,.0f} "
                          f"tokens/s ({t_same:.1f} s); shared stream K={k}: "
                          f"{t_pop / t_same:.2f}x", flush=True)
            final.append(f"speedup K={ks[-1]} N={n}: {ratio:.2f}x")
        print("\n".join(final))


if __name__ == "__main__":
    main()
