"""Ablation table (paired and unpaired differences) and the extrapolation backtest."""

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.ablation import ablation_table
from analysis.backtest import backtest

P = dict(E=1.8, A=300.0, alpha=0.3)


def _arms(shift_alpha=0.05, paired=True, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for arm, da in (("base", 0.0), ("better", shift_alpha)):
        Ns = np.geomspace(1e6, 1e9, 12) if (paired or arm == "base") else np.geomspace(1.3e6, 1.1e9, 12)
        for N in Ns:
            L = laws.power_law(N, P["E"], P["A"], P["alpha"] + da) * np.exp(rng.normal(0, 0.002))
            rows.append({"arm": arm, "N": N, "loss": L})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("paired", [True, False])
def test_ablation_table_differences(paired):
    tab = ablation_table(_arms(paired=paired), "arm", law="power-n", bootstrap=100, seed=0)
    assert set(tab["arm"]) == {"base", "better"}
    row = tab[(tab["arm"] == "better") & (tab["param"] == "alpha")].iloc[0]
    assert row["paired"] == paired
    # true difference +0.05 in alpha; 0.2% noise: estimate within 0.02 and CI covers it, excludes 0
    assert row["diff"] == pytest.approx(0.05, abs=0.02)
    assert row["diff_low"] <= 0.05 <= row["diff_high"]
    assert row["diff_low"] > 0
    base = tab[(tab["arm"] == "base") & (tab["param"] == "alpha")].iloc[0]
    assert base["diff"] == 0 and base["ci_low"] <= 0.3 <= base["ci_high"]


def test_ablation_with_emergence_points():
    df = _arms()
    x = np.geomspace(1e18, 1e23, 20)
    em = pd.concat([pd.DataFrame({"arm": a, "C": x, "value": laws.sigmoid(x, 0.0, 0.9, 5.0, x0)})
                    for a, x0 in (("base", 20.5), ("better", 20.0))])
    tab = ablation_table(df, "arm", law="power-n", bootstrap=30, emergence=em, emergence_x="C")
    r = tab[(tab["param"] == "x0") & (tab["arm"] == "better")].iloc[0]
    assert r["estimate"] == pytest.approx(20.0, abs=0.02)  # noiseless
    assert r["diff"] == pytest.approx(-0.5, abs=0.03)
    assert r["transition"] and r["diff_low"] <= r["diff"] <= r["diff_high"]


def test_ablation_reports_no_emergence_difference_without_a_transition():
    df = _arms()
    x = np.geomspace(1e18, 1e23, 20)
    rng = np.random.default_rng(1)
    em = pd.concat([pd.DataFrame({"arm": "base", "C": x, "value": laws.sigmoid(x, 0.0, 0.9, 5.0, 20.5)}),
                    pd.DataFrame({"arm": "better", "C": x, "value": np.abs(rng.normal(0, 0.002, x.size))})])
    tab = ablation_table(df, "arm", law="power-n", bootstrap=30, emergence=em, emergence_x="C")
    r = tab[(tab["param"] == "x0") & (tab["arm"] == "better")].iloc[0]
    assert not r["transition"]  # noise around 0: no sigmoid by BIC
    assert np.isnan(r["diff"]) and np.isnan(r["diff_low"]) and np.isnan(r["diff_high"])
    b = tab[(tab["param"] == "x0") & (tab["arm"] == "base")].iloc[0]
    assert b["transition"] and b["diff"] == 0


def test_backtest_extrapolates_chinchilla():
    rng = np.random.default_rng(0)
    rows = []
    for N in np.geomspace(1e7, 1e9, 8):
        for D in np.geomspace(1e8, 1e11, 6):
            L = laws.chinchilla(N, D, 1.69, 406.4, 410.7, 0.34, 0.28) * np.exp(rng.normal(0, 0.003))
            rows.append({"N": N, "D": D, "C": 6 * N * D, "loss": L})
    df = pd.DataFrame(rows)
    bt = backtest(df, law="chinchilla", cut_col="N", cut=3e8)
    assert bt.metrics["n_test"] == 12 and bt.metrics["n_train"] == 36
    assert (bt.table["N"] > 3e8).all()
    # 0.3% noise: held-out larger models predicted within 2% (mean abs), 4% worst case
    assert bt.metrics["mape"] < 0.02 and bt.metrics["max_abs_rel"] < 0.04
    with pytest.raises(ValueError):
        backtest(df, cut_col="N", cut=1e12)
