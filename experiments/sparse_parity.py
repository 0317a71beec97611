"""Multitask sparse parity (Michaud et al. 2023, "The Quantization Model of Neural Scaling").

T subtasks, subtask i drawn with probability p_i ∝ i^-(α+1); each is the parity of its own k of
the n input bits, and the input carries the subtask as a one-hot code. One-hidden-layer MLPs:

* `width` sweep: widths W on a fresh stream of examples (capacity-limited: the number of subtasks
  a network can hold grows with W);
* `data` sweep: one wide network on fixed training sets of D examples, many epochs
  (data-limited: a subtask is learned once it has enough examples).

Quantization model: the model learns subtasks in order of frequency; with n learned the loss is
∝ Σ_{i>n} p_i ∝ n^-α. If n ∝ N (parameters) then L ∝ N^-α (α_N = α); if n grows until
D·p_n hits a fixed count then n ∝ D^(1/(α+1)) and L ∝ D^-α/(α+1) (α_D = α/(α+1)).

Measured "loss": the frequency-weighted error Σ_i p_i·(1 − acc_i) from the per-subtask exact match
on held-out inputs (an unlearned parity sits at error 1/2, so it is proportional to the theory's
Σ_{i>n} p_i); the width sweep also reports the training-stream cross-entropy (fresh samples, so an
unbiased test loss under the training distribution). Two fits per sweep, both with bootstrap CIs
over runs: the plain power law L = A·x^-a (the paper's measurement), and the finite-T form of the
same theory, L = A·(x^-a − x_T^-a), where x_T is where all T subtasks would be learned — with
finitely many subtasks the tail sum is truncated, which steepens a plain power-law fit.
"""

from __future__ import annotations

import math
import pathlib
import sys
from typing import Any

import ml_collections
import numpy as np

from experiments import common

NAME = "sparse_parity"
DESCRIPTION = ("Michaud et al. 2023: MLP width and data-size sweeps on multitask sparse parity; "
               "subtasks switch on abruptly while the mean loss follows a power law")
PAPER = ("Michaud, Liu, Girit, Tegmark (2023), \"The Quantization Model of Neural Scaling\", "
         "NeurIPS 2023")
EXPECTED_OUTCOME = (
    "Each subtask's accuracy jumps from 1/2 to 1 over a short stretch of training, in order of "
    "frequency, while the frequency-weighted loss falls smoothly. Theory (Zipf exponent α+1 on "
    "subtask frequencies): α_N = α for the width sweep and α_D = α/(α+1) for the data sweep "
    "(α = 0.4: α_N = 0.4, α_D = 0.286). The paper measures exponents close to these with 500 "
    "subtasks of 3-bit parities over 100 bits.")
EXPECTED_RUNTIME = {"tiny": "~15 s", "small": "~6-7 min (12 runs)",
                    "medium": "~1 GPU-hour", "large": "several GPU-hours (the paper's setting)"}
FIGURES = ("sparse_parity_scaling", "sparse_parity_subtasks", "sparse_parity_learned")

TASK = "sparse_parity"
LEARNED = 0.9  # a subtask is learned when its held-out exact match >= this


def settings(scale: str) -> dict[str, Any]:
    """Returns the task and grid of a scale: T, n bits, k, α, widths, data sizes, steps, batch."""
    return common.pick(
        scale,
        tiny=dict(n_tasks=8, n_bits=16, k=2, alpha=0.4, widths=(8, 16), data_width=32,
                  data=(256, 1024), steps=60, batch=128, lr=1e-2, every=20, eval_per_task=16),
        small=dict(n_tasks=64, n_bits=32, k=2, alpha=0.4, widths=(4, 8, 16, 32, 64, 128),
                   data_width=128, data=(1000, 2000, 4000, 8000, 16000, 32000), steps=4000,
                   batch=1024, lr=1e-2, every=250, eval_per_task=64),
        medium=dict(n_tasks=200, n_bits=48, k=3, alpha=0.4,
                    widths=(8, 16, 32, 64, 128, 256, 512), data_width=512,
                    data=(2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5), steps=30000, batch=4096,
                    lr=3e-3, every=1000, eval_per_task=64),
        large=dict(n_tasks=500, n_bits=100, k=3, alpha=0.4,
                   widths=(8, 16, 32, 64, 128, 256, 512, 1024, 2048), data_width=2048,
                   data=(1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7), steps=100000, batch=20000,
                   lr=1e-3, every=5000, eval_per_task=64),
    )


