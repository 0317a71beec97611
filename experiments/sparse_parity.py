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

Measured losses, both on held-out inputs and at each run's last checkpoint:

* the frequency-weighted error Σ_i p_i·(1 − acc_i) from the per-subtask exact match (an unlearned
  parity sits at error 1/2, so it is proportional to the theory's Σ_{i>n} p_i);
* the frequency-weighted cross-entropy L_CE = Σ_i p_i·(−answer_logprob_i), nats per answer token,
  the loss the paper measures (an unlearned parity sits at ln 2, a learned one near 0). What the
  theory predicts to scale is its excess over the learned floor: L_CE splits into the floor
  Σ_{learned} p_i·CE_i, carried by the subtasks already learned (exact match ≥ 0.9; it shrinks
  with training, not with n), and the excess Σ_{unlearned} p_i·CE_i ≈ ln 2·Σ_{i>n} p_i. The fits
  use the excess; the plain power law of the total L_CE is reported too (the two agree where the
  floor is negligible).

The width sweep also reports the training-stream cross-entropy (fresh samples, so an unbiased test
loss under the training distribution). Two fits per sweep and loss, both with bootstrap CIs over
runs: the plain power law L = A·x^-a (the paper's measurement), and the finite-T form of the same
theory, L = A·(x^-a − x_T^-a), where x_T is where all T subtasks would be learned — with finitely
many subtasks the tail sum is truncated, which steepens a plain power-law fit. Runs evaluated
before per-subtask answer_logprob existed have no cross-entropy; their CE fits are skipped with a
note (`scaling evaluate RUN_DIR` adds it).
"""

from __future__ import annotations

import math
import pathlib
import sys
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np

from experiments import common

if TYPE_CHECKING:
    import pandas as pd

NAME = "sparse_parity"
DESCRIPTION = ("Michaud et al. 2023: MLP width and data-size sweeps on multitask sparse parity; "
               "subtasks switch on abruptly while the mean loss follows a power law")
PAPER = ("Michaud, Liu, Girit, Tegmark (2023), \"The Quantization Model of Neural Scaling\", "
         "NeurIPS 2023")
EXPECTED_OUTCOME = (
    "Each subtask's accuracy jumps from 1/2 to 1 over a short stretch of training, in order of "
    "frequency, while the frequency-weighted loss (error, and cross-entropy above its learned "
    "floor) falls smoothly. Theory (Zipf exponent α+1 on subtask frequencies): α_N = α for the "
    "width sweep and α_D = α/(α+1) for the data sweep "
    "(α = 0.4: α_N = 0.4, α_D = 0.286). The paper measures exponents close to these with 500 "
    "subtasks of 3-bit parities over 100 bits.")
EXPECTED_RUNTIME = {"tiny": "~15 s", "small": "~5-6 min (12 runs)",
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


def _subtask_cols(wide: pd.DataFrame) -> list[int]:
    """Returns the subtask-index columns of a `common.subtask_matrix` table."""
    return [c for c in wide.columns if isinstance(c, (int, np.integer))]


def weighted_ce(neg_logprob: np.ndarray, p: np.ndarray) -> float:
    """Returns Σ_i p_i·CE_i over subtasks with a finite CE (p renormalised over them), nats/token."""
    neg_logprob, p = np.asarray(neg_logprob, float), np.asarray(p, float)
    ok = np.isfinite(neg_logprob)
    if not ok.any():
        return math.nan
    return float(np.sum(p[ok] * neg_logprob[ok]) / np.sum(p[ok]))


def ce_terms(neg_logprob: np.ndarray, acc: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Returns {'ce': L_CE, 'ce_floor': L_floor, 'ce_excess': L_CE − L_floor}, nats/answer token.

    L_floor = Σ_{learned} p_i·CE_i is the part carried by learned subtasks (acc_i ≥ LEARNED), the
    excess Σ_{unlearned} p_i·CE_i the part the quantization model ties to N and D; p is renormalised
    over the subtasks with a finite CE. All nan without per-subtask CE.
    """
    neg_logprob, acc, p = (np.asarray(v, float) for v in (neg_logprob, acc, p))
    ok = np.isfinite(neg_logprob)
    if not ok.any():
        return {"ce": math.nan, "ce_floor": math.nan, "ce_excess": math.nan}
    q = np.where(ok, p, 0.0) / np.sum(p[ok])
    terms = q * np.where(ok, neg_logprob, 0.0)
    learned = acc >= LEARNED
    floor, excess = float(np.sum(terms[learned])), float(np.sum(terms[~learned]))
    return {"ce": floor + excess, "ce_floor": floor, "ce_excess": excess}


def _neg_logprob_at(lp_wide: pd.DataFrame | None, run_id: Any, step: int, cols: list[int]
                    ) -> np.ndarray:
    """Returns −answer_logprob per subtask in `cols` of one run at one step (nan where absent)."""
    if lp_wide is None or lp_wide.empty:
        return np.full(len(cols), np.nan)
    r = lp_wide[(lp_wide["run_id"] == run_id) & (lp_wide["step"] == step)]
    if r.empty:
        return np.full(len(cols), np.nan)
    r = r.iloc[0]
    return np.array([-float(r[c]) if c in r.index else np.nan for c in cols], dtype=float)


def run_table(df, p: np.ndarray, x_col: str) -> list[dict[str, Any]]:
    """Returns per run: x (N or D), weighted error, weighted CE (nats), learned subtasks, train loss.

    CE columns: 'ce', 'ce_floor', 'ce_excess' of `ce_terms` (nan without per-subtask answer_logprob).
    """
    wide = common.subtask_matrix(df, TASK)
    if wide.empty:
        return []
    lp_wide = common.subtask_matrix(df, TASK, "answer_logprob")
    cols = _subtask_cols(wide)
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
        row.update(ce_terms(_neg_logprob_at(lp_wide, r["run_id"], int(r["step"]), cols), acc, pp))
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

    def fit_both(xs: np.ndarray, ys: np.ndarray, what: str
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
        plain = common.loglog_fit(xs, ys, bootstrap)
        # fit_truncated_power raises RuntimeError when no start converges: an outcome, not a bug
        trunc = common.fit_or_none(lambda: fit_truncated_power(xs, ys, bootstrap), what, notes,
                                   expected=(RuntimeError,)) or {"a": math.nan, "ci": [math.nan, math.nan]}
        return ({"exponent": -plain["slope"], "ci": sorted(-c for c in plain["ci"]),
                 "r2": plain.get("r2")}, trunc)

    fits: dict[str, Any] = {}
    for key, rows, x in (("N", rows_w, "N"), ("D", rows_d, "D")):
        xs = np.array([r[x] for r in rows], float)
        ys = np.array([r["weighted_error"] for r in rows], float)
        plain, trunc = fit_both(xs, ys, f"finite-T fit vs {x}")
        fits[key] = {"plain": plain, "finite_T": trunc}
        # cross-entropy: the excess over the learned floor is what the theory says scales
        ce = np.array([r.get("ce", math.nan) for r in rows], float)
        excess = np.array([r.get("ce_excess", math.nan) for r in rows], float)
        n_ce = int(np.isfinite(ce).sum())
        fits[key].update(ce_plain=None, ce_finite_T=None, ce_total_plain=None)
        if n_ce < len(rows):
            notes.append(f"{n_ce} of {len(rows)} runs vs {x} have per-subtask answer_logprob "
                         f"(older evaluations lack it; `scaling evaluate RUN_DIR` adds it)"
                         + ("; cross-entropy fits skipped" if n_ce < 2 else ""))
        if n_ce >= 2:
            ce_plain, ce_trunc = fit_both(xs, excess, f"finite-T fit of the cross-entropy vs {x}")
            total = common.loglog_fit(xs, ce, bootstrap)
            fits[key].update(ce_plain=ce_plain, ce_finite_T=ce_trunc,
                             ce_total_plain={"exponent": -total["slope"],
                                             "ci": sorted(-c for c in total["ci"]),
                                             "r2": total.get("r2")})
        learned = common.loglog_fit(xs, [max(r["n_learned"], 0.5) for r in rows], bootstrap)
        fits[key]["n_learned_slope"] = {"slope": learned["slope"], "ci": learned["ci"]}
    if rows_w:
        tl = common.loglog_fit([r["N"] for r in rows_w], [r["train_loss"] for r in rows_w], bootstrap)
        fits["N"]["train_loss"] = {"exponent": -tl["slope"], "ci": sorted(-c for c in tl["ci"])}

    # per-subtask curves of the widest run (width sweep) and the abruptness of each switch-on
    wide = common.subtask_matrix(df_w, TASK) if len(df_w) else None
    lp_wide = common.subtask_matrix(df_w, TASK, "answer_logprob") if len(df_w) else None
    trans: list[float] = []
    biggest = None
    if wide is not None and len(wide):
        biggest = wide.sort_values("N")["run_id"].iloc[-1]
        trans = _transition_widths(wide, biggest)
    # frequency-weighted held-out cross-entropy of the widest run at each evaluated step (nats)
    ce_steps = np.zeros(0)
    ce_curve = np.zeros(0)
    if biggest is not None and lp_wide is not None and len(lp_wide):
        lw = lp_wide[(lp_wide["run_id"] == biggest) & (lp_wide["step"] > 0)].sort_values("step")
        lcols = _subtask_cols(lw)
        if len(lw) and lcols:
            ce_steps = lw["step"].to_numpy(float)
            ce_curve = np.array([weighted_ce(-np.asarray(v, float), p[np.asarray(lcols, int)])
                                 for v in lw[lcols].to_numpy(float)])

    figures: dict[str, str] = {}
    # 1. scaling: weighted error (top) and CE excess (bottom) vs N and vs D, fits, theory slopes
    def _panel(ax: Any, key: str, rows: list[dict[str, Any]], y: str, plain: dict[str, Any] | None,
               trunc: dict[str, Any] | None, empty: str, label: str = "measured") -> None:
        xs = np.array([r[key] for r in rows], float)
        ys = np.array([r.get(y, math.nan) for r in rows], float)
        ok = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
        if ok.any():
            ax.plot(xs[ok], ys[ok], "ko", ms=4, label=label)
        if ok.sum() >= 2 and xs[ok].max() > xs[ok].min():
            xs, ys = xs[ok], ys[ok]
            xg = np.geomspace(xs.min(), xs.max(), 100)
            if plain is not None and math.isfinite(plain["exponent"]):
                k = common.loglog_fit(xs, ys, 0)["k"]
                ax.plot(xg, k * xg ** -plain["exponent"], "C0-",
                        label=f"power law, exponent {plain['exponent']:.2f}")
            if trunc is not None and math.isfinite(trunc.get("a", math.nan)):
                ax.plot(xg, _trunc_predict(trunc, xg, float(np.log(xs.max()))), "C1--",
                        label=f"finite-T law, exponent {trunc['a']:.2f}")
            th = theory["alpha_N" if key == "N" else "alpha_D"]
            ax.plot(xg, ys[0] * (xg / xs[0]) ** -th, "C2:", label=f"theory slope {th:.3f}")
        ax.set_xscale("log")
        if ok.any():
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, fontsize=8)

    def _draw1() -> Any:
        fig, axes = plt.subplots(2, 2, figsize=(8.6, 6.6))
        for col, key, rows, label in ((0, "N", rows_w, "parameters N (width sweep)"),
                                      (1, "D", rows_d, "training examples D (data sweep)")):
            f = fits[key]
            _panel(axes[0, col], key, rows, "weighted_error", f["plain"], f["finite_T"],
                   "no finished runs")
            axes[0, col].set_ylabel("frequency-weighted error")
            ax = axes[1, col]
            total = [(r[key], r["ce"]) for r in rows
                     if math.isfinite(r.get("ce", math.nan)) and r["ce"] > 0]
            if total:
                ax.plot(*zip(*total), "o", mfc="none", mec="0.6", ms=5,
                        label="total L_CE")
            _panel(ax, key, rows, "ce_excess", f.get("ce_plain"), f.get("ce_finite_T"),
                   "no per-subtask answer_logprob\nin these runs", "excess over learned floor")
            ax.axhline(math.log(2), color="0.7", lw=0.8, ls="-.", label="ln 2 (nothing learned)")
            ax.set_ylabel("frequency-weighted cross-entropy (nats)")
            for a in (axes[0, col], ax):
                a.set_xlabel(label)
                common.legend(a)
        axes[0, 0].set_title("weighted error Σ p_i (1 − acc_i)", fontsize=8)
        axes[1, 0].set_title("weighted cross-entropy: excess over learned floor (fitted), total",
                             fontsize=8)
        fig.suptitle("Sparse parity: loss scaling", fontsize=9)
        return fig

    figures["sparse_parity_scaling"] = common.figure(out_dir, "sparse_parity_scaling", _draw1, notes)

    # 2. per-subtask curves (abrupt) and the weighted error (smooth) of the widest run
    def _draw2() -> Any:
        fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.4))
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
        if len(ce_curve):
            axes[2].plot(ce_steps, ce_curve, "k.-", ms=3, label="held-out L_CE")
            axes[2].axhline(math.log(2), color="0.6", lw=0.8, ls="-.",
                            label="ln 2 (nothing learned)")
            axes[2].set_yscale("log")
            common.legend(axes[2])
        else:
            axes[2].text(0.5, 0.5, "no per-subtask answer_logprob\nin this run", ha="center",
                         va="center", transform=axes[2].transAxes, fontsize=8)
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("optimizer step")
        axes[0].set_ylabel("held-out exact match per subtask")
        axes[0].set_title("Subtasks 0-23 of the widest run (dark: frequent)", fontsize=8)
        axes[1].set_ylabel("frequency-weighted error")
        axes[1].set_title("Mean (weighted) error of the same run", fontsize=8)
        axes[2].set_ylabel("frequency-weighted cross-entropy (nats)")
        axes[2].set_title("Mean (weighted) cross-entropy of the same run", fontsize=8)
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
        ce_p, ce_t = f["ce_plain"], f["ce_finite_T"]
        return {"theory": th, "plain": f["plain"]["exponent"], "plain_ci": f["plain"]["ci"],
                "plain_within_ci": common.in_ci(th, f["plain"]["ci"]),
                "finite_T": f["finite_T"].get("a"), "finite_T_ci": f["finite_T"].get("ci"),
                "finite_T_within_ci": common.in_ci(th, f["finite_T"].get("ci")),
                # the same two laws fitted to the cross-entropy excess (None: no per-subtask CE)
                "ce_plain": ce_p["exponent"] if ce_p else None,
                "ce_plain_ci": ce_p["ci"] if ce_p else None,
                "ce_plain_within_ci": common.in_ci(th, ce_p["ci"]) if ce_p else None,
                "ce_finite_T": ce_t.get("a") if ce_t else None,
                "ce_finite_T_ci": ce_t.get("ci") if ce_t else None,
                "ce_finite_T_within_ci": common.in_ci(th, ce_t.get("ci")) if ce_t else None}

    result = {"alpha_N": verdict("N", theory["alpha_N"]), "alpha_D": verdict("D", theory["alpha_D"])}
    rows_tab, rows_tab_ce = [], []
    for name, v in result.items():
        rows_tab.append({"exponent": name, "theory": v["theory"],
                         "power law [95% CI]": common.fmt_ci(v["plain"], v["plain_ci"]),
                         "theory in CI": v["plain_within_ci"],
                         "finite-T law [95% CI]": common.fmt_ci(v["finite_T"], v["finite_T_ci"]),
                         "theory in CI (finite T)": v["finite_T_within_ci"]})
        rows_tab_ce.append({"exponent": name, "theory": v["theory"],
                            "power law [95% CI]": common.fmt_ci(v["ce_plain"], v["ce_plain_ci"]),
                            "theory in CI": v["ce_plain_within_ci"],
                            "finite-T law [95% CI]": common.fmt_ci(v["ce_finite_T"],
                                                                   v["ce_finite_T_ci"]),
                            "theory in CI (finite T)": v["ce_finite_T_within_ci"]})
    ce_available = any(fits[k]["ce_plain"] is not None for k in ("N", "D"))

    def total_ce(key: str) -> str:
        t = fits[key]["ce_total_plain"]
        return common.fmt_ci(t["exponent"], t["ci"]) if t else "n/a"
    sections = [
        "## Measured", "",
        f"T = {s['n_tasks']} subtasks, {s['k']}-bit parities over {s['n_bits']} bits, α = {alpha}, "
        f"one hidden layer, batch {s['batch']}, Adam lr {s['lr']}, {s['steps']} steps. "
        f"Loss = frequency-weighted held-out error. CIs: bootstrap over runs.", "",
        common.table(rows_tab), "",
        "Loss = frequency-weighted held-out cross-entropy L_CE = Σ p_i·CE_i (nats per answer "
        "token), fitted as its excess over the learned floor, Σ p_i·CE_i over the subtasks not yet "
        f"learned (exact match < {LEARNED}):", "",
        common.table(rows_tab_ce) if ce_available
        else "(not fitted: these runs have no per-subtask answer_logprob; see Notes)", "",
        f"Plain power law of the total L_CE (floor not subtracted): exponent {total_ce('N')} vs N, "
        f"{total_ce('D')} vs D.", "",
        "Width sweep (ce, ce_floor, ce_excess in nats per answer token):", "",
        common.table([{k: r[k] for k in ("width", "N", "weighted_error", "ce", "ce_floor",
                                         "ce_excess", "n_learned", "train_loss")}
                      for r in rows_w]), "",
        "Data sweep (width %d):" % s["data_width"], "",
        common.table([{k: r[k] for k in ("D", "N", "weighted_error", "ce", "ce_floor", "ce_excess",
                                         "n_learned")} for r in rows_d]),
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
    if len(ce_curve):
        sections.append(f"Cross-entropy of the widest run: {ce_curve[0]:.3g} nats at step "
                        f"{int(ce_steps[0])} -> {ce_curve[-1]:.3g} nats at step "
                        f"{int(ce_steps[-1])} (ln 2 = {math.log(2):.3f}: nothing learned).")
    summary = {"experiment": NAME, "theory": theory, "exponents": result, "fits": fits,
               "width_runs": rows_w, "data_runs": rows_d,
               "transition_decades": trans, "figures": figures, "notes": notes,
               "ce_available": ce_available,
               "widest_run_ce": {"step": [int(v) for v in ce_steps],
                                 "ce": [float(v) for v in ce_curve]}}
    common.write_markdown(out_dir, sys.modules[__name__], sections, figures, notes)
    return summary
