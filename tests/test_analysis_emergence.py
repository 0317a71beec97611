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


def test_decreasing_series_is_no_increasing_transition_and_direction_fits_it():
    rng = np.random.default_rng(5)
    y = laws.sigmoid(X, 0.05, 0.85, -4.0, 21.0) + rng.normal(0, 0.02, len(X))  # falls from 0.85
    up = fit_emergence(X, y, bootstrap=0)
    assert not up.transition and up.fit.params["ceil"] > up.fit.params["floor"] and up.fit.params["k"] > 0
    down = fit_emergence(X, y, direction="decreasing", bootstrap=0)
    assert down.transition, down.verdict
    assert down.x0 == pytest.approx(21.0, abs=0.1)
    assert down.fit.params["ceil"] == pytest.approx(0.85, abs=0.03)
    assert down.fit.params["floor"] == pytest.approx(0.05, abs=0.03)
    assert down.level_end == pytest.approx(0.05, abs=0.03)  # the level reached is the floor


def test_ceiling_above_floor_in_every_bootstrap_refit():
    rng = np.random.default_rng(6)
    y = laws.sigmoid(X, 0.1, 0.3, 3.0, 20.5) + rng.normal(0, 0.03, len(X))
    r = fit_emergence(X, y, bootstrap=60, seed=1)
    names = r.fit.law.param_names
    boot = r.fit.boot[np.all(np.isfinite(r.fit.boot), axis=1)]
    assert len(boot) >= 55
    assert np.all(boot[:, names.index("ceil")] > boot[:, names.index("floor")])
    assert np.all(boot[:, names.index("k")] > 0)
    assert r.rise_ci[0] <= r.rise <= r.rise_ci[1]


def test_wiggle_near_chance_is_not_a_transition_when_chance_is_given():
    rng = np.random.default_rng(0)
    # a clean little sigmoid from chance 0.10 to 0.13: real, above noise, but not above chance + 0.05
    y = laws.sigmoid(X, 0.10, 0.13, 4.0, 21.0) + rng.normal(0, 0.004, len(X))
    assert fit_emergence(X, y, bootstrap=0).transition  # without a chance level it is a transition
    r = fit_emergence(X, y, chance=0.1, bootstrap=50)
    assert not r.transition
    assert r.reasons == [f"95% CI low end at the largest x, {r.level_end_ci[0]:.3g}, does not clear "
                         "chance 0.1 by 0.05"]
    assert r.level_end_ci[0] < 0.15
    # the same margin, a ceiling well above chance: a transition
    y2 = laws.sigmoid(X, 0.10, 0.40, 4.0, 21.0) + rng.normal(0, 0.004, len(X))
    assert fit_emergence(X, y2, chance=0.1, bootstrap=50).transition
    # a smaller stated margin accepts the small rise
    assert fit_emergence(X, y, chance=0.1, chance_margin=0.01, bootstrap=0).transition


def test_rise_within_noise_is_not_a_transition():
    x = np.geomspace(1e18, 1e23, 80)
    # a step of 0.04 under ±0.02 alternating noise: BIC and the midpoint rule accept it, the noise rule does not
    y = 0.3 + 0.04 * (np.log10(x) > 20.5) + 0.02 * (-1.0) ** np.arange(len(x))
    r = fit_emergence(x, y, bootstrap=0)
    assert not r.transition
    assert len(r.reasons) == 1 and "within noise" in r.reasons[0], r.reasons
    assert r.rise == pytest.approx(0.04, abs=0.01) and r.residual_sd == pytest.approx(0.02, rel=0.1)
    assert fit_emergence(x, y, bootstrap=0, noise_margin=1.0).transition


def test_noisy_plateau_is_not_a_late_decline_and_decreasing_metrics_decline_upwards():
    flags = 0
    for s in range(20):
        rng = np.random.default_rng(100 + s)
        y = laws.sigmoid(X, 0.0, 0.8, 5.0, 19.5) + rng.normal(0, 0.03, len(X))  # long noisy plateau
        flags += fit_emergence(X, y, bootstrap=0).decline["late_decline"]
    assert flags <= 1
    err = laws.sigmoid(X, 0.1, 0.9, -5.0, 20.0)
    err[-5:] += np.linspace(0.1, 0.4, 5)  # the error rate climbs back
    d = detect_late_decline(X, err, direction="decreasing")
    assert d["late_decline"] and d["drop"] > 0.2 and d["last_y"] > d["peak_y"]
    # a falling error rate that stays down is not flagged
    assert not detect_late_decline(X, laws.sigmoid(X, 0.1, 0.9, -5.0, 20.0), direction="decreasing")["late_decline"]


@pytest.mark.parametrize("kw, field", [(dict(direction="up"), "direction"), (dict(chance=float("nan")), "chance"),
                                       (dict(chance_margin=-0.1), "chance_margin"),
                                       (dict(noise_margin=float("inf")), "noise_margin")])
def test_bad_arguments_are_named(kw, field):
    with pytest.raises(ValueError, match=field):
        fit_emergence(X, np.linspace(0, 1, len(X)), bootstrap=0, **kw)