def frequencies(n_tasks: int, alpha: float) -> np.ndarray:
    """Returns p_i ∝ (i+1)^-(α+1) for subtasks i = 0..T-1 (probabilities, sum 1)."""
    w = np.arange(1, n_tasks + 1, dtype=float) ** -(alpha + 1.0)
    return w / w.sum()


def sweeps(scale: str, data_dir: str = "", tfds_name: str = "") -> dict[str, ml_collections.ConfigDict]:
    """Returns {'width': widths on a fresh stream, 'data': fixed training sets of D examples}."""
    del data_dir, tfds_name  # no text data
    s = settings(scale)
    c = common.mlp_base(scale)
    c.data.task.name = TASK
    for k in ("n_tasks", "n_bits", "k", "alpha"):
        c.data.task.params[k] = s[k]
    c.data.task.eval_examples = s["eval_per_task"] * s["n_tasks"]
    c.train.batch_size = s["batch"]
    c.train.num_steps = s["steps"]
    c.optim.lr = s["lr"]
    c.optim.weight_decay = 0.0
    c.checkpoint.log_max = 512
    c.checkpoint.every = s["every"]
    width = common.mlp_sweep(scale, "sparse_parity_width", c)
    width.axes = ({"model.mlp_width": list(s["widths"])},)
    data = common.mlp_sweep(scale, "sparse_parity_data", c)
    data.base.model.mlp_width = s["data_width"]
    data.axes = ({"data.task.num_examples": [int(d) for d in s["data"]]},)
    data.labels = (("data.task.num_examples", "Dtrain"),)
    return {"width": width, "data": data}


# ------------------------------------------------------------------------------------ fits


def _trunc_log_pred(params: np.ndarray, lx: np.ndarray, lx_max: float) -> np.ndarray:
    """ln of A·(x^-a − x_T^-a) with ln x_T = lx_max + exp(g): params (ln A, a, g)."""
    ln_a, a, g = params
    gap = (lx_max + math.exp(min(g, 30.0))) - lx  # ln x_T − ln x > 0
    return ln_a - a * lx + np.log(-np.expm1(-a * gap))


def fit_truncated_power(x: np.ndarray, y: np.ndarray, bootstrap: int, seed: int = 0
                        ) -> dict[str, Any]:
    """Returns the least-squares fit (on ln y) of y = A·(x^-a − x_T^-a), a and x_T with bootstrap CIs.

    x_T > max(x) is where the truncated tail reaches zero (every subtask learned); a is the
    exponent of the untruncated law, comparable with the theory's α_N or α_D.
    """
    from scipy.optimize import least_squares

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if len(x) < 4:
        return {"a": math.nan, "ci": [math.nan, math.nan], "x_T": math.nan, "n": len(x)}
    lx_max = float(np.log(x.max()))

    def solve(lx: np.ndarray, ly: np.ndarray, starts: list[tuple[float, float]]
              ) -> tuple[np.ndarray, float]:
        best, best_cost = None, math.inf
        for a0, g0 in starts:
            ln_a0 = float(np.mean(ly + a0 * lx))
            try:
                r = least_squares(lambda p: _trunc_log_pred(p, lx, lx_max) - ly,
                                  x0=[ln_a0, a0, g0], bounds=([-50, 1e-3, -6], [50, 5, 6]))
            except ValueError:
                continue
            if np.isfinite(r.cost) and r.cost < best_cost:
                best, best_cost = r.x, r.cost
        if best is None:
            raise RuntimeError("no start converged")
        return best, best_cost

    lx, ly = np.log(x), np.log(y)
    grid = [(a0, g0) for a0 in (0.1, 0.3, 0.6, 1.0, 2.0) for g0 in (-2.0, 0.0, 1.5, 3.0)]
    p, _ = solve(lx, ly, grid)
    # resamples start from the full-data optimum and two spread-out starts (fast, same minima)
    boot_starts = [(float(p[1]), float(np.clip(p[2], -5.9, 5.9))), (0.3, 0.0), (1.0, 3.0)]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(max(0, bootstrap)):
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(idx)) < 4:
            continue
        try:
            boots.append(solve(lx[idx], ly[idx], boot_starts)[0][1])
        except RuntimeError:
            continue
    ci = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if boots \
        else [math.nan, math.nan]
    resid = _trunc_log_pred(p, lx, lx_max) - ly
    return {"a": float(p[1]), "ci": ci, "A": float(math.exp(p[0])),
            "x_T": float(math.exp(lx_max + math.exp(p[2]))), "n": int(len(x)),
            "rms_ln": float(np.sqrt(np.mean(resid ** 2))), "params": [float(v) for v in p]}


