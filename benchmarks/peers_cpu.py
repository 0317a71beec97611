"""This project's train step against PyTorch's and nanodo's on the same GPT-2-style configs, on CPU.

Usage: python benchmarks/peers_cpu.py [--sizes gpt-small,gpt-large] [--steps 3] [--repeats 3]
                                      [--nanodo-src DIR]

The PyTorch side is a plain GPT-2-style model written here for the comparison (learned positions,
pre-LayerNorm, causal softmax attention, GELU MLP of 4·d, tied byte embeddings of 256, float32,
no dropout, AdamW; the workload nanoGPT trains), run eager and under `torch.compile`. The project
side is `benchmarks/train_throughput.py`'s sizes of the same shapes through the real sharded
train step. Each (size, implementation) is timed in its own fresh process (`--steps` steps after
a warm-up), the implementations interleaved, `--repeats` rounds; it prints the median tokens/s of
each and the ratios project / eager and project / compiled, with MFU = 6·N·tokens/s over the best
2048³ float32 matmul that JAX measured in the project's processes (the same denominator for
all). The last line is all figures as JSON.

With `--nanodo-src DIR` (a checkout of github.com/google-deepmind/nanodo; it is not a package on
the registries and not a dependency of this project) nanodo's own model, loss, optimizer and
`Trainer` run the same shapes: its GPT-2-style decoder (learned positions, LayerNorm, GELU MLP,
tied embeddings) in float32 on a one-device mesh, with its default AdamW and
`log_internal_metrics` off (its cheaper setting), rows of T tokens (it predicts T−1 of them;
tokens/s counts T, as for the others).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = {"gpt-small": (4, 256, 4, 256, 16), "gpt-large": (8, 512, 8, 256, 8)}  # L, d, H, T, B


def torch_worker(size: str, steps: int, compiled: bool) -> dict:
    """Returns tokens/s and N of the PyTorch GPT-2-style train step (run in a fresh process)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    n_layers, d, heads, seq, batch = SIZES[size]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(256, d), nn.Embedding(seq, d)
            self.blocks = nn.ModuleList(Block() for _ in range(n_layers))
            self.ln = nn.LayerNorm(d)

        def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
            for block in self.blocks:
                x = block(x)
            logits = self.ln(x) @ self.tok.weight.T  # tied embeddings
            return F.cross_entropy(logits.view(-1, 256), targets.view(-1))

    torch.manual_seed(0)
    model = GPT()
    n = sum(p.numel() for name, p in model.named_parameters()
            if not name.startswith(("tok.", "pos.")))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    forward = torch.compile(model) if compiled else model
    idx = torch.randint(0, 256, (batch, seq))
    targets = torch.randint(0, 256, (batch, seq))

    def step() -> None:
        loss = forward(idx, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (and compilation)
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {"tokens_per_s": steps * batch * seq / (time.perf_counter() - start), "N": n}


def project_worker(size: str, steps: int) -> dict:
    """Returns tokens/s, N and the measured 2048³ matmul peak of this project's train step."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import train_throughput as tt

    from scaling import perf

    peak = perf.total_peak_flops(perf.measure_matmul_peak(tt.CPU_PEAK_MATMUL, "float32"))
    r = tt.bench(tt.make_config(size, "float32"), steps, {"measured": peak})
    return {"tokens_per_s": r["tokens_per_s"], "N": r["N"], "peak": peak}


def nanodo_worker(size: str, steps: int, src: str) -> dict:
    """Returns tokens/s and N of nanodo's own train step (`Trainer.do_step`) at `size`."""
    sys.path.insert(0, src)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn
    from flax.training.train_state import TrainState
    from jax.sharding import Mesh
    from nanodo import model_factory, optimizer, train
    from nanodo.configs import default

    n_layers, d, heads, seq, batch = SIZES[size]
    c = default.get_config()
    c.model.update(D=d, H=heads, L=seq, N=n_layers, F=4 * d, dtype="float32", fsdp_enabled=False)
    c.batch_size = batch
    c.log_internal_metrics = False
    module, get_loss_fn = model_factory.get_model_and_loss(c, 256)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))

    def init(rng: jax.Array) -> TrainState:  # as nanodo's train.py builds its state
        params = module.init(rng, jnp.zeros((1, seq), jnp.int32))["params"]
        return TrainState.create(apply_fn=module.apply, params=params,
                                 tx=optimizer.get_optimizer(c.opt))

    shardings = nn.get_sharding(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh)
    state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
    n = sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(state.params)
            if "embed" not in jax.tree_util.keystr(path))
    trainer = train.Trainer(c, state, mesh, shardings, get_loss_fn)
    tokens = np.random.default_rng(0).integers(1, 256, (batch, seq), dtype=np.int32)  # 0 is pad

    for step in range(2):  # warm-up (and compilation)
        trainer.do_step(step, jnp.asarray(tokens))
    jax.block_until_ready(trainer.state)
    start = time.perf_counter()
    for step in range(2, 2 + steps):
        trainer.do_step(step, jnp.asarray(tokens))  # the batch is donated: a fresh one each step
    jax.block_until_ready(trainer.state)
    return {"tokens_per_s": steps * batch * seq / (time.perf_counter() - start), "N": n}


