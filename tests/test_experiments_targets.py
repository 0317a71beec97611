"""The quickstart's targets: each mark follows from the numbers beside it (met and not met)."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments import targets


def _summary(**change):
    """Returns a quickstart summary that meets every target; `change` overrides top-level keys."""
    runs = [{"run": f"b{b}-n{n}-s{s}", "N": n, "budget": b, "val_loss": 2.0 + abs(n - 2) * 0.1 - 0.01 * b}
            for b in (1, 3) for n in (1, 2, 3) for s in (0, 1)]
    s = {"runs": runs,
         "approach2": {"N_opt": {"a": 0.5, "ci_a": [0.4, 0.6]}},
         "chinchilla": {"params": {"E": 1.0, "A": 5.0, "alpha": 0.4, "B": 6.0, "beta": 0.3},
                        "ci": {"alpha": [0.2, 0.9], "beta": [0.1, 0.6], "E": [0.5, 1.5]},
                        "a": 0.45, "a_ci": [0.3, 0.55]},
         "compute_optimal": [{"C": 1.0, "tpp_low": 10.0, "tpp_high": 50.0},
                             {"C": 3.0, "tpp_low": 12.0, "tpp_high": 60.0}]}
    s.update(change)
    return s


SEEDS = {f"b{b}-n{n}-s{s}": s for b in (1, 3) for n in (1, 2, 3) for s in (0, 1)}
CALM = pd.DataFrame({"run_name": list(SEEDS), "train_spikes": 0, "val_spikes": 0,
                     "train_max_rise": 0.1, "val_max_rise": 0.2})


def test_a_summary_that_identifies_the_law_meets_every_target():
    t = targets.quickstart_targets(_summary(), CALM, SEEDS)
    assert {k: v["met"] for k, v in t.items()} == {k: True for k in targets.DESCRIPTIONS}
    assert t["interior_minima"]["value"] == "4/4"  # 2 budgets x 2 seeds
    assert t["tokens_per_param"]["value"] == pytest.approx(0.69897, abs=1e-5)  # log10(60/12)
    assert t["no_spikes"]["value"] == pytest.approx(0.2)
    assert all(r["met"] == "✓" for r in targets.table_rows(t))


def test_each_target_fails_on_its_own_condition():
    s = _summary()
    s["runs"] = [dict(r, val_loss=1.0) if r["run"] == "b3-n3-s1" else r for r in s["runs"]]  # edge min
    t = targets.quickstart_targets(s, CALM, SEEDS)
    assert t["interior_minima"]["value"] == "3/4" and not t["interior_minima"]["met"]
    # E must lie below the best measured loss (here 1.0 after the change)
    assert not t["approach3_E"]["met"] and t["approach3_E"]["best_loss"] == 1.0
    wide = targets.quickstart_targets(_summary(approach2={"N_opt": {"a": 0.5, "ci_a": [0.3, 0.65]}}), CALM, SEEDS)
    assert not wide["approach2_a"]["met"]  # CI 0.35 wide
    zero = targets.quickstart_targets(_summary(approach2={"N_opt": {"a": 0.1, "ci_a": [-0.05, 0.2]}}), CALM, SEEDS)
    assert not zero["approach2_a"]["met"] and not zero["approaches_agree"]["met"]
    chin = _summary()["chinchilla"]
    low = dict(chin, ci=dict(chin["ci"], beta=[0.02, 0.6]), params=dict(chin["params"], E=0.0))
    t = targets.quickstart_targets(_summary(chinchilla=low), CALM, SEEDS)
    assert not t["approach3_beta"]["met"] and t["approach3_alpha"]["met"] and not t["approach3_E"]["met"]
    t = targets.quickstart_targets(_summary(compute_optimal=[{"C": 1.0, "tpp_low": 2.0, "tpp_high": 40.0}]),
                                   CALM, SEEDS)
    assert not t["tokens_per_param"]["met"] and t["tokens_per_param"]["value"] > 1
    spiky = CALM.assign(val_spikes=[1] + [0] * (len(CALM) - 1), val_max_rise=[0.7] + [0.2] * (len(CALM) - 1))
    t = targets.quickstart_targets(_summary(), spiky, SEEDS)
    assert not t["no_spikes"]["met"] and t["no_spikes"]["runs_with_spikes"] == 1


def test_missing_fits_are_not_met_and_say_why():
    t = targets.quickstart_targets({"runs": []}, CALM.iloc[:0], {})
    assert not any(v["met"] for v in t.values())
    assert t["approach3_alpha"]["why"] == "approach 3 (the L(N, D) fit) not made"
    assert "—" in targets.fmt_value(t["approach2_a"])