def _trunc_predict(fit: dict[str, Any], x: np.ndarray, lx_max: float) -> np.ndarray:
    if "params" not in fit:
        return np.full_like(x, np.nan)
    return np.exp(_trunc_log_pred(np.asarray(fit["params"]), np.log(x), lx_max))


# ------------------------------------------------------------------------------------ analysis


def run_table(df, p: np.ndarray, x_col: str) -> list[dict[str, Any]]:
    """Returns per run: x (N or D), weighted error, learned subtasks, final train loss."""
    wide = common.subtask_matrix(df, TASK)
    if wide.empty:
        return []
    cols = [c for c in wide.columns if isinstance(c, (int, np.integer))]
    last = wide.sort_values("step").groupby("run_id").tail(1)
    train = common.curves(df, "train/loss", "train")
    axes = df.groupby("run_id").first()
    rows = []
    for _, r in last.iterrows():
        acc = np.array([r[c] for c in cols], dtype=float)
        pp = p[np.asarray(cols, dtype=int)]
        pp = pp / pp.sum()
        werr = float(np.nansum(pp * (1.0 - acc)))
        tl = train[train["run_id"] == r["run_id"]]["value"].to_numpy(float)
        row = {"run": axes.loc[r["run_id"], "run_name"], "N": float(r["N"]),
               "width": int(axes.loc[r["run_id"], "model.mlp_width"])
               if "model.mlp_width" in axes.columns and not _isnan(axes.loc[r["run_id"], "model.mlp_width"])
               else None,
               "weighted_error": werr, "n_learned": int(np.sum(acc >= LEARNED)),
               "train_loss": float(np.mean(tl[-5:])) if len(tl) else math.nan,
               "step": int(r["step"])}
        if x_col == "D":
            row["D"] = float(axes.loc[r["run_id"], "data.task.num_examples"])
        rows.append(row)
    rows.sort(key=lambda q: q.get("D", q["N"]))
    return rows


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def _transition_widths(wide, run_id: str) -> list[float]:
    """Returns, per subtask learned in the run, the decades of steps from acc 0.6 to 0.9."""
    w = wide[wide["run_id"] == run_id].sort_values("step")
    w = w[w["step"] > 0]
    out = []
    steps = w["step"].to_numpy(float)
    for c in [c for c in w.columns if isinstance(c, (int, np.integer))]:
        acc = w[c].to_numpy(float)
        if len(acc) < 3 or acc[-1] < LEARNED:
            continue
        i_hi = int(np.argmax(acc >= LEARNED))
        below = np.nonzero(acc[:i_hi] <= 0.6)[0]
        if len(below) == 0:
            continue
        out.append(float(np.log10(steps[i_hi]) - np.log10(steps[below[-1]])))
    return out


