"""Fitting: recovery of generating parameters with CI coverage, approach-3 properties."""

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.catalog import get_law
from analysis.fit import (chinchilla_params, compute_optimal_ci, fit_bnsl, fit_chinchilla, fit_flops_per_token,
                          fit_kaplan, fit_law, fit_power_law, fit_sigmoid, objective_value)
from analysis.loss_laws import hoffmann_grid
from analysis.synthetic import chinchilla_points

CHIN = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def _chin_data(n=64, noise=0.01, seed=0, **p):
    p = {**CHIN, **p}
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), n))
    L = laws.chinchilla(N, D, p["E"], p["A"], p["B"], p["alpha"], p["beta"]) * np.exp(rng.normal(0, noise, n))
    return N, D, L


def _coverage(fits, truth):
    """Returns the fraction of (repetition, parameter) pairs whose CI contains the true value."""
    hits = [fit.ci[k][0] <= v <= fit.ci[k][1] for fit in fits for k, v in truth.items()]
    return np.mean(hits)


def test_hoffmann_grid_is_their_4500_starts():
    g = hoffmann_grid()
    assert g.shape == (4500, 5)
    assert sorted(set(g[:, 3])) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert sorted(set(g[:, 2])) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert sorted(set(g[:, 0])) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    assert len({tuple(r) for r in g}) == 4500


def test_chinchilla_recovers_parameters_with_coverage():
    fits = [fit_chinchilla(*_chin_data(seed=s, noise=0.005), bootstrap=60, seed=s) for s in range(3)]
    for f in fits:
        assert f.n_starts == 4500
        # 0.5% noise, 64 points: exponents within 0.05, E within 10%
        assert f.params["alpha"] == pytest.approx(0.34, abs=0.05)
        assert f.params["beta"] == pytest.approx(0.28, abs=0.05)
        assert f.params["E"] == pytest.approx(1.69, rel=0.1)
        assert f.objective == pytest.approx(objective_value(f.law, f.raw, f.X, f.y), rel=1e-9)
    # 95% percentile CIs: at least 75% of the 15 (rep, param) pairs cover the truth
    assert _coverage(fits, CHIN) >= 0.75


def test_approach3_is_invariant_to_point_order():
    N, D, L = _chin_data(seed=5)
    f1 = fit_chinchilla(N, D, L, bootstrap=20, seed=0)
    perm = np.random.default_rng(1).permutation(len(N))
    f2 = fit_chinchilla(N[perm], D[perm], L[perm], bootstrap=20, seed=0)
    for k in f1.params:
        assert f2.params[k] == pytest.approx(f1.params[k], rel=1e-9)
        assert f2.ci[k] == pytest.approx(f1.ci[k], rel=1e-9)
    assert f2.objective == pytest.approx(f1.objective, rel=1e-12)
    # the objective itself does not depend on the order either (summation order only)
    v1 = objective_value(f1.law, f1.raw, np.column_stack([N, D]), L)
    v2 = objective_value(f1.law, f1.raw, np.column_stack([N, D])[perm], L[perm])
    assert v2 == pytest.approx(v1, rel=1e-12)


def test_grid_beats_naive_single_start_on_data_with_local_minima():
    # very different exponents (and noise) make the landscape multimodal
    truth = dict(E=1.5, A=3e3, B=40.0, alpha=0.5, beta=0.15)
    N, D, L = _chin_data(n=60, noise=0.005, seed=3, **truth)
    grid = fit_chinchilla(N, D, L)
    finals = grid.start_objectives[np.isfinite(grid.start_objectives)]
    # each grid start is itself a single-start fit: many of them stop in a worse local minimum
    assert np.mean(finals > 2 * grid.objective) >= 0.3
    assert grid.objective <= finals.min() * (1 + 1e-9)
    # a naive single start (a = b = e = 0, alpha = beta = 1) ends far above the grid's optimum
    naive = fit_chinchilla(N, D, L, init=np.array([[0.0, 0.0, 0.0, 1.0, 1.0]]))
    assert naive.objective > 3 * grid.objective
    assert grid.params["alpha"] == pytest.approx(0.5, abs=0.03)
    assert grid.params["beta"] == pytest.approx(0.15, abs=0.03)


