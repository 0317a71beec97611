"""Host overhead of the train loop on the quickstart's smallest model, as ratios to the bare step.

    python benchmarks/loop_overhead.py [--steps 3000] [--data_dir DIR] [--quickstart ROOT]

In one process, on the quickstart's smallest shape (the `small` scale's first IsoFLOP run:
d_model 16, 1 layer, 16 x 64 tokens per step, associative recall mixed into the text):

  1. the bare step: the jitted AdamW train step alone on one fixed device batch, no data, no
     logging (tokens/s over `--bare_steps` steps after compilation; the compile time is the
     first call's);
  2. the data alone: batches/s that the training iterator delivers (its own prefetch thread);
  3. `scaling train` for `--steps` steps without evaluation or checkpoints (plain), and with the
     quickstart's schedule (log-spaced checkpoints to 512, one every 250 steps, evaluation at
     every checkpoint); the median logged tokens/s of the plain run and each run's wall time.

It prints the ratios with the targets: bare / logged median <= 1.15, and the scheduled run's
wall <= 1.5 x (steps at the bare step's rate + its compile time). The bare step is measured right
before each run (the machine may be shared), and each ratio uses the measurement next to it.
`--save_rounds N` then runs the scheduled run N more times with asynchronous and N with
synchronous checkpoint saves, interleaved, and prints both walls and their ratio.
`--quickstart ROOT` also prints the realised model FLOP/s of a finished quickstart experiment:
the runs' training FLOPs (C, from run.json) over the train phases' wall time (experiment.json).
The last line is all figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LOGGED_TARGET = 1.15
END_TO_END_TARGET = 1.5


def smallest_quickstart_config(data_dir: str, steps: int) -> Any:
    """Returns the resolved config of the quickstart's smallest run, `steps` steps long."""
    from experiments import quickstart
    from scaling.sweeps import spec

    runs = spec.expand(quickstart.sweeps("small", data_dir=data_dir)["isoflop"])
    run = min(runs, key=lambda r: (r.n, r.c))
    config = run.config
    config.data.num_tokens = steps * run.tokens_per_step
    config.data.epochs = 1.0
    return config


def bare_step(config: Any, steps: int) -> dict[str, float]:
    """Returns the bare jitted step's tokens/s (after compile) and compile seconds.

    Built from the model, optimizer and pure step alone (no loop code), so the same measurement
    runs against any version of the loop."""
    import jax

    from scaling import data as data_lib
    from scaling import sharding as sharding_lib
    from scaling.train import setup as setup_lib
    from scaling.train import step as step_lib

    trainer = setup_lib.build(config)
    with tempfile.TemporaryDirectory() as tmp:
        batch = jax.device_put(next(data_lib.make_train_iterator(config, tmp)))
    state = trainer.init_state()
    jitted = jax.jit(step_lib.make_train_step(trainer.model, trainer.tx, config),
                     donate_argnums=(0,))
    t = time.perf_counter()
    with sharding_lib.logical_context(trainer.mesh, trainer.rules):
        step = jitted.lower(state, batch).compile()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - t
    tokens = config.train.batch_size * config.data.seq_len
    return {"tokens_per_s": steps * tokens / elapsed, "compile_s": compile_s}


def data_alone(config: Any, batches: int) -> float:
    """Returns the training iterator's delivery rate alone, tokens/s."""
    from scaling import data as data_lib

    with tempfile.TemporaryDirectory() as tmp:
        it = data_lib.make_train_iterator(config, tmp)
        next(it)
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        elapsed = time.perf_counter() - t
    return batches * config.train.batch_size * config.data.seq_len / elapsed


def train_run(config: Any, root: pathlib.Path, name: str) -> dict[str, float]:
    """Trains `config` into root/name; returns wall seconds and the median logged tokens/s."""
    from scaling.train.loop import train

    workdir = root / name
    t = time.perf_counter()
    summary = train(config, workdir)
    wall = time.perf_counter() - t
    assert summary["status"] == "completed", summary
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    return {"wall_s": wall, "logged_median_tokens_per_s": statistics.median(logged)}


