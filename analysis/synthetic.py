"""Synthetic run directories and data in the version-1 run format (for tests, demos, benchmarks)."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Sequence

import numpy as np

from analysis import laws

__all__ = ["TRUE_CHINCHILLA", "chinchilla_points", "write_run", "make_sweep"]

TRUE_CHINCHILLA = laws.ChinchillaParams(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def chinchilla_points(n: int = 250, *, noise: float = 0.01, seed: int = 0,
                      params: laws.ChinchillaParams = TRUE_CHINCHILLA,
                      n_range: tuple[float, float] = (1e7, 1e10), d_range: tuple[float, float] = (1e8, 1e11)
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (N params, D tokens, L nats/token): log-uniform N, D and L·exp(noise·ε), ε ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(*np.log(n_range), n))
    D = np.exp(rng.uniform(*np.log(d_range), n))
    L = laws.chinchilla(N, D, params.E, params.A, params.B, params.alpha, params.beta)
    return N, D, L * np.exp(rng.normal(0.0, noise, n))


def _jsonl(path: pathlib.Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def write_run(run_dir: str | pathlib.Path, *, run_id: str, N: float, D: float, axes: dict[str, Any],
              loss_scale: float = 1.0, n_logs: int = 12, n_evals: int = 6, seed: int = 0,
              params: laws.ChinchillaParams = TRUE_CHINCHILLA, tasks: bool = True,
              n_subtasks: int = 4, status: str = "completed") -> dict[str, Any]:
    """Returns the manifest entry of a synthetic run written at run_dir (all five run files).

    Loss follows L(N, tokens)·loss_scale with 0.5% noise; tasks (if on): "addition/exact_match"
    rises as a sigmoid in log10 FLOPs, "addition/answer_logprob" is its per-token log-prob
    (answer length 4 tokens), and "parity/subtask_<i>/exact_match" learns subtask i after
    tokens ≥ 2^i·D/32·(1e7/N)^0.5.
    """
    d = pathlib.Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens_per_step = 4096
    num_steps = max(1, int(round(D / tokens_per_step)))
    fpt = 6.0 * N
    config = {"name": run_id, "seed": seed, "model": {"n_params_target": N}, "data": {"answer_len": 4},
              "train": {"num_steps": num_steps, "tokens_per_step": tokens_per_step}, "optim": {}}
    for k, v in axes.items():
        cur = config
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    (d / "config.json").write_text(json.dumps(config, indent=1))
    (d / "run.json").write_text(json.dumps({
        "version": 1, "id": run_id, "name": run_id, "axes": axes, "n_params": int(N),
        "n_params_nonembed": int(0.9 * N), "flops_per_token": fpt, "tokens_per_step": tokens_per_step,
        "num_steps": num_steps}))

    def loss_at(tok: float) -> float:
        base = laws.chinchilla(N, tok, params.E, params.A, params.B, params.alpha, params.beta)
        return float(base * loss_scale * math.exp(rng.normal(0, 0.005)))

    steps = np.unique(np.geomspace(1, num_steps, n_logs).astype(int))
    metrics = []
    for s in steps:
        tok = float(s * tokens_per_step)
        metrics.append({"step": int(s), "loss": loss_at(tok), "tokens": tok, "flops": fpt * tok,
                        "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1e5, "mfu": 0.3, "time": float(s)})
    _jsonl(d / "metrics.jsonl", metrics)
    evals = []
    for s in np.unique(np.geomspace(max(1, num_steps // 20), num_steps, n_evals).astype(int)):
        tok = float(s * tokens_per_step)
        C = fpt * tok
        common = {"step": int(s), "tokens": tok, "flops": C, "n_params": int(N), "n_params_nonembed": int(0.9 * N)}
        evals.append({**common, "metric": "val/loss", "value": loss_at(tok)})
        if tasks:
            ce = (0.05 + 0.5 * (N / 1e6) ** -0.7 * (1 + 1e8 / tok) ** 0.2) * loss_scale
            lp = -ce
            em = float(np.clip(math.exp(-4 * ce) + rng.normal(0, 0.01), 0, 1))
            evals.append({**common, "metric": "addition/answer_logprob", "value": lp})
            evals.append({**common, "metric": "addition/exact_match", "value": em})
            for i in range(n_subtasks):
                need = 2 ** i * D / 32 * (1e7 / N) ** 0.5
                acc = 0.5 + 0.5 / (1 + math.exp(-8 * (math.log10(tok) - math.log10(need))))
                evals.append({**common, "metric": f"parity/subtask_{i}/exact_match", "value": acc})
    _jsonl(d / "eval.jsonl", evals)
    (d / "status.json").write_text(json.dumps({"status": status, "step": num_steps, "error": None}))
    return {"id": run_id, "name": run_id, "dir": d.name, "axes": axes, "n": int(N),
            "d": float(num_steps * tokens_per_step), "c": fpt * num_steps * tokens_per_step, "status": status}


def make_sweep(root: str | pathlib.Path, *, sizes: Sequence[float] = (2.5e5, 5e5, 1e6, 2e6, 4e6, 8e6),
               budgets: Sequence[float] = (1e14, 4e14, 1.6e15), arms: Sequence[str] = ("cosine", "wsd"),
               arm_scale: Sequence[float] = (1.0, 0.98), tasks: bool = True, seed: int = 0) -> pathlib.Path:
    """Returns the root of a synthetic IsoFLOP sweep (sizes × budgets × ablation arms) with a manifest."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    k = 0
    for arm, scale in zip(arms, arm_scale):
        for C in budgets:
            for N in sizes:
                D = C / (6 * N)
                rid = f"{arm}-c{C:.0e}-n{N:.0e}".replace("+", "")
                axes = {"optim.schedule": arm, "model.n_params_target": N, "train.flops_budget": C}
                entries.append(write_run(root / rid, run_id=rid, N=N, D=D, axes=axes, loss_scale=scale,
                                         seed=seed + k, tasks=tasks))
                k += 1
    (root / "manifest.json").write_text(json.dumps({"version": 1, "runs": entries}, indent=1))
    return root