@pytest.mark.parametrize("axis,truth", [("N", dict(E=1.8, A=300.0, alpha=0.3)),
                                        ("C", dict(E=1.7, A=2e3, alpha=0.15))])
def test_power_law_recovery_and_coverage(axis, truth):
    fits = []
    for s in range(3):
        rng = np.random.default_rng(s)
        x = np.geomspace(1e7, 1e11, 40) if axis == "N" else np.geomspace(1e17, 1e23, 40)
        y = laws.power_law(x, *truth.values()) * np.exp(rng.normal(0, 0.005, len(x)))
        f = fit_power_law(x, y, axis=axis, bootstrap=60, seed=s)
        names = ("E", "A", "alpha")
        assert f.params[names[2]] == pytest.approx(truth["alpha"], rel=0.15)  # 0.5% noise: 15%
        fits.append(f)
    assert _coverage(fits, truth) >= 0.75


def test_power_d_names_and_recovery():
    x = np.geomspace(1e8, 1e12, 30)
    y = laws.power_law_d(x, 1.6, 500.0, 0.28)
    f = fit_power_law(x, y, axis="D")
    assert set(f.params) == {"E", "B", "beta"}
    # noiseless: exact to 1e-3
    assert f.params["beta"] == pytest.approx(0.28, rel=1e-3)
    assert f.params["E"] == pytest.approx(1.6, rel=1e-3)


def test_kaplan_recovery_and_coverage():
    truth = dict(N_c=8.8e13, D_c=5.4e13, alpha_N=0.076, alpha_D=0.095)
    fits = []
    for s in range(3):
        rng = np.random.default_rng(s)
        N = np.exp(rng.uniform(np.log(1e6), np.log(1e10), 50))
        D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 50))
        L = laws.kaplan_nd(N, D, *truth.values()) * np.exp(rng.normal(0, 0.003, 50))
        f = fit_kaplan(N, L, D=D, bootstrap=60, seed=s)
        assert f.params["alpha_N"] == pytest.approx(0.076, rel=0.15)
        assert f.params["alpha_D"] == pytest.approx(0.095, rel=0.15)
        fits.append(f)
    # N_c, D_c are extremely extrapolated; coverage over exponents and constants
    assert _coverage(fits, truth) >= 0.75
    N = np.geomspace(1e6, 1e10, 20)
    f = fit_kaplan(N, laws.kaplan_n(N, 8.8e13, 0.076))
    assert f.params["alpha_N"] == pytest.approx(0.076, rel=1e-3)  # noiseless
    assert f.params["N_c"] == pytest.approx(8.8e13, rel=1e-2)


def test_bnsl_recovery():
    truth = dict(a=0.5, b=3.0, c0=0.1, c1=1.5, d1=1e3, f1=0.3)
    x = np.geomspace(10, 1e5, 40)
    fits = []
    for s in range(2):
        rng = np.random.default_rng(s)
        y = laws.bnsl(x, truth["a"], truth["b"], truth["c0"], [truth["c1"]], [truth["d1"]], [truth["f1"]])
        y = y * np.exp(rng.normal(0, 0.002, len(x)))
        f = fit_bnsl(x, y, bootstrap=60, seed=s)
        assert f.params["c1"] == pytest.approx(1.5, rel=0.2)  # 0.2% noise
        assert f.params["d1"] == pytest.approx(1e3, rel=0.3)
        fits.append(f)
    assert _coverage(fits, truth) >= 0.75


def test_sigmoid_recovery_and_coverage():
    truth = dict(floor=0.05, ceil=0.9, k=3.0, x0=20.0)
    x = np.geomspace(1e18, 1e22, 30)
    fits = []
    for s in range(4):
        rng = np.random.default_rng(s)
        y = laws.sigmoid(x, *truth.values()) + rng.normal(0, 0.02, len(x))
        f = fit_sigmoid(x, y, bootstrap=60, seed=s)
        assert f.params["x0"] == pytest.approx(20.0, abs=0.1)  # noise 0.02 on a 0.85 rise
        fits.append(f)
    assert _coverage(fits, truth) >= 0.75