def analyze(root: pathlib.Path, out_dir: pathlib.Path, scale: str, bootstrap: int) -> dict[str, Any]:
    """Returns the measured α_N and α_D (with CIs) against theory; writes figures and Markdown."""
    import matplotlib.pyplot as plt

    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    s = settings(scale)
    alpha = float(s["alpha"])
    theory = {"alpha_N": alpha, "alpha_D": alpha / (alpha + 1.0)}
    p = frequencies(s["n_tasks"], alpha)
    df_w = common.load(root / "width")
    df_d = common.load(root / "data")
    rows_w = run_table(df_w, p, "N") if len(df_w) else []
    rows_d = run_table(df_d, p, "D") if len(df_d) else []

    fits: dict[str, Any] = {}
    for key, rows, x in (("N", rows_w, "N"), ("D", rows_d, "D")):
        xs = np.array([r[x] for r in rows], float)
        ys = np.array([r["weighted_error"] for r in rows], float)
        plain = common.loglog_fit(xs, ys, bootstrap)
        trunc = common.fit_or_none(lambda: fit_truncated_power(xs, ys, bootstrap), f"finite-T fit vs {x}",
                                   notes) or {"a": math.nan, "ci": [math.nan, math.nan]}
        fits[key] = {"plain": {"exponent": -plain["slope"],
                               "ci": sorted(-c for c in plain["ci"]), "r2": plain.get("r2")},
                     "finite_T": trunc}
        learned = common.loglog_fit(xs, [max(r["n_learned"], 0.5) for r in rows], bootstrap)
        fits[key]["n_learned_slope"] = {"slope": learned["slope"], "ci": learned["ci"]}
    if rows_w:
        tl = common.loglog_fit([r["N"] for r in rows_w], [r["train_loss"] for r in rows_w], bootstrap)
        fits["N"]["train_loss"] = {"exponent": -tl["slope"], "ci": sorted(-c for c in tl["ci"])}

    # per-subtask curves of the widest run (width sweep) and the abruptness of each switch-on
    wide = common.subtask_matrix(df_w, TASK) if len(df_w) else None
    trans: list[float] = []
    biggest = None
    if wide is not None and len(wide):
        biggest = wide.sort_values("N")["run_id"].iloc[-1]
        trans = _transition_widths(wide, biggest)

    figures: dict[str, str] = {}
    # 1. scaling: weighted error vs N and vs D with both fits and the theory slopes
    def _draw1() -> Any:
        fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.4))
        for ax, key, rows, label in ((axes[0], "N", rows_w, "parameters N (width sweep)"),
                                     (axes[1], "D", rows_d, "training examples D (data sweep)")):
            xs = np.array([r[key] for r in rows], float)
            ys = np.array([r["weighted_error"] for r in rows], float)
            ax.plot(xs, ys, "ko", ms=4, label="measured")
            if len(xs) >= 2 and np.all(np.isfinite(xs)) and xs.max() > xs.min():
                xg = np.geomspace(xs.min(), xs.max(), 100)
                f = fits[key]
                if math.isfinite(f["plain"]["exponent"]):
                    k = common.loglog_fit(xs, ys, 0)["k"]
                    ax.plot(xg, k * xg ** -f["plain"]["exponent"], "C0-",
                            label=f"power law, exponent {f['plain']['exponent']:.2f}")
                if math.isfinite(f["finite_T"].get("a", math.nan)):
                    ax.plot(xg, _trunc_predict(f["finite_T"], xg, float(np.log(xs.max()))), "C1--",
                            label=f"finite-T law, exponent {f['finite_T']['a']:.2f}")
                th = theory["alpha_N" if key == "N" else "alpha_D"]
                ax.plot(xg, ys[0] * (xg / xs[0]) ** -th, "C2:", label=f"theory slope {th:.3f}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("frequency-weighted error")
            common.legend(ax)
        fig.suptitle("Sparse parity: loss scaling (weighted error Σ p_i (1 − acc_i))", fontsize=9)
        return fig

    figures["sparse_parity_scaling"] = common.figure(out_dir, "sparse_parity_scaling", _draw1, notes)

    # 2. per-subtask curves (abrupt) and the weighted error (smooth) of the widest run
    def _draw2() -> Any:
        fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.4))
        if biggest is not None:
            w = wide[wide["run_id"] == biggest].sort_values("step")
            w = w[w["step"] > 0]
            cols = [c for c in w.columns if isinstance(c, (int, np.integer))]
            cmap = plt.get_cmap("viridis")
            for j, c in enumerate(cols[:24]):
                axes[0].plot(w["step"], w[c], "-", lw=0.9, color=cmap(j / max(1, min(24, len(cols)) - 1)))
            pp = p[np.asarray(cols, dtype=int)]
            pp = pp / pp.sum()
            werr = (np.asarray(w[cols], float) * -1 + 1) @ pp
            axes[1].plot(w["step"], werr, "k.-", ms=3)
            axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("optimizer step")
        axes[0].set_ylabel("held-out exact match per subtask")
        axes[0].set_title("Subtasks 0-23 of the widest run (dark: frequent)", fontsize=8)
        axes[1].set_ylabel("frequency-weighted error")
        axes[1].set_title("Mean (weighted) error of the same run", fontsize=8)
        return fig

    figures["sparse_parity_subtasks"] = common.figure(out_dir, "sparse_parity_subtasks", _draw2, notes)

    # 3. learned subtasks vs N and D
    def _draw3() -> Any:
        fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.2))
        for ax, key, rows in ((axes[0], "N", rows_w), (axes[1], "D", rows_d)):
            ax.plot([r[key] for r in rows], [r["n_learned"] for r in rows], "ko-", ms=4)
            ax.set_xscale("log")
            ax.set_xlabel({"N": "parameters N", "D": "training examples D"}[key])
            ax.set_ylabel(f"subtasks learned (acc >= {LEARNED})")
        return fig

    figures["sparse_parity_learned"] = common.figure(out_dir, "sparse_parity_learned", _draw3, notes)

    common.generic_report([root / "width"], out_dir, min(bootstrap, 20),
                          "Sparse parity: generic report (width sweep)", notes)

    def verdict(key: str, th: float) -> dict[str, Any]:
        f = fits[key]
        return {"theory": th, "plain": f["plain"]["exponent"], "plain_ci": f["plain"]["ci"],
                "plain_within_ci": common.in_ci(th, f["plain"]["ci"]),
                "finite_T": f["finite_T"].get("a"), "finite_T_ci": f["finite_T"].get("ci"),
                "finite_T_within_ci": common.in_ci(th, f["finite_T"].get("ci"))}

    result = {"alpha_N": verdict("N", theory["alpha_N"]), "alpha_D": verdict("D", theory["alpha_D"])}
    rows_tab = []
    for name, v in result.items():
        rows_tab.append({"exponent": name, "theory": v["theory"],
                         "power law [95% CI]": common.fmt_ci(v["plain"], v["plain_ci"]),
                         "theory in CI": v["plain_within_ci"],
                         "finite-T law [95% CI]": common.fmt_ci(v["finite_T"], v["finite_T_ci"]),
                         "theory in CI (finite T)": v["finite_T_within_ci"]})
    sections = [
        "## Measured", "",
        f"T = {s['n_tasks']} subtasks, {s['k']}-bit parities over {s['n_bits']} bits, α = {alpha}, "
        f"one hidden layer, batch {s['batch']}, Adam lr {s['lr']}, {s['steps']} steps. "
        f"Loss = frequency-weighted held-out error. CIs: bootstrap over runs.", "",
        common.table(rows_tab), "",
        "Width sweep:", "",
        common.table([{k: r[k] for k in ("width", "N", "weighted_error", "n_learned", "train_loss")}
                      for r in rows_w]), "",
        "Data sweep (width %d):" % s["data_width"], "",
        common.table([{k: r[k] for k in ("D", "N", "weighted_error", "n_learned")} for r in rows_d]),
        "",
        f"Learned subtasks vs N: slope {common.fmt_ci(fits['N']['n_learned_slope']['slope'], fits['N']['n_learned_slope']['ci'])} "
        f"(theory 1); vs D: slope {common.fmt_ci(fits['D']['n_learned_slope']['slope'], fits['D']['n_learned_slope']['ci'])} "
        f"(theory 1/(α+1) = {1 / (alpha + 1):.3f}).",
    ]
    if "train_loss" in fits["N"]:
        sections.append(f"Training-stream cross-entropy vs N (width sweep): exponent "
                        f"{common.fmt_ci(fits['N']['train_loss']['exponent'], fits['N']['train_loss']['ci'])}.")
    if trans:
        sections.append(f"Abruptness: in the widest run, {len(trans)} subtasks went from exact match "
                        f"<= 0.6 to >= {LEARNED} within a median of {np.median(trans):.2f} decades of "
                        f"steps (between consecutive checkpoints: the resolution limit).")
    summary = {"experiment": NAME, "theory": theory, "exponents": result, "fits": fits,
               "width_runs": rows_w, "data_runs": rows_d,
               "transition_decades": trans, "figures": figures, "notes": notes}
    common.write_markdown(out_dir, sys.modules[__name__], sections, figures, notes)
    return summary