def run(impl: str, size: str, steps: int, nanodo_src: str = "") -> dict:
    """Returns one fresh process's measurement of `impl` at `size`."""
    proc = subprocess.run([sys.executable, __file__, "--worker", impl, "--sizes", size,
                           "--steps", str(steps), "--nanodo-src", nanodo_src],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{impl} {size} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    """Prints median tokens/s per implementation and size, the ratios, and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="gpt-small,gpt-large")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nanodo-src", default="",
                        help="a checkout of github.com/google-deepmind/nanodo: also time nanodo")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nanodo_src and not (pathlib.Path(args.nanodo_src) / "nanodo" / "train.py").is_file():
        parser.error(f"--nanodo-src {args.nanodo_src}: no nanodo/train.py there")
    if args.worker:
        size = args.sizes
        if args.worker == "project":
            result = project_worker(size, args.steps)
        elif args.worker == "nanodo":
            result = nanodo_worker(size, args.steps, args.nanodo_src)
        else:
            result = torch_worker(size, args.steps, compiled=args.worker == "torch-compile")
        print("RESULT " + json.dumps(result), flush=True)
        return
    impls = ("project", "torch-eager", "torch-compile") + (("nanodo",) if args.nanodo_src else ())
    figures: dict = {}
    for size in args.sizes.split(","):
        rows: dict[str, list[dict]] = {impl: [] for impl in impls}
        for _ in range(args.repeats):
            for impl in impls:  # interleaved, so that the load of the moment hits each alike
                rows[impl].append(run(impl, size, args.steps, args.nanodo_src))
        peak = statistics.median(r["peak"] for r in rows["project"])
        med = {impl: statistics.median(r["tokens_per_s"] for r in rows[impl]) for impl in impls}
        n = {impl: rows[impl][0]["N"] for impl in impls}
        figures[size] = {"median_tokens_per_s": med, "N": n, "peak": peak, "runs": rows}
        print(f"{size}: N project {n['project']:,}, PyTorch {n['torch-eager']:,}; "
              f"peak {peak:.3g} FLOP/s (JAX 2048³ float32, median)")
        for impl in impls:
            print(f"  {impl:14s} {med[impl]:9,.0f} tokens/s  "
                  f"mfu={6 * n[impl] * med[impl] / peak:.3f}")
        print(f"  ratio project / torch eager {med['project'] / med['torch-eager']:.2f}x, "
              f"project / torch.compile {med['project'] / med['torch-compile']:.2f}x"
              + (f", project / nanodo {med['project'] / med['nanodo']:.2f}x" if "nanodo" in med else ""),
              flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