def test_bootstrap_weights_paired_and_validation():
    x = np.geomspace(1e7, 1e11, 20)
    y = laws.power_law(x, 1.8, 300.0, 0.3)
    rng = np.random.default_rng(0)
    w = np.vstack([np.ones(20), rng.multinomial(20, np.full(20, 0.05), size=4)])
    f = fit_law(get_law("power-n"), x[:, None], y, bootstrap_weights=w)
    # the unit-weight resample reproduces the full-data fit; the others are refitted too
    np.testing.assert_allclose(f.boot[0, 2], f.params["alpha"], rtol=1e-6)
    assert np.isfinite(f.boot).all() and f.n_bootstrap == 5
    with pytest.raises(ValueError):
        fit_law("power-n", x[:, None], y, bootstrap_weights=np.ones((2, 19)))
    with pytest.raises(KeyError):
        get_law("nope")


def test_bootstrap_with_one_more_point_than_parameters_gives_no_interval():
    # E + B·D^−β has 3 parameters: with 4 points the only resamples that keep 4 distinct points
    # hold each point once, so their refits all equal the point estimate (a zero-width "CI")
    law = get_law("power-d")
    rng = np.random.default_rng(1)
    x = np.geomspace(1.6e4, 1.3e5, 4)
    y = laws.power_law(x, 1.0, 12.0, 0.3) * np.exp(rng.normal(0, 0.01, 4))
    f = fit_law(law, x[:, None], y, bootstrap=40, seed=0)
    assert all(np.isnan(lo) and np.isnan(hi) for lo, hi in f.ci.values())
    assert f.n_bootstrap == 0 and f.n_bootstrap_degenerate == 40
    paired = fit_law(law, x[:, None], y, bootstrap_weights=rng.multinomial(4, np.full(4, 0.25), 20))
    assert np.isnan(paired.boot).all()
    # with 6 points the surviving resamples differ, and so does the interval
    x6 = np.geomspace(1.6e4, 5.2e5, 6)
    y6 = laws.power_law(x6, 1.0, 12.0, 0.3) * np.exp(rng.normal(0, 0.01, 6))
    f6 = fit_law(law, x6[:, None], y6, bootstrap=40, seed=0)
    lo, hi = f6.ci["beta"]
    assert f6.n_bootstrap > 10 and hi > lo


def test_compute_optimal_ci_under_a_flops_per_token_law():
    N, D, L = chinchilla_points(n=64, noise=0.005, seed=0)
    fit = fit_chinchilla(N, D, L, bootstrap=16, seed=0)
    C = np.geomspace(1e18, 1e22, 3)
    k, gamma = 40.0, 0.85
    old, same = compute_optimal_ci(fit, C, flops_per_token="6ND"), compute_optimal_ci(fit, C, flops_per_token=(6.0, 1.0))
    pd.testing.assert_frame_equal(old, same, check_exact=True)
    df = compute_optimal_ci(fit, C, flops_per_token=(k, gamma))
    p = chinchilla_params(fit)
    np.testing.assert_allclose(df["N_opt"], laws.n_opt(C, p.A, p.B, p.alpha, p.beta, k, gamma), rtol=1e-12)
    np.testing.assert_allclose(k * df["N_opt"] ** gamma * df["D_opt"], C, rtol=1e-12)
    assert df["a"].iloc[0] == pytest.approx(p.beta / (p.alpha + gamma * p.beta), rel=1e-12)
    assert not np.allclose(df["N_opt"], old["N_opt"], rtol=0.05)  # the constraint matters
    for frame in (old, df):
        frame = frame.rename(columns={"tokens_per_param": "tpp"})
        for q in ("N_opt", "D_opt", "a", "tpp"):
            assert np.all(frame[f"{q}_low"] <= frame[q]) and np.all(frame[q] <= frame[f"{q}_high"]), q
            assert np.all(frame[f"{q}_low"] < frame[f"{q}_high"]), q


