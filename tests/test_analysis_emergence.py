"""Emergence: transition vs no transition, late declines, discrete vs continuous, subtasks."""

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.emergence import (detect_late_decline, discrete_vs_continuous, fit_emergence,
                                learned_subtasks, subtask_curves)

X = np.geomspace(1e18, 1e23, 26)


def test_sigmoid_transition_detected_with_ci_coverage():
    covered = 0
    for s in range(5):
        rng = np.random.default_rng(s)
        y = laws.sigmoid(X, 0.02, 0.85, 4.0, 21.0) + rng.normal(0, 0.02, len(X))
        r = fit_emergence(X, y, bootstrap=100, seed=s)
        assert r.transition and r.verdict == "transition"
        assert r.x0 == pytest.approx(21.0, abs=0.1)  # noise 0.02 on a 0.83 rise
        assert r.x_emergence == pytest.approx(10 ** r.x0)
        assert r.x0_in_range and not r.decline["late_decline"]
        bic = r.comparison.table["bic"]
        assert bic["sigmoid"] < bic["linear"] - 2 and bic["sigmoid"] < bic["flat"] - 2
        assert r.comparison.f_pvalue < 1e-3
        covered += r.x0_ci[0] <= 21.0 <= r.x0_ci[1]
    assert covered >= 4  # 95% CIs: at least 4 of 5 repetitions cover the true midpoint


@pytest.mark.parametrize("kind", ["flat", "linear"])
def test_no_transition_for_flat_or_linear_data(kind):
    base = np.full(len(X), 0.3) if kind == "flat" else 0.1 + 0.05 * (np.log10(X) - 18)
    for s in range(6):
        rng = np.random.default_rng(s)
        r = fit_emergence(X, base + rng.normal(0, 0.02, len(X)), bootstrap=0)
        assert not r.transition, (s, r.verdict)
        assert r.verdict.startswith("no transition")


def test_late_decline_flagged():
    rng = np.random.default_rng(2)
    y = laws.sigmoid(X, 0.0, 0.8, 5.0, 20.0)
    y[-5:] -= np.linspace(0.1, 0.4, 5)  # the largest runs get worse
    r = fit_emergence(X, y + rng.normal(0, 0.01, len(X)), bootstrap=0)
    assert r.decline["late_decline"]
    assert r.decline["drop"] > 0.3
    # a monotone curve is not flagged, and a decline below tolerance is not either
    assert not detect_late_decline(X, np.linspace(0, 1, len(X)))["late_decline"]
    y2 = np.linspace(0, 1, len(X))
    y2[-1] = 0.99
    assert not detect_late_decline(X, y2, rel_tol=0.05)["late_decline"]


def test_discrete_vs_continuous_predicts_exact_match():
    N = np.geomspace(1e6, 1e10, 12)
    ce = 0.05 + 30.0 * N ** -0.3  # per-token cross-entropy, nats
    ell = 5
    em = np.exp(-ell * ce)
    r = discrete_vs_continuous(N, -ce, em, ell, bootstrap=50)
    assert r.fit.params["alpha"] == pytest.approx(0.3, rel=0.02)  # noiseless
    assert r.rmse_em < 0.01
    # the same smooth CE yields a sharp-looking exact-match curve (p^ℓ), and a wrong ℓ is visibly off
    wrong = discrete_vs_continuous(N, -ce, em, 1, bootstrap=0)
    assert wrong.rmse_em > 10 * r.rmse_em


def _subtask_df():
    rows = []
    for N in (1e6, 1e7, 1e8):
        for step, D in ((10, 1e8), (100, 1e9)):
            for i in range(4):
                v = 1.0 if (N >= 10 ** (6 + i)) and D >= 1e9 else 0.5
                rows.append({"run_id": f"n{N:.0e}", "step": step, "N": N, "D": D, "C": 6 * N * D,
                             "metric": f"parity/subtask_{i}/exact_match", "value": v})
            rows.append({"run_id": f"n{N:.0e}", "step": step, "N": N, "D": D, "C": 6 * N * D,
                         "metric": "val/loss", "value": 3.0})
    return pd.DataFrame(rows)


def test_subtask_curves_and_learned_counts():
    df = _subtask_df()
    wide = subtask_curves(df, "parity")
    assert sorted(c for c in wide.columns if isinstance(c, int)) == [0, 1, 2, 3]
    assert len(wide) == 6
    learned = learned_subtasks(df, "parity", threshold=0.9)
    fin = learned[learned["step"] == 100].set_index("N")["n_learned"]
    assert fin.to_dict() == {1e6: 1, 1e7: 2, 1e8: 3}
    early = learned[learned["step"] == 10]["n_learned"]
    assert (early == 0).all()
    assert subtask_curves(df, "other").empty
