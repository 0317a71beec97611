"""How much time the sweep's shared JAX compilation cache saves: one run cold, then warm.

    python benchmarks/compile_cache.py [--sweep configs/sweeps/isoflop_tiny.py] [--steps 10]

Takes one run of a sweep (by default the largest model of isoflop_tiny), shortens it to `--steps`
steps, and trains it twice in fresh subprocesses against one new cache directory: first cold
(empty cache: everything is compiled and written), then warm (same programs loaded from the
cache), each into its own run directory. The warm run is the same run (a resumed or retried run,
another seed) unless `--warm_run` picks another run of the sweep: then only the programs the two
runs share hit the cache. The train step reads the run length and the LR schedule from the
optimizer state, so the same size at another IsoFLOP budget (or peak LR) shares the train and
evaluation programs; only the small initialization program, which writes those numbers, is
compiled again. Each child reports the seconds spent in XLA compilation
or cache loading (JAX's '/jax/core/compile/backend_compile_duration' events) and the wall time of
`train()`. Prints both and the cold/warm ratios; the last line is the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
HIT_EVENT = "/jax/compilation_cache/cache_hits"


def child(workdir: str, cache_dir: str, config_path: str) -> dict[str, float]:
    """Trains the run in config_path into workdir with the cache; returns timings (seconds)."""
    import jax

    from scaling import config as config_lib
    from scaling.sweeps import cache
    from scaling.train.loop import train

    cache.enable_compile_cache(cache_dir)
    totals = {"compile_s": 0.0, "compiles": 0, "cache_hits": 0}

    def on_duration(event: str, duration: float, **kwargs: object) -> None:
        if event == COMPILE_EVENT:
            totals["compile_s"] += duration
            totals["compiles"] += 1

    def on_event(event: str, **kwargs: object) -> None:
        if event == HIT_EVENT:
            totals["cache_hits"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    config = config_lib.from_dict(json.loads(pathlib.Path(config_path).read_text()))
    start = time.perf_counter()
    summary = train(config, workdir)
    totals["train_s"] = time.perf_counter() - start
    totals["steps"] = summary["step"]
    return totals


def _run_child(workdir: pathlib.Path, cache_dir: pathlib.Path, config_path: pathlib.Path) -> dict:
    env = dict(os.environ)
    parts = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("JAX_PLATFORMS", "cpu")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", str(workdir), str(cache_dir),
                          str(config_path)], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"child run failed with exit code {out.returncode}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def main() -> None:
    """Runs the cold and warm children and prints their timings and the cold/warm ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("WORKDIR", "CACHE", "CONFIG"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--sweep", default=str(REPO_ROOT / "configs/sweeps/isoflop_tiny.py"),
                        help="sweep config whose run is benchmarked")
    parser.add_argument("--run", type=int, default=-1, help="index of the run in the sweep")
    parser.add_argument("--warm_run", type=int, default=None,
                        help="index of the run trained warm (default: the same run)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per training")
    parser.add_argument("--tfds_name", default="", help="override data.tfds_name")
    parser.add_argument("--tfds_data_dir", default="", help="override data.tfds_data_dir")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    sys.path.insert(0, str(REPO_ROOT))
    from scaling import config as config_lib
    from scaling.sweeps import spec

    sweep = spec.load_sweep(args.sweep)
    if args.tfds_name:
        sweep.base.data.tfds_name = args.tfds_name
    if args.tfds_data_dir:
        sweep.base.data.tfds_data_dir = args.tfds_data_dir
    runs = spec.expand(sweep)
    run = runs[args.run]
    warm_run = run if args.warm_run is None else runs[args.warm_run]
    with tempfile.TemporaryDirectory(prefix="compile_cache_bench") as tmp:
        tmp_path = pathlib.Path(tmp)
        paths = []
        for label, r in (("cold", run), ("warm", warm_run)):
            config = r.config
            if r is run:  # a sibling run keeps its own length: that is what differs
                config.data.num_tokens = args.steps * r.tokens_per_step
            config.train.progress = False
            paths.append(tmp_path / f"{label}.json")
            paths[-1].write_text(config_lib.to_json(config))
        cache_dir = tmp_path / "cache"
        env_note = os.environ.get("XLA_FLAGS", "")
        cold = _run_child(tmp_path / "cold", cache_dir, paths[0])
        warm = _run_child(tmp_path / "warm", cache_dir, paths[1])
    ratio_compile = cold["compile_s"] / max(warm["compile_s"], 1e-9)
    ratio_train = cold["train_s"] / max(warm["train_s"], 1e-9)
    print(f"cold: run {run.name} (N={run.n}), {args.steps} steps; warm: "
          f"{'the same run' if warm_run is run else warm_run.name}; XLA_FLAGS={env_note!r}")
    print(f"{'':6} {'compile+load s':>15} {'programs':>9} {'cache hits':>10} {'train() s':>10} "
          f"{'process s':>10}")
    for label, r in (("cold", cold), ("warm", warm)):
        print(f"{label:6} {r['compile_s']:15.2f} {r['compiles']:9d} {r['cache_hits']:10d} "
              f"{r['train_s']:10.2f} {r['process_s']:10.2f}")
    saved = cold["compile_s"] - warm["compile_s"]
    print(f"compile time cold/warm: {ratio_compile:.1f}x ({saved:.2f} s saved per run); "
          f"train() wall time cold/warm: {ratio_train:.2f}x")
    print(json.dumps({"cold": cold, "warm": warm, "compile_ratio": ratio_compile,
                      "train_ratio": ratio_train}))


if __name__ == "__main__":
    main()
