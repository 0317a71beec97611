"""The README's main job: a tuned IsoFLOP grid of byte-level LMs on the offline stdlib corpus.

Two stages. Tuning: every size is trained at one budget (`tune_flops`, at or below the grid's
smallest) over a grid of peak LRs (ratio 2 on the CPU scales) around a rule's prediction, each
size's grid as one population; an optimum at a grid edge extends the grid; tuned.json holds each
size's refined optimum LR* and the fitted LR*(N). IsoFLOP: transformers of 6 sizes (non-embedding
N from 3.4k to 101k on the `small` scale) are trained at 3 compute budgets (steps = budget / FLOPs
per step), each budget the 4 sizes whose tokens per parameter lie in a window around the optimum
(`sweep.isoflop_window`), with 2 seeds (a population per size and budget), each at its tuned LR*,
on the Python-stdlib corpus with in-context associative recall mixed into the stream (data.source='mixture'); validation loss and recall exact match are scored at
every checkpoint. The analysis fits L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. approach 3, Huber
on ln L, bootstrap CIs clustered by run), derives the compute-optimal frontier N_opt(C), D_opt(C)
and tokens per parameter with CIs, draws the LR tuning curves, loss vs compute and the IsoFLOP
profiles (mean over seeds), fits recall exact match against compute over all checkpoints with a
sigmoid (emergence point with CI, or "no transition" when a flat/linear model explains it as well),
and marks the study's targets (experiments/targets.py).
"""

from __future__ import annotations

import math
import pathlib
import sys
from typing import Any, Mapping

import ml_collections
import numpy as np

from experiments import common
from experiments import targets as targets_lib

NAME = "quickstart"
DESCRIPTION = ("LR tuning per size, then an IsoFLOP grid (3 budgets x 4 sizes in a sliding window "
               "x 2 seeds) of byte-level LMs on the stdlib corpus with associative recall mixed in: Chinchilla fit, "
               "compute-optimal frontier, emergence")
PAPER = ("Hoffmann et al. (2022), \"Training Compute-Optimal Large Language Models\" (approaches "
         "2 and 3); emergence as in Wei et al. (2022) and Schaeffer et al. (2023)")
EXPECTED_OUTCOME = (
    "Validation loss falls with compute along a frontier made of successively larger models; each "
    "IsoFLOP profile has its minimum at a larger N for a larger budget. The L(N, D) fit gives "
    "exponents α, β of a few tenths and an irreducible loss E below the best measured loss; "
    "Chinchilla (approach 3) found α = 0.34, β = 0.28, i.e. N_opt ∝ C^0.46 and about 20 tokens per "
    "parameter at their scale; at a few hundred thousand parameters and a byte vocabulary the "
    "optimum need not sit at 20. Recall exact match starts at 0 (before the answer format is "
    "learned), sits near chance (0.1) and rises with compute once in-context lookup is learned.")
EXPECTED_RUNTIME = {"tiny": "~1 min", "small": "11 min on 2 CPU cores (30 tuning + 24 IsoFLOP runs)",
                    "medium": "not yet measured on one GPU (20 tuning + 24 IsoFLOP runs)",
                    "large": "GPU/TPU cluster (hours)"}
FIGURES = ("qs_lr_tuning", "qs_loss_vs_compute", "qs_isoflop", "qs_compute_optimal", "qs_emergence")

TASK = "associative_recall"


