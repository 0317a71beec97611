"""Prediction intervals from bootstrap draws plus residual noise, and the rollout check."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.backtest import backtest, rollout
from analysis.fit import fit_kaplan
from analysis.prediction import prediction_interval

N_C, ALPHA, NOISE = 8.8e13, 0.076, 0.02  # Kaplan L(N) with 2% log-normal noise


def _noisy(N, rng):
    return laws.kaplan_n(N, N_C, ALPHA) * np.exp(rng.normal(0, NOISE, np.shape(N)))


def test_prediction_intervals_cover_at_the_nominal_rate_and_widen_with_extrapolation():
    N_train = np.geomspace(1e6, 1e8, 25)
    N_new = np.array([1e7, 1e9, 1e11])  # inside the data, 1 and 3 decades beyond it
    hits, conf_hits, widths, conf_widths = [], [], [], []
    for rep in range(20):
        rng = np.random.default_rng(rep)
        fit = fit_kaplan(N_train, _noisy(N_train, rng), bootstrap=200, seed=rep, delta=math.inf)
        pi = prediction_interval(fit, N_new[:, None], level=0.9, seed=rep)
        assert np.all(pi["low"] < pi["pred"]) and np.all(pi["pred"] < pi["high"])
        fresh = _noisy(np.tile(N_new, (20, 1)), rng)  # 20 new observations per input
        lo, hi = pi["low"].to_numpy(), pi["high"].to_numpy()
        hits.append((lo <= fresh) & (fresh <= hi))
        conf_hits.append((pi["conf_low"].to_numpy() <= fresh) & (fresh <= pi["conf_high"].to_numpy()))
        widths.append(np.log(hi / lo))
        conf_widths.append(np.log(pi["conf_high"] / pi["conf_low"]).to_numpy())
    coverage = np.mean(hits, axis=(0, 1))  # per input
    assert np.all((coverage >= 0.8) & (coverage <= 0.97)), coverage
    # the band of the law alone (no residual noise) covers new observations far too rarely in range
    assert np.mean(conf_hits, axis=(0, 1))[0] < 0.6
    w, cw = np.mean(widths, axis=0), np.mean(conf_widths, axis=0)
    assert w[0] < w[1] < w[2] and cw[0] < cw[1] < cw[2]
    assert cw[2] > 3 * cw[0]
    # in range the interval is mostly noise: 90% of N(0, 2%) spans 2·1.645·0.02 in ln L
    assert w[0] == pytest.approx(2 * 1.645 * NOISE, rel=0.25)


def test_prediction_interval_validation():
    N = np.geomspace(1e6, 1e8, 12)
    fit = fit_kaplan(N, _noisy(N, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="bootstrap"):
        prediction_interval(fit, N[:, None])
    with pytest.raises(ValueError, match="level"):
        prediction_interval(fit, N[:, None], level=90)
    with pytest.raises(ValueError, match="columns"):
        prediction_interval(fit, np.ones((3, 2)))


def test_rollout_fits_the_smaller_runs_and_scores_the_largest():
    rng = np.random.default_rng(3)
    sizes = np.geomspace(1e6, 1e9, 7)
    df = pd.DataFrame([{"N": N, "run": f"n{N:.0e}-s{s}", "loss": float(_noisy(N, rng))}
                       for N in sizes for s in range(4)])
    bt = rollout(df, law="kaplan-n", by="N", bootstrap=200, level=0.9, delta=math.inf)
    assert bt.cut == pytest.approx(sizes[-2])
    assert bt.metrics["n_train"] == 24 and bt.metrics["n_test"] == 4
    assert (bt.table["N"] == sizes[-1]).all()
    assert bt.metrics["level"] == 0.9
    assert bt.metrics["coverage"] == pytest.approx(bt.table["covered"].mean())
    assert bt.metrics["coverage"] >= 0.5  # 4 held-out runs at a nominal 90%
    assert bt.metrics["mape"] < 3 * NOISE
    for lo, y, hi, ok in bt.table[["low", "y", "high", "covered"]].itertuples(index=False):
        assert ok == (lo <= y <= hi)
    # without a bootstrap there is no interval to score
    assert "coverage" not in backtest(df, law="kaplan-n", cut_col="N", cut=sizes[-2]).metrics
    with pytest.raises(ValueError, match="nope"):
        rollout(df, law="kaplan-n", by="nope")
    with pytest.raises(ValueError, match="distinct"):
        rollout(df[df["N"] == sizes[0]], law="kaplan-n", by="N")