def compare_saves(config: Any, rounds: int) -> dict[str, list[float]]:
    """Returns the scheduled run's wall seconds with async and with sync checkpoint saves,
    `rounds` of each, interleaved."""
    walls: dict[str, list[float]] = {"async": [], "sync": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in walls:
                c = config.copy_and_resolve_references()
                c.checkpoint.async_save = name == "async"
                walls[name].append(train_run(c, pathlib.Path(tmp), f"{name}{r}")["wall_s"])
    return walls


def quickstart_flops_per_s(root: pathlib.Path) -> dict[str, float]:
    """Returns Σ training FLOPs of every run (tuning and IsoFLOP), the train phases' wall seconds
    and their ratio (FLOP/s), as the quickstart's report prints them."""
    from analysis.errors import InsufficientData
    from experiments import common

    try:
        return common.realised_throughput(root)
    except InsufficientData as err:
        raise SystemExit(f"--quickstart {root}: {err}; is it a finished quickstart root?") from None


def mark(ratio: float, target: float) -> str:
    """Returns '✓' if ratio <= target, else '✗'."""
    return "✓" if ratio <= target else "✗"


def main() -> int:
    """Runs the measurements and prints figures and ratios; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--bare_steps", type=int, default=1000)
    parser.add_argument("--data_dir", default="", help="TFDS data dir of the stdlib corpus")
    parser.add_argument("--quickstart", default="", help="root of a finished quickstart")
    parser.add_argument("--save_rounds", type=int, default=0,
                        help="rounds of the scheduled run with async vs sync checkpoint saves")
    args = parser.parse_args()
    sys.path.append(str(REPO_ROOT))  # an installed or PYTHONPATH copy of the project wins
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    out: dict[str, Any] = {"steps": args.steps}
    base = smallest_quickstart_config(args.data_dir, args.steps)
    tokens_per_step = base.train.batch_size * base.data.seq_len
    out["data_tokens_per_s"] = data_alone(base, 300)
    print(f"data alone: {out['data_tokens_per_s']:,.0f} tokens/s")

    plain = base.copy_and_resolve_references()
    plain.train.eval_at_checkpoints = False
    plain.train.eval_every = 0
    plain.checkpoint.log_spaced = False
    plain.checkpoint.every = 0
    plain.checkpoint.save_final = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in (("plain", plain), ("scheduled", base)):
            bare = bare_step(base, args.bare_steps)
            run = train_run(config, pathlib.Path(tmp), name)
            ideal = args.steps * tokens_per_step / bare["tokens_per_s"] + bare["compile_s"]
            out[name] = {"bare_tokens_per_s": bare["tokens_per_s"],
                         "bare_compile_s": bare["compile_s"], **run,
                         "end_to_end_tokens_per_s": args.steps * tokens_per_step / run["wall_s"],
                         "end_to_end_ratio": run["wall_s"] / ideal}
            r = out[name]
            print(f"{name}: bare step {r['bare_tokens_per_s']:,.0f} tokens/s (compile "
                  f"{r['bare_compile_s']:.1f} s); scaling train: median logged "
                  f"{r['logged_median_tokens_per_s']:,.0f} tokens/s, {args.steps} steps in "
                  f"{r['wall_s']:.1f} s = {r['end_to_end_tokens_per_s']:,.0f} tokens/s end to end")
    logged = out["plain"]["bare_tokens_per_s"] / out["plain"]["logged_median_tokens_per_s"]
    e2e = out["scheduled"]["end_to_end_ratio"]
    out["logged_ratio"] = logged
    print(f"bare / logged (plain run): {logged:.2f}x (target <= {LOGGED_TARGET}) "
          f"{mark(logged, LOGGED_TARGET)}")
    print(f"plain run wall / (bare steps + compile): {out['plain']['end_to_end_ratio']:.2f}x")
    print(f"scheduled run wall / (bare steps + compile): {e2e:.2f}x "
          f"(target <= {END_TO_END_TARGET}) {mark(e2e, END_TO_END_TARGET)}")
    if args.save_rounds > 0:
        out["save_walls_s"] = compare_saves(base, args.save_rounds)
        walls = out["save_walls_s"]
        ratio = statistics.median(walls["async"]) / statistics.median(walls["sync"])
        print(f"scheduled run, {args.save_rounds} interleaved rounds: async saves "
              f"{', '.join(f'{w:.1f}' for w in walls['async'])} s; sync saves "
              f"{', '.join(f'{w:.1f}' for w in walls['sync'])} s; median async / sync "
              f"{ratio:.3f}")
    if args.quickstart:
        q = quickstart_flops_per_s(pathlib.Path(args.quickstart))
        out["quickstart"] = q
        print(f"quickstart: {q['flops']:.3g} training FLOPs in {q['train_s']:.0f} s of training "
              f"= {q['flops_per_s'] / 1e9:.1f} GFLOP/s realised")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