def settings(scale: str) -> dict[str, Any]:
    """Returns sizes (target non-embedding N), IsoFLOP budgets (FLOPs), the mix rate, the seeds and
    the tuning stage (its budget in FLOPs, LR grid points, ratio of neighbouring LRs) of a scale."""
    return common.pick(
        scale,
        tiny=dict(sizes=(3.4e3, 6.7e3), flops=(2e8, 5e8), mix=0.3, seeds=(0, 1), window=(),
                  tune_flops=2e8, lr_points=3, lr_factor=2.0, max_extend=0),
        # 6 sizes, each budget training the 4 whose tokens per parameter lie in [10, 800] (the
        # measured optima sat at 50-150): 3.4k-25k at 1.5e11, 6.7k-50k at 4e11, 12.6k-101k at
        # 1e12. The full 5 x 3 grid put the 1e12 minimum at its largest size and spent its
        # longest runs (3.4k and 6.7k at 1e12, 10-15k steps) far from any optimum; at 1e11 the
        # profile's minimum sat at the smallest buildable size (3.4k) for 3 of 4 seeds, so the
        # lowest budget is 1.5e11. Tuning stays at 1e11 (cheaper; below every budget), over 5 LRs
        # per size (a 16x range): with 3, 5 of the 6 optima sat at an edge and took a second
        # round of single-run processes (tuning 173 s at ~13 GFLOP/s; with 5 points: 190 s,
        # ~16 GFLOP/s, every optimum inside the first grid, the whole study 5 s shorter).
        small=dict(sizes=(3.4e3, 6.7e3, 12.5e3, 25e3, 50e3, 100e3), flops=(1.5e11, 4e11, 1e12),
                   mix=0.3, seeds=(0, 1), window=(10.0, 800.0), tune_flops=1e11, lr_points=5,
                   lr_factor=2.0, max_extend=2),
        medium=dict(sizes=(0.25e6, 0.5e6, 1e6, 2e6), flops=(1e13, 3e13, 1e14), mix=0.2, window=(),
                    seeds=(0, 1), tune_flops=1e13, lr_points=5, lr_factor=2.0 ** 0.5, max_extend=2),
        large=dict(sizes=(10e6, 20e6, 40e6, 80e6, 160e6), flops=(1e17, 3e17, 1e18), mix=0.1, window=(),
                   seeds=(0,), tune_flops=1e17, lr_points=5, lr_factor=2.0 ** 0.5, max_extend=2),
    )


def sweeps(scale: str, data_dir: str = "", tfds_name: str = "",
           root: str | pathlib.Path | None = None) -> dict[str, ml_collections.ConfigDict]:
    """Returns {'tune': the LR tuning stage, 'isoflop': the sizes x budgets x seeds sweep}.

    The tuning stage trains every size at one budget (`tune_flops`) over a grid of peak LRs around
    the rule's prediction (extended where the optimum sits at an edge); its runs of one size share a
    shape and a length, so the runner trains them as one population. It writes ROOT/tune/tuned.json
    (per-size optimum and the fitted LR*(N)), which the IsoFLOP sweep reads (`lr.rule = "tuned"`).
    Without `root` (a dry run, which trains nothing) the IsoFLOP sweep shows the rule's predicted
    LRs instead, since the tuned ones do not exist yet.
    """
    s = settings(scale)
    base = common.lm_base(scale, data_dir, tfds_name)
    common.add_recall_task(base, scale, s["mix"])
    sw = common.lm_sweep(scale, "quickstart", base)
    sw.sizes = tuple(s["sizes"])
    sw.flops = tuple(s["flops"])
    if scale == "small":  # the tuning grid's centre: the LR*(N) this stage measured before
        sw.lr.rule = "power"  # (1.56 N^-0.49 over 6.7k-101k at 1e11; the old table was 2-5x low)
        sw.lr.ref_n = 25e3
        sw.lr.ref_value = 0.011
        sw.lr.exponent = -0.5
    elif scale in ("medium", "large"):
        if scale == "medium":  # 4k tokens per step: >= 150 steps for the largest model
            sw.base.train.batch_size = 16
            sw.base.optim.warmup_steps = 50
        sw.lr.rule = "power"  # lr = 3e-3 * (N / 1e5)^-0.25
        sw.lr.ref_n = 1e5
        sw.lr.ref_value = 3e-3
        sw.lr.exponent = -0.25
    tune = sw.copy_and_resolve_references()
    tune.name = "quickstart_tune"
    tune.flops = (float(s["tune_flops"]),)
    tune.isoflop_window = ()  # every size is tuned at the one budget
    tune.seeds = (0,)
    tune.tune.enabled = True
    tune.tune.lr_points = int(s["lr_points"])
    tune.tune.lr_factor = float(s["lr_factor"])
    tune.tune.max_extend = int(s["max_extend"])
    tune.tune.bootstrap = common.BOOTSTRAP[scale]
    sw.seeds = tuple(s["seeds"])
    sw.isoflop_window = tuple(s["window"])
    if root is not None:
        sw.lr.rule = "tuned"
        sw.lr.tuned_file = str(pathlib.Path(root).absolute() / "tune" / tune.tune.out)
        sw.lr.tuned_source = "optimum"  # every size was tuned: its own refined optimum
    return {"tune": tune, "isoflop": sw}


# ------------------------------------------------------------------------------------ analysis


