"""Approaches 1 and 2 on synthetic Chinchilla data with known compute-optimal exponents."""

import numpy as np
import pytest

from analysis import laws
from analysis.errors import InsufficientData
from analysis.isoflop import approach1, approach2, fit_loglog, group_budgets, isoflop_optima, loss_frontier

P = laws.ChinchillaParams(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
A_TRUE = P.beta / (P.alpha + P.beta)  # 0.4516


def _isoflop_grid(noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    C, N, L = [], [], []
    for c in np.geomspace(1e18, 1e21, 7):
        n_opt = laws.compute_optimal(P, c).N_opt
        for n in n_opt * np.geomspace(1 / 8, 8, 9):
            C.append(c)
            N.append(n)
            L.append(laws.chinchilla(n, c / (6 * n), P.E, P.A, P.B, P.alpha, P.beta))
    L = np.array(L) * np.exp(rng.normal(0, noise, len(L)))
    return np.array(C), np.array(N), L


def test_approach2_recovers_allocation_exponent():
    C, N, L = _isoflop_grid()
    res = approach2(C, N, L, bootstrap=200, flops_per_token=(6.0, 1.0))
    # noiseless, 9 sizes per budget over a factor 64: Akima argmin within 0.01 of β/(α+β)
    assert res.n_fit.a == pytest.approx(A_TRUE, abs=0.01)
    assert res.d_fit.a == pytest.approx(1 - A_TRUE, abs=0.01)
    co = laws.compute_optimal(P, 1e20)
    assert res.n_fit.predict(1e20) == pytest.approx(co.N_opt, rel=0.05)
    assert res.optima["kept"].all()


def test_approach2_noisy_ci_covers_truth_and_drops_edge_budgets():
    C, N, L = _isoflop_grid(noise=0.001, seed=1)
    # a budget sampled only on one side of its optimum has its minimum at the edge -> dropped
    c_edge = 3e21
    n_opt = laws.compute_optimal(P, c_edge).N_opt
    ns = n_opt * np.geomspace(2, 16, 5)
    C = np.concatenate([C, np.full(5, c_edge)])
    N = np.concatenate([N, ns])
    L = np.concatenate([L, laws.chinchilla(ns, c_edge / (6 * ns), P.E, P.A, P.B, P.alpha, P.beta)])
    res = approach2(C, N, L, bootstrap=500, seed=0)
    edge = res.optima[np.isclose(res.optima["C"], c_edge)]
    assert not edge["kept"].iloc[0] and "end" in edge["reason"].iloc[0]
    assert res.n_fit.ci_a[0] <= A_TRUE <= res.n_fit.ci_a[1]
    assert res.n_fit.a == pytest.approx(A_TRUE, abs=0.03)


def test_parabola_method_and_too_few_points():
    C, N, L = _isoflop_grid()
    opt, _ = isoflop_optima(C, N, L, method="parabola")
    assert opt["kept"].all()
    a = fit_loglog(opt["C"], opt["N_star"], bootstrap=0).a
    assert a == pytest.approx(A_TRUE, abs=0.03)
    opt2, _ = isoflop_optima(C[:2], N[:2], L[:2])
    assert not opt2["kept"].any() and "only 2" in opt2["reason"].iloc[0]
    with pytest.raises(ValueError):
        isoflop_optima(C, N, L, method="spline")


def test_group_budgets_tolerates_rounding():
    labels = group_budgets([1e18, 1.01e18, 4e18, 3.98e18, 1.6e19])
    assert list(labels) == [0, 0, 1, 1, 2]


def test_fit_loglog_exact_and_bootstrap():
    C = np.geomspace(1e18, 1e22, 6)
    f = fit_loglog(C, 3.0 * C ** 0.5, bootstrap=100)
    assert f.a == pytest.approx(0.5, abs=1e-12) and f.k == pytest.approx(3.0, rel=1e-9)
    assert f.r2 == pytest.approx(1.0)
    assert f.ci_a[0] == pytest.approx(0.5, abs=1e-9) and f.ci_a[1] == pytest.approx(0.5, abs=1e-9)


def test_approach1_frontier_recovers_allocation():
    # runs of many sizes, each trained long, checkpoints every 1.5x in tokens
    rng = np.random.default_rng(0)
    C, L, N, D, run = [], [], [], [], []
    for i, n in enumerate(np.geomspace(1e7, 1e10, 25)):
        for d in np.geomspace(1e8, 1e13, 60):
            C.append(6 * n * d)
            L.append(laws.chinchilla(n, d, P.E, P.A, P.B, P.alpha, P.beta))
            N.append(n)
            D.append(d)
            run.append(f"r{i}")
    L = np.array(L) * np.exp(rng.normal(0, 0.0005, len(L)))
    fr = loss_frontier(C, L, N, D, run, n_bins=30)
    assert np.all(np.diff(fr["loss"]) < 0) and np.all(np.diff(fr["C"]) > 0)
    res = approach1(C, L, N, D, run, n_bins=30, bootstrap=50)
    # discrete sizes (x1.33 apart) make the frontier staircase: exponent within 0.05
    assert res.n_fit.a == pytest.approx(A_TRUE, abs=0.05)
    assert res.d_fit.a == pytest.approx(1 - A_TRUE, abs=0.05)
    assert res.n_fit.ci_a[0] <= res.n_fit.a <= res.n_fit.ci_a[1]


def test_budgets_come_from_the_sweep_axis_not_a_tolerance_on_measured_c():
    # Two budgets 4% apart: a 5% tolerance on measured C merges them into one IsoFLOP profile;
    # the sweep's budget axis keeps them apart. Measured C scatters ±1% around each budget (steps
    # are rounded), which the axis ignores.
    rng = np.random.default_rng(0)
    C, N, L, B = [], [], [], []
    for c in (1e19, 1.04e19, 1e20, 1e21):
        n_opt = laws.compute_optimal(P, c).N_opt
        for n in n_opt * np.geomspace(1 / 8, 8, 7):
            cm = c * (1 + rng.uniform(-0.01, 0.01))
            C.append(cm)
            N.append(n)
            L.append(laws.chinchilla(n, cm / (6 * n), P.E, P.A, P.B, P.alpha, P.beta))
            B.append(c)
    C, N, L, B = map(np.asarray, (C, N, L, B))
    by_tol, _ = isoflop_optima(C, N, L, rel_tol=0.05)
    assert len(by_tol) == 3  # the old grouping: two budgets merged
    by_axis, _ = isoflop_optima(C, N, L, budget=B, rel_tol=0.05)
    assert list(by_axis["C"]) == [1e19, 1.04e19, 1e20, 1e21]
    assert set(by_axis["grouping"]) == {"axis"} and (by_axis["n_points"] == 7).all()
    # runs without the axis fall back to the tolerance, and say so
    B2 = B.copy()
    B2[B == 1e21] = np.nan
    mixed, _ = isoflop_optima(C, N, L, budget=B2, rel_tol=0.05)
    assert list(mixed["grouping"]) == ["axis", "axis", "axis", "tolerance"]
    res = approach2(C, N, L, budget=B, flops_per_token=(6.0, 1.0), bootstrap=20)
    assert res.to_dict()["grouping"] == ["axis"] and res.optima["kept"].sum() == 4
    assert res.n_fit.a == pytest.approx(A_TRUE, abs=0.02)


def test_d_star_uses_the_given_flops_per_token_and_never_assumes_6nd():
    C, N, L = _isoflop_grid()
    opt, _ = isoflop_optima(C, N, L)
    assert opt["D_star"].isna().all()  # no D and no convention: no D*
    k, gamma = 40.0, 0.9
    opt, _ = isoflop_optima(C, N, L, flops_per_token=(k, gamma))
    np.testing.assert_allclose(opt["D_star"], opt["C"] / (k * opt["N_star"] ** gamma), rtol=1e-12)
    res = approach2(C, N, L, bootstrap=0)
    assert res.d_fit is None and res.to_dict()["D_opt"] is None
    with pytest.raises(InsufficientData):
        approach2(C[:9], N[:9], L[:9], bootstrap=0)
