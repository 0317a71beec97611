"""Time to first step and peak memory of a run whose text is tokenized in memory vs prepared once.

    python benchmarks/data_prepare.py [--workdir DIR] [--budgets 1e7,1e8] [--workers 2]

Corpus: `stdlib_corpus/site` (the stdlib and the installed packages' .py files, 160 MB of train
text, over 1.5e8 byte tokens), built into DIR once. It is prepared once with
`scaling data prepare --workers N` (timed). Then, for each budget (data.num_tokens), a small model
(d_model 64, 2 layers, 16 x 128 tokens per step) is trained in a fresh process for one step, and
resumed from that step's checkpoint in another fresh process for one more step, each time both
  * in memory: the default path, which tokenizes the budget's text in the process first, and
  * prepared: data.prepared_dir = the prepared directory (the same rows in the same order).
For each process it prints the wall time to the end of its step (imports and compilation
included, the same for both paths), the time to its first batch, and its peak resident memory
(ru_maxrss). It then prints the ratios in-memory / prepared measured in this run, and how much the
peak memory grows from the smallest to the largest budget on each path. The last line is all
figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from scaling import config as config_lib, data
from scaling.train import loop
data_dir, workdir, budget, prepared_dir, steps = sys.argv[1:6]
c = config_lib.default_config()
c.data.tfds_name, c.data.tfds_data_dir = "stdlib_corpus/site", data_dir
c.data.prepared_dir = prepared_dir
c.data.seq_len = c.model.max_seq_len = 128
c.data.num_tokens = int(float(budget))
c.data.eval_tokens = 8192
c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 64, 2, 4, 4
c.model.d_ff = 256
c.train.batch_size = 16
c.train.progress = False
c.train.log_every = 1
c.checkpoint.every = 1
c.checkpoint.log_max = 1
t0 = time.perf_counter()
it = data.make_train_iterator(c, workdir)  # the stream is cached: the run below reuses it
next(it)
first_batch = time.perf_counter() - t0
summary = loop.train(c, workdir, stop_after=int(steps))
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
print("RESULT " + json.dumps({"first_batch_s": first_batch, "wall_s": time.perf_counter() - start,
                              "step": summary["step"], "peak_rss_mb": peak_mb}))
"""


def child(data_dir: pathlib.Path, workdir: pathlib.Path, budget: float, prepared: str,
          steps: int) -> dict[str, Any]:
    """Returns {first_batch_s, wall_s, step, peak_rss_mb} of one fresh training process."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(data_dir), str(workdir), repr(budget), prepared,
         str(steps)], capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"training process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    if result["step"] != steps:
        raise RuntimeError(f"training process stopped at step {result['step']}, not {steps}")
    return result


def build_corpus(data_dir: pathlib.Path) -> float:
    """Returns the seconds spent building stdlib_corpus/site into data_dir (0 if built)."""
    from scaling.data.corpora import stdlib_corpus

    start = time.perf_counter()
    stdlib_corpus.ensure_built(data_dir, "site")
    return time.perf_counter() - start


def prepare(data_dir: pathlib.Path, out: pathlib.Path, workers: int) -> dict[str, Any]:
    """Returns {seconds, tokens} of `scaling data prepare` of the corpus (a fresh process)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scaling.cli", "data", "prepare", "--config",
                    str(REPO_ROOT / "configs" / "lm_tiny.py"),
                    "--config.data.tfds_name=stdlib_corpus/site",
                    f"--config.data.tfds_data_dir={data_dir}", "--out", str(out),
                    "--workers", str(workers)], check=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": seconds, "tokens": manifest["splits"]["train"]["stream_tokens"]}


def main() -> None:
    """Prints the measurements, the ratios and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(REPO_ROOT / ".bench" / "data_prepare"))
    parser.add_argument("--budgets", default="1e7,1e8", help="data.num_tokens values")
    parser.add_argument("--workers", type=int, default=2, help="prepare's worker processes")
    args = parser.parse_args()
    root = pathlib.Path(args.workdir)
    data_dir, out = root / "tfds", root / "prepared"
    budgets = sorted(float(b) for b in args.budgets.split(","))
    figures: dict[str, Any] = {"corpus_build_s": build_corpus(data_dir)}
    figures["prepare"] = prepare(data_dir, out, args.workers)
    print(f"prepare: {figures['prepare']['tokens']:.3g} tokens in "
          f"{figures['prepare']['seconds']:.1f} s with {args.workers} workers")
    rows = []
    for budget in budgets:
        for path, prepared in (("in memory", ""), ("prepared", str(out))):
            run = root / "runs" / f"{path.replace(' ', '_')}-{budget:.0e}"
            shutil.rmtree(run, ignore_errors=True)
            first = child(data_dir, run, budget, prepared, 1)
            resume = child(data_dir, run, budget, prepared, 2)
            rows.append({"budget": budget, "path": path, "first": first, "resume": resume})
            print(f"{budget:8.0e} {path:9s}  first step {first['wall_s']:6.1f} s (first batch "
                  f"{first['first_batch_s']:6.2f} s, peak {first['peak_rss_mb']:6.0f} MB)  "
                  f"resume {resume['wall_s']:6.1f} s (first batch "
                  f"{resume['first_batch_s']:6.2f} s, peak {resume['peak_rss_mb']:6.0f} MB)",
                  flush=True)
    figures["runs"] = rows
    by = {(r["budget"], r["path"]): r for r in rows}
    print("\nratios in memory / prepared (this run):")
    for budget in budgets:
        mem, pre = by[(budget, "in memory")], by[(budget, "prepared")]
        for phase in ("first", "resume"):
            print(f"  {budget:.0e} {phase:6s}: time to step "
                  f"{mem[phase]['wall_s'] / pre[phase]['wall_s']:.2f}x, first batch "
                  f"{mem[phase]['first_batch_s'] / pre[phase]['first_batch_s']:.1f}x, peak memory "
                  f"{mem[phase]['peak_rss_mb'] / pre[phase]['peak_rss_mb']:.2f}x")
    lo, hi = budgets[0], budgets[-1]
    growth = {path: by[(hi, path)]["first"]["peak_rss_mb"] - by[(lo, path)]["first"]["peak_rss_mb"]
              for path in ("in memory", "prepared")}
    figures["peak_growth_mb"] = growth
    print(f"peak memory growth from {lo:.0e} to {hi:.0e} tokens: in memory "
          f"{growth['in memory']:+.0f} MB, prepared {growth['prepared']:+.0f} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