def test_fit_flops_per_token_recovers_the_power_law():
    N = np.geomspace(1e5, 1e8, 12)
    D = np.geomspace(1e7, 1e9, 12)
    C = D * 40.0 * N ** 0.85
    k, gamma = fit_flops_per_token(N, C, D)
    assert (k, gamma) == (pytest.approx(40.0, rel=1e-9), pytest.approx(0.85, rel=1e-9))
    # non-finite and non-positive points are ignored
    k2, gamma2 = fit_flops_per_token(np.r_[N, np.nan, 1e6], np.r_[C, 1e15, 1e15], np.r_[D, 1e6, 0.0])
    assert (k2, gamma2) == (pytest.approx(k, rel=1e-9), pytest.approx(gamma, rel=1e-9))
    # one distinct size: gamma fixed at 1, k = C/(D·N)
    assert fit_flops_per_token([1e6, 1e6], [6e15, 6e15], [1e9, 1e9]) == (pytest.approx(6.0, rel=1e-12), 1.0)
    with pytest.raises(ValueError):
        fit_flops_per_token([1e6], [-1.0], [1e9])


class _Bowl:
    """f(x) = Σ w·(x − t)²/Σw summed over coordinates; hashable, so compiled kernels are cached."""

    def __init__(self, wrong_gradient: bool):
        self.wrong_gradient = wrong_gradient

    def __call__(self, th, data):
        import jax.numpy as jnp
        _, t, w = data
        return jnp.sum((th[0] - t) ** 2 * w) / jnp.sum(w) + jnp.sum(th[1:] ** 2)

    def value_and_grad(self, th, data):
        import jax
        f, g = jax.value_and_grad(self)(th, data)
        # a wrong-signed gradient makes every search direction uphill: the line search must fail
        return f, -g if self.wrong_gradient else g


def test_lbfgs_reports_a_failed_line_search_as_not_converged():
    from analysis._optim import batched_lbfgs
    X = np.ones((8, 1))
    t = np.linspace(0.0, 1.0, 8)
    x0 = np.array([[3.0, 1.0], [-2.0, 0.5]])
    good = batched_lbfgs(_Bowl(False), x0, X, t)
    assert good.converged.all() and not good.line_search_failed.any()
    np.testing.assert_allclose(good.x[:, 0], t.mean(), atol=1e-6)
    bad = batched_lbfgs(_Bowl(True), x0, X, t)
    # the old kernel counted a failed line search as converged
    assert not bad.converged.any()
    assert bad.line_search_failed.all()
    assert np.all(bad.iterations < 3000)  # it stopped on the failure, not on maxiter
    np.testing.assert_allclose(bad.x, x0, atol=1e-6)  # no step was ever accepted


@pytest.mark.parametrize("law,X", [
    ("chinchilla", np.tile([[1e8, 1e10]], (16, 1))),  # 16 copies of one row
    ("chinchilla", np.tile([[1e8, 1e10], [1e9, 1e11]], (8, 1))),  # 2 distinct points repeated
    ("power-n", np.repeat([[1e7], [1e8], [1e9]], 5, axis=0)),  # 3 distinct points, 3 parameters
])
def test_fit_refuses_fewer_distinct_points_than_parameters_plus_one(law, X):
    y = 2.0 + np.arange(len(X)) * 1e-3
    n_distinct = len(np.unique(X, axis=0))
    with pytest.raises(ValueError, match=f"{n_distinct} distinct input points"):
        fit_law(law, X, y, bootstrap=10)


def test_fit_accepts_parameters_plus_one_distinct_points_and_reports_them():
    x = np.repeat(np.geomspace(1e7, 1e10, 4), 3)
    f = fit_power_law(x, laws.power_law(x, 1.8, 300.0, 0.3))
    assert f.n_distinct == 4 and f.n_points == 12
    assert f.converged
    assert f.to_dict()["n_distinct"] == 4