def analyze(root: pathlib.Path, out_dir: pathlib.Path, scale: str, bootstrap: int) -> dict[str, Any]:
    """Returns the Chinchilla fit, compute-optimal frontier and emergence numbers; writes the report.

    One set of numbers: the generic report (report.md, summary.json) is built first, and every number
    the two share (runs, N, D, C, final losses, the L(N, D) fit, FLOPs per token, the compute-optimal
    allocation, approach 2) is read from it, so experiment.md cannot disagree with it. N is the
    non-embedding count, C = D × each run's measured FLOPs per token.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from analysis.emergence import fit_emergence
    from analysis.errors import InsufficientData
    from analysis.runs import Convention, apply_convention

    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_root = root / "isoflop"
    generic = common.generic_report([sweep_root], out_dir, bootstrap, "Quickstart: IsoFLOP grid", notes)
    conv = generic.get("convention", {}).get("text", Convention().describe())
    df = common.load(sweep_root, notes)
    df = apply_convention(df, Convention()) if len(df) else df
    val = common.curves(df, "val/loss", "eval") if len(df) else None
    figures: dict[str, str | None] = {}
    summary: dict[str, Any] = {"experiment": NAME, "convention": generic.get("convention"),
                               "runs_excluded": generic.get("runs_excluded", [])}
    runs = [r for r in generic.get("runs", []) if r["loss_metric"] == "val/loss"]
    summary["runs"] = [{"run": r["run"], "N": r["N"], "N_total": r["N_total"], "D": r["D"], "C": r["C"],
                        "budget": r["budget"], "val_loss": r["loss"]} for r in runs]

    # 1. loss vs compute over all checkpoints, colour = N
    def _draw1() -> Any:
        if val is None or not len(val[val["C"] > 0]):
            raise InsufficientData("no val/loss at a checkpoint with FLOPs")
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        v = val[val["C"] > 0]
        norm = LogNorm(vmin=v["N"].min(), vmax=max(v["N"].max(), v["N"].min() * 1.01))
        for run_id, g in v.groupby("run_id"):
            ax.plot(g["C"], g["value"], "-", lw=1, color=plt.get_cmap("viridis")(norm(g["N"].iloc[0])))
        sm = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
        fig.colorbar(sm, ax=ax, label="non-embedding parameters N")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C = D x measured FLOPs/token")
        ax.set_ylabel("validation loss (nats/byte)")
        ax.set_title("Loss vs compute (every checkpoint)", fontsize=9)
        return fig

    figures["qs_loss_vs_compute"] = common.figure(out_dir, "qs_loss_vs_compute", _draw1, notes)

    # 2. IsoFLOP profiles: final loss vs N per budget (mean over seeds); the minimum per budget
    by_budget: dict[float, list[dict[str, Any]]] = {}
    for r in summary["runs"]:
        if math.isfinite(r["budget"] if r["budget"] is not None else math.nan):
            by_budget.setdefault(float(r["budget"]), []).append(r)
    profiles: dict[float, list[dict[str, Any]]] = {}  # budget -> per N: mean loss over seeds
    for b, g in by_budget.items():
        per_n: dict[int, list[dict[str, Any]]] = {}
        for r in g:
            per_n.setdefault(r["N"], []).append(r)
        profiles[b] = [{"N": n, "D": float(np.mean([r["D"] for r in rs])),
                        "val_loss": float(np.mean([r["val_loss"] for r in rs])), "seeds": len(rs)}
                       for n, rs in sorted(per_n.items())]
    best: list[dict[str, Any]] = []
    for b, prof in sorted(profiles.items()):
        m = min(prof, key=lambda p: p["val_loss"])
        ns = [p["N"] for p in prof]
        best.append({"budget": b, "N_best": m["N"], "D_best": m["D"], "loss_best": m["val_loss"],
                     "seeds": m["seeds"], "interior": bool(min(ns) < m["N"] < max(ns))})
    summary["isoflop_minima"] = best

    def _draw2() -> Any:
        if not best:
            raise InsufficientData("no completed run with a budget axis and a final val/loss")
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        for i, m in enumerate(best):
            prof = profiles[m["budget"]]
            ax.plot([p["N"] for p in prof], [p["val_loss"] for p in prof], "o-", color=f"C{i}", ms=4,
                    label=f"C = {m['budget']:.1e}")
            ax.plot([r["N"] for r in by_budget[m["budget"]]], [r["val_loss"] for r in by_budget[m["budget"]]],
                    ".", color=f"C{i}", ms=3, alpha=0.6)
            ax.plot([m["N_best"]], [m["loss_best"]], "*", color=f"C{i}", ms=11)
        common.legend(ax)
        ax.set_xscale("log")
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("final validation loss (nats/byte)")
        ax.set_title("IsoFLOP profiles (line: mean over seeds, dots: seeds; star: lowest)", fontsize=9)
        return fig

    figures["qs_isoflop"] = common.figure(out_dir, "qs_isoflop", _draw2, notes)

    # 3. Chinchilla fit (approach 3) and the compute-optimal frontier with CIs: the generic report's
    chin = generic.get("chinchilla")
    co = generic.get("compute_optimal_curve")
    if chin is not None:
        at = generic["compute_optimal"]
        summary["flops_per_token_fit"] = generic["flops_per_token_fit"]
        summary["chinchilla"] = {"params": chin["params"], "ci": chin["ci"], "rms_ln_residual": chin["rms_residual"],
                                 "n_points": chin["n_points"], "a": at[0]["a"], "b": at[0]["b"],
                                 "a_ci": [at[0]["a_low"], at[0]["a_high"]]}
        summary["compute_optimal"] = at
    if "approach2" in generic:
        summary["approach2"] = generic["approach2"]

    def _draw3() -> Any:
        if co is None and not best:
            raise InsufficientData("no L(N, D) fit and no IsoFLOP minimum")
        fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.4))
        if co is not None:
            cc = [r["C"] for r in co]
            axes[0].plot(cc, [r["N_opt"] for r in co], "C0-", label="N_opt(C) from the fit")
            axes[1].plot(cc, [r["tokens_per_param"] for r in co], "C1-", label="D_opt / N_opt")
            axes[0].fill_between(cc, [r["N_opt_low"] for r in co], [r["N_opt_high"] for r in co],
                                 color="C0", alpha=0.2, lw=0)
            axes[1].fill_between(cc, [r["tpp_low"] for r in co], [r["tpp_high"] for r in co],
                                 color="C1", alpha=0.2, lw=0)
        for b in best:
            axes[0].plot([b["budget"]], [b["N_best"]], "k*", ms=9)
            axes[1].plot([b["budget"]], [b["D_best"] / b["N_best"]], "k*", ms=9)
        axes[0].plot([], [], "k*", label="lowest-loss run per budget")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("training compute C (FLOPs, measured accounting)")
            common.legend(ax)
        axes[0].set_ylabel("compute-optimal N (non-embedding parameters)")
        axes[1].set_ylabel("tokens per parameter")
        fig.suptitle("Compute-optimal frontier of the L(N, D) fit, C = D x FLOPs/token(N) "
                     "(shaded: bootstrap 95% CI)", fontsize=9)
        return fig

    figures["qs_compute_optimal"] = common.figure(out_dir, "qs_compute_optimal", _draw3, notes)

    # 4. emergence of recall: exact match vs compute over every checkpoint of every run
    em = common.curves(df, f"{TASK}/exact_match", "eval") if len(df) else None
    e = em[em["C"] > 0] if em is not None and len(em) else None
    emerg = None
    if e is not None and len(e) >= 6 and e["value"].max() > e["value"].min():
        emerg = common.fit_or_none(lambda: fit_emergence(e["C"], e["value"], bootstrap=bootstrap),
                                   "emergence sigmoid", notes)
    elif e is not None and len(e):
        notes.append(f"emergence sigmoid: not fitted ({len(e)} checkpoints, exact match "
                     f"{'constant' if e['value'].max() == e['value'].min() else 'varies'}; need ≥ 6 that vary)")
    if emerg is not None:
        summary["emergence"] = {"verdict": emerg.verdict, "transition": emerg.transition,
                                "x0_log10_flops": emerg.x0, "x0_ci": list(emerg.x0_ci),
                                "final_max_exact_match": float(e.groupby("run_id").tail(1)["value"].max())}

    def _draw4() -> Any:
        if e is None or not len(e):
            raise InsufficientData(f"no {TASK}/exact_match at a checkpoint with FLOPs")
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        norm = LogNorm(vmin=e["N"].min(), vmax=max(e["N"].max(), e["N"].min() * 1.01))
        ax.scatter(e["C"], e["value"], c=e["N"], norm=norm, cmap="viridis", s=8)
        if emerg is not None:
            cg = np.geomspace(e["C"].min(), e["C"].max(), 200)
            ax.plot(cg, emerg.fit.predict(cg[:, None]), "k-", lw=1,
                    label="sigmoid fit" + ("" if emerg.transition else " (no transition by BIC)"))
            if emerg.transition and emerg.x0_in_range:
                ax.axvline(emerg.x_emergence, color="k", ls=":", lw=1)
            common.legend(ax)
        ax.axhline(0.1, color="0.5", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training compute C = D x measured FLOPs/token")
        ax.set_ylabel("recall exact match (fraction)")
        ax.set_title("Associative recall vs compute (dashed: chance 1/10)", fontsize=9)
        return fig

    figures["qs_emergence"] = common.figure(out_dir, "qs_emergence", _draw4, notes)

    # 5. the tuning stage: loss vs peak LR per size, the optimum each IsoFLOP run trained with
    tuning = _tuning(root / "tune", out_dir, figures, notes)
    if tuning is not None:
        summary["tuning"] = tuning

    sections = ["## Measured", "", f"Convention (as in `report.md`): {conv}.", ""]
    if tuning is not None:
        sections += [_tuning_text(tuning, float(settings(scale)["tune_flops"])), ""]
    if summary["runs"]:
        ordered = sorted(summary["runs"], key=lambda r: (r["budget"] if r["budget"] is not None else math.inf,
                                                         r["N"], r["run"]))
        sections += [common.table([{"run": r["run"], "N": r["N"], "D": r["D"], "C": r["C"],
                                    "val loss": r["val_loss"]} for r in ordered]), ""]
    if summary["runs_excluded"]:
        sections += [f"{len(summary['runs_excluded'])} runs left out of every fit (did not complete): "
                     + ", ".join(f"{r['run']} ({r['state']})" for r in summary["runs_excluded"]) + ".", ""]
    if chin is not None:
        c, f = summary["chinchilla"], summary["flops_per_token_fit"]
        sections += ["L(N, D) = E + A/N^α + B/D^β (approach 3; 95% bootstrap CIs):", "",
                     common.table([{"param": k, "estimate [95% CI]": common.fmt_ci(v, c["ci"].get(k))}
                                   for k, v in c["params"].items()]), "",
                     f"Allocation exponents under the measured FLOPs per token: N_opt ∝ C^{c['a']:.3f} "
                     f"(95% CI [{common.fmt_ci(c['a_ci'][0], None)}, {common.fmt_ci(c['a_ci'][1], None)}]), "
                     f"D_opt ∝ C^{c['b']:.3f}.", "",
                     "Compute-optimal allocation at the grid's budgets, from the fit, with C = D x "
                     f"FLOPs per token of the model family (fitted to the runs: {f['coef']:.4g} x "
                     f"N^{f['exponent']:.4f} FLOPs/token; unembedding and attention make it far more than "
                     "6N at these sizes); 95% bootstrap CIs:", "",
                     common.table([{"C": r["C"], "N_opt [95% CI]": common.fmt_ci(r["N_opt"], [r["N_opt_low"], r["N_opt_high"]]),
                                    "D_opt": r["D_opt"],
                                    "tokens/param [95% CI]": common.fmt_ci(r["tokens_per_param"], [r["tpp_low"], r["tpp_high"]])}
                                   for r in summary["compute_optimal"]]), ""]
    if best:
        sections += ["Lowest loss per budget (IsoFLOP minimum on the grid; loss: mean over seeds):", "",
                     common.table(best), ""]
    try:  # Σ model FLOPs of every run over the training wall time of this root's invocations
        tp = summary["throughput"] = common.realised_throughput(root)
        sections += [f"Training throughput: {tp['flops']:.3g} model FLOPs over {tp['runs']} runs "
                     f"(tuning and IsoFLOP) in {tp['train_s']:.0f} s of training wall time: "
                     f"{tp['flops_per_s'] / 1e9:.1f} GFLOP/s realised.", ""]
    except InsufficientData as err:
        notes.append(f"training throughput: not measured ({err})")
    if "emergence" in summary:
        em_s = summary["emergence"]
        sections += [f"Recall emergence vs compute: {em_s['verdict']}; sigmoid midpoint "
                     f"10^{common.fmt_ci(em_s['x0_log10_flops'], em_s['x0_ci'])} FLOPs; best final exact "
                     f"match {em_s['final_max_exact_match']:.3f} (chance 0.1).", ""]
    # 6. targets: is the law identified? (experiments/targets.py; the same marks in experiment.json)
    from analysis.runs import run_table
    from analysis.spikes import spike_table

    spikes = spike_table(sweep_root) if sweep_root.exists() else spike_table([])
    done = {r["run"] for r in summary["runs"]}
    spikes = spikes[spikes["run_name"].isin(done)]
    table = run_table(sweep_root) if sweep_root.exists() else None
    seed_of = ({} if table is None or "seed" not in table.columns
               else dict(zip(table["run_name"].astype(str), table["seed"])))
    summary["spikes"] = spikes.drop(columns=["run_dir"]).to_dict(orient="records")
    summary["targets"] = targets_lib.quickstart_targets(summary, spikes, seed_of)
    n_met = sum(t["met"] for t in summary["targets"].values())
    sections = ["## Targets", "",
                f"{n_met} of {len(summary['targets'])} targets met (experiments/README.md says what each "
                "needs and why).", "", common.table(targets_lib.table_rows(summary["targets"])), "",
                *sections]
    summary.update(figures=figures, notes=notes)
    common.write_markdown(out_dir, sys.modules[__name__], sections, figures, notes)
    return summary


def _tuning(tune_root: pathlib.Path, out_dir: pathlib.Path, figures: dict[str, str | None],
            notes: list[str]) -> dict[str, Any] | None:
    """Returns the tuning stage's per-size optima, LR*(N) fit and flags (None, noted, without
    tuned.json); draws qs_lr_tuning (final validation loss vs peak LR per size)."""
    from analysis.errors import InsufficientData
    from analysis.tuning import plot_lr_curves, read_tuned, sizes_not_all_diverged

    path = tune_root / "tuned.json"
    if not path.exists():
        notes.append(f"tuning stage: {path.relative_to(tune_root.parent)} not written (a tuning run "
                     "neither completed nor diverged); the IsoFLOP sweep could not read its LRs")

        def _missing() -> Any:
            raise InsufficientData("no tuned.json")

        figures["qs_lr_tuning"] = common.figure(out_dir, "qs_lr_tuning", _missing, notes)
        return None
    tuned, table = read_tuned(path)
    fit = (tuned.get("fits") or {}).get("lr")

    def _draw() -> Any:
        kept = sizes_not_all_diverged(table)
        if not len(kept):
            raise InsufficientData("every tuning run diverged")
        return plot_lr_curves(kept, fit=fit)

    figures["qs_lr_tuning"] = common.figure(out_dir, "qs_lr_tuning", _draw, notes)
    n_runs = int(len(table))
    n_diverged = int((~np.isfinite(table["loss"].to_numpy(float))).sum())
    return {"sizes": tuned["sizes"], "fit": fit, "flags": list(tuned.get("flags", [])),
            "runs": n_runs, "diverged": n_diverged, "file": str(path.relative_to(tune_root.parent))}


def _tuning_text(tuning: Mapping[str, Any], budget: float) -> str:
    """Returns the Markdown of the tuning stage (trained at `budget` FLOPs): per-size optima, the
    LR*(N) fit and its flags."""
    rows = [{"N": r["N"], "grid LR": r["lr"],
             "LR* (refined)": "diverged" if r.get("lr_opt") is None else r["lr_opt"],
             "loss": r.get("loss"), "seeds": r.get("n_seeds"), "edge": r.get("edge") or ""}
            for r in tuning["sizes"]]
    lines = [f"Tuning stage ({tuning['runs']} runs, {tuning['diverged']} diverged; "
             f"`{tuning['file']}`): final validation loss over a grid of peak LRs per size at "
             f"C = {budget:.3g} FLOPs; each IsoFLOP run trains at its size's refined optimum LR*.", "",
             common.table(rows)]
    fit = tuning.get("fit")
    if fit:
        lines += ["", f"LR*(N) = {fit['c']:.4g} · N^{fit['e']:.3f}, exponent 95% CI "
                  f"[{fit['ci_e'][0]:.3f}, {fit['ci_e'][1]:.3f}] (cluster bootstrap over sizes)."]
    lines += [f"- flag: {flag}" for flag in tuning["flags"]]
    return "\n".join(lines)

