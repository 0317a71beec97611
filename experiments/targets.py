"""The quickstart's targets: is the law identified? Each target is a measured value and a ✓/✗.

A pure function of the study's summary (the numbers of its report), the per-run spike table and the
seed of each run, so the marks in experiment.md and experiment.json cannot disagree with the
numbers beside them:

    interior_minima    every IsoFLOP profile (budget × seed) has its lowest loss at an inner size
    approach2_a        N_opt ∝ C^a (approach 2): 95 % CI narrower than 0.3 that excludes 0
    approach3_alpha    α of L(N, D) = E + A/N^α + B/D^β: 95 % CI inside [0.05, 1.5]
    approach3_beta     β: the same
    approach3_E        E > 0 and below the best measured loss
    approaches_agree   approach 2's a and approach 3's a overlap within their CIs
    tokens_per_param   the compute-optimal tokens per parameter: CI narrower than one decade at
                       every budget of the grid
    no_spikes          no rise of the validation (or smoothed training) loss above its running
                       minimum by more than 0.5 nats after warmup, in any run
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

EXPONENT_RANGE = (0.05, 1.5)
MAX_A_CI_WIDTH = 0.3
MAX_TPP_DECADES = 1.0
SPIKE_NATS = 0.5

DESCRIPTIONS = {
    "interior_minima": "every IsoFLOP profile (budget × seed) has an interior minimum",
    "approach2_a": f"approach 2: N_opt ∝ C^a, 95% CI narrower than {MAX_A_CI_WIDTH} and excluding 0",
    "approach3_alpha": f"approach 3: α with its 95% CI inside [{EXPONENT_RANGE[0]}, {EXPONENT_RANGE[1]}]",
    "approach3_beta": f"approach 3: β with its 95% CI inside [{EXPONENT_RANGE[0]}, {EXPONENT_RANGE[1]}]",
    "approach3_E": "approach 3: E > 0 and below the best measured loss",
    "approaches_agree": "approaches 2 and 3 agree on a within their CIs",
    "tokens_per_param": f"compute-optimal tokens/param: CI narrower than {MAX_TPP_DECADES:g} decade at every budget",
    "no_spikes": f"no loss spike above {SPIKE_NATS} nats after warmup (validation, smoothed training)",
}


def _finite(*values: Any) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _missing(why: str) -> dict[str, Any]:
    return {"value": None, "met": False, "why": why}


def interior_minima(runs: list[Mapping[str, Any]], seed_of: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the target entry: profiles (budget × seed) whose lowest final loss is at an inner N."""
    profiles: dict[tuple[float, Any], list[Mapping[str, Any]]] = {}
    for r in runs:
        if _finite(r.get("budget")):
            profiles.setdefault((float(r["budget"]), seed_of.get(r["run"], 0)), []).append(r)
    if not profiles:
        return _missing("no completed run with a budget")
    rows = []
    for (budget, seed), group in sorted(profiles.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        best = min(group, key=lambda r: r["val_loss"])
        sizes = [r["N"] for r in group]
        rows.append({"budget": budget, "seed": seed, "N_best": best["N"],
                     "interior": bool(len(group) >= 3 and min(sizes) < best["N"] < max(sizes))})
    n_in = sum(r["interior"] for r in rows)
    return {"value": f"{n_in}/{len(rows)}", "met": n_in == len(rows), "profiles": rows}


def _ci_entry(value: Any, ci: Any, ok: bool) -> dict[str, Any]:
    return {"value": float(value), "ci": [float(ci[0]), float(ci[1])], "met": bool(ok)}


def quickstart_targets(summary: Mapping[str, Any], spikes: pd.DataFrame,
                       seed_of: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Returns {target: {'value', 'met', ...}} for the quickstart (see the module docstring).

    summary: the quickstart's summary (runs, approach2, chinchilla, compute_optimal); spikes: the
    `analysis.spikes.spike_table` of its runs; seed_of: run name -> seed. A target whose numbers
    are missing (a fit that could not be made) is not met and says why.
    """
    out: dict[str, dict[str, Any]] = {"interior_minima": interior_minima(summary.get("runs", []), seed_of)}

    a2 = (summary.get("approach2") or {}).get("N_opt")
    if a2 and _finite(a2.get("a"), *a2.get("ci_a", [None, None])):
        lo, hi = a2["ci_a"]
        out["approach2_a"] = _ci_entry(a2["a"], a2["ci_a"], hi - lo < MAX_A_CI_WIDTH and (lo > 0 or hi < 0))
    else:
        out["approach2_a"] = _missing("approach 2 not fitted or without a CI")

    chin = summary.get("chinchilla")
    if chin:
        params, ci = chin["params"], chin.get("ci", {})
        for name in ("alpha", "beta"):
            c = ci.get(name)
            if c and _finite(params.get(name), *c):
                inside = EXPONENT_RANGE[0] <= c[0] and c[1] <= EXPONENT_RANGE[1]
                out[f"approach3_{name}"] = _ci_entry(params[name], c, inside)
            else:
                out[f"approach3_{name}"] = _missing(f"{name} has no bootstrap CI")
        losses = [r["val_loss"] for r in summary.get("runs", []) if _finite(r.get("val_loss"))]
        E = params.get("E")
        best = min(losses) if losses else math.nan
        out["approach3_E"] = {"value": E, "best_loss": best, "ci": ci.get("E"),
                              "met": bool(_finite(E, best) and 0 < E < best)}
        a3, a3_ci = chin.get("a"), chin.get("a_ci")
        if a2 and _finite(a2.get("a"), *a2.get("ci_a", [None, None])) and a3_ci and _finite(a3, *a3_ci):
            overlap = max(a2["ci_a"][0], a3_ci[0]) <= min(a2["ci_a"][1], a3_ci[1])
            out["approaches_agree"] = {"value": {"approach2": a2["a"], "approach3": a3},
                                       "ci": {"approach2": a2["ci_a"], "approach3": list(a3_ci)},
                                       "met": bool(overlap)}
        else:
            out["approaches_agree"] = _missing("approach 2 or approach 3's a has no CI")
        widths = [math.log10(r["tpp_high"] / r["tpp_low"]) for r in summary.get("compute_optimal", [])
                  if _finite(r.get("tpp_low"), r.get("tpp_high")) and r["tpp_low"] > 0]
        n_budgets = len(summary.get("compute_optimal", []))
        if widths and len(widths) == n_budgets:
            out["tokens_per_param"] = {"value": max(widths), "unit": "decades (widest CI)",
                                       "met": max(widths) < MAX_TPP_DECADES}
        else:
            out["tokens_per_param"] = _missing(f"{n_budgets - len(widths)} of {n_budgets} budgets without "
                                               "a finite tokens/param CI")
    else:
        for name in ("approach3_alpha", "approach3_beta", "approach3_E", "approaches_agree", "tokens_per_param"):
            out[name] = _missing("approach 3 (the L(N, D) fit) not made")

    if len(spikes):
        rises = spikes[["train_max_rise", "val_max_rise"]].max(axis=1)
        counts = spikes["train_spikes"] + spikes["val_spikes"]
        out["no_spikes"] = {"value": float(rises.max()), "unit": "nats (largest rise)",
                            "runs_with_spikes": int((counts > 0).sum()), "runs": len(spikes),
                            "met": bool((counts == 0).all())}
    else:
        out["no_spikes"] = _missing("no run to judge")
    return out


def fmt_value(entry: Mapping[str, Any]) -> str:
    """Returns a target's value as a short text cell (with its CI when it has one)."""
    v, ci = entry.get("value"), entry.get("ci")
    if v is None:
        return f"— ({entry.get('why', 'missing')})"
    if isinstance(v, dict):
        return "; ".join(f"{k} {v[k]:.3g} [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" for k in v)
    if isinstance(v, str):
        return v
    text = f"{v:.3g}"
    if ci is not None and _finite(*ci):
        text += f" [{ci[0]:.3g}, {ci[1]:.3g}]"
    if "best_loss" in entry:
        text += f" (best loss {entry['best_loss']:.3g})"
    if "unit" in entry:
        text += f" {entry['unit']}"
    if "runs_with_spikes" in entry:
        text += f", {entry['runs_with_spikes']} of {entry['runs']} runs spike"
    return text


def table_rows(targets: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """Returns the rows of the targets table: target, measured value, ✓/✗."""
    return [{"target": DESCRIPTIONS[name], "measured": fmt_value(t), "met": "✓" if t["met"] else "✗"}
            for name, t in targets.items()]
