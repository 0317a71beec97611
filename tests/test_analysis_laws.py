"""Closed forms of analysis.laws against published values (tolerances from the reference README)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import laws


def test_chinchilla_allocation_matches_hoffmann_rounded_fit():
    p = laws.ChinchillaParams(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    co = laws.compute_optimal(p, 5.88e23)
    # README: a = 0.4516, G = 1.3447, N_opt = 3.249e10, D_opt = 3.016e12, each to ±0.1%
    assert co.a == pytest.approx(0.4516, rel=1e-3)
    assert co.b == pytest.approx(1 - 0.4516, rel=1e-3)
    assert co.G == pytest.approx(1.3447, rel=1e-3)
    assert co.N_opt == pytest.approx(3.249e10, rel=1e-3)
    assert co.D_opt == pytest.approx(3.016e12, rel=1e-3)
    # C = 6 N D holds exactly at the optimum; tokens per parameter is D/N
    assert 6 * co.N_opt * co.D_opt == pytest.approx(5.88e23, rel=1e-12)
    assert co.tokens_per_parameter == pytest.approx(co.D_opt / co.N_opt, rel=1e-12)


def test_allocation_is_the_constrained_minimum():
    p = laws.ChinchillaParams(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    C = 1e21
    co = laws.compute_optimal(p, C)
    # scanning N along C = 6ND, the loss is lowest at N_opt (grid step 0.1% in ln N)
    Ns = co.N_opt * np.exp(np.linspace(-0.5, 0.5, 1001))
    Ls = laws.chinchilla(Ns, C / (6 * Ns), p.E, p.A, p.B, p.alpha, p.beta)
    assert abs(np.log(Ns[np.argmin(Ls)] / co.N_opt)) <= 1e-3


def test_kaplan_values():
    # README: L(1e9) = 2.37564 and L(1e9, 1e10) = 2.48384 (5 significant digits)
    assert laws.kaplan_n(1e9, 8.8e13, 0.076) == pytest.approx(2.37564, rel=2e-5)
    assert laws.kaplan_nd(1e9, 1e10, 8.8e13, 5.4e13, 0.076, 0.095) == pytest.approx(2.48384, rel=2e-5)


def test_forms_agree_between_numpy_and_jax():
    x = np.geomspace(10, 1e4, 7)
    with jax.enable_x64(True):
        for fn, args in [(laws.power_law, (1.0, 5.0, 0.3)), (laws.sigmoid, (0.1, 0.9, 3.0, 2.5))]:
            a = fn(x, *args)
            b = np.asarray(fn(jnp.asarray(x), *args))
            assert isinstance(a, np.ndarray)
            np.testing.assert_allclose(a, b, rtol=1e-12)
        a = laws.bnsl(x, 0.4, 2.3, 0.05, [5.7], [600.0], [0.06])
        b = np.asarray(laws.bnsl(jnp.asarray(x), 0.4, 2.3, 0.05, [5.7], [600.0], [0.06]))
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_bnsl_matches_its_product_form_and_limits():
    x = np.geomspace(10, 1e4, 9)
    a, b, c0, c1, d1, f1 = 0.4, 2.3, 0.05, 1.5, 300.0, 0.5
    direct = a + b * x ** (-c0) * (1 + (x / d1) ** (1 / f1)) ** (-c1 * f1)
    np.testing.assert_allclose(laws.bnsl(x, a, b, c0, [c1], [d1], [f1]), direct, rtol=1e-12)
    # no break: a plain power law
    np.testing.assert_allclose(laws.bnsl(x, a, b, c0), a + b * x ** (-c0), rtol=1e-12)
    # very sharp break (f = 0.01) evaluates without overflow
    assert np.all(np.isfinite(laws.bnsl(x, a, b, c0, [c1], [d1], [0.01])))


def test_sigmoid_midpoint_and_limits():
    y = laws.sigmoid(np.array([1e-3, 1e2, 1e7]), 0.1, 0.9, 4.0, 2.0)
    assert y[1] == pytest.approx(0.5, abs=1e-12)  # midpoint at x = 10^x0
    assert y[0] == pytest.approx(0.1, abs=1e-6) and y[2] == pytest.approx(0.9, abs=1e-6)


def _brute_force_optimum(p, C, k, gamma):
    """Returns (N, D) minimizing L(N, D) along C = k·N^gamma·D on a grid of N with ln-step 1.4e-4."""
    Ns = np.exp(np.linspace(np.log(1e3), np.log(1e15), 200_001))
    Ds = C / (k * Ns ** gamma)
    i = int(np.argmin(laws.chinchilla(Ns, Ds, p.E, p.A, p.B, p.alpha, p.beta)))
    return Ns[i], Ds[i]


@pytest.mark.parametrize("alpha,beta,k,gamma", [(0.34, 0.28, 6.0, 1.0), (0.34, 0.28, 40.0, 0.85),
                                                (0.5, 0.15, 200.0, 0.7), (0.2, 0.4, 2.0, 1.2)])
def test_allocation_under_flops_per_token_power_law_is_the_brute_force_minimum(alpha, beta, k, gamma):
    p = laws.ChinchillaParams(E=1.69, A=406.4, B=410.7, alpha=alpha, beta=beta)
    C = 1e20
    co = laws.compute_optimal(p, C, flops_per_param_token=k, flops_exponent=gamma)
    n_bf, d_bf = _brute_force_optimum(p, C, k, gamma)
    assert 1e4 < co.N_opt < 1e14  # well inside the grid
    assert co.N_opt == pytest.approx(n_bf, rel=1e-3)
    assert co.D_opt == pytest.approx(d_bf, rel=1e-3)
    # the optimum lies on the constraint, and C = k·N^gamma·D makes gamma·a + b = 1
    assert k * co.N_opt ** gamma * co.D_opt == pytest.approx(C, rel=1e-12)
    assert gamma * co.a + co.b == pytest.approx(1.0, rel=1e-12)
    # N_opt ∝ C^a: the exponent is the slope of ln N_opt against ln C
    n2 = laws.n_opt(10 * C, p.A, p.B, p.alpha, p.beta, k, gamma)
    assert np.log10(n2 / co.N_opt) == pytest.approx(beta / (alpha + gamma * beta), rel=1e-9)


def test_default_constraint_is_the_chinchilla_closed_form_bit_for_bit():
    p = laws.ChinchillaParams(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    C = np.geomspace(1e17, 1e25, 9)
    co, co61 = laws.compute_optimal(p, C), laws.compute_optimal(p, C, 6.0, 1.0)
    G = (p.alpha * p.A / (p.beta * p.B)) ** (1.0 / (p.alpha + p.beta))
    a, b = p.beta / (p.alpha + p.beta), p.alpha / (p.alpha + p.beta)
    for c in (co, co61):
        assert (c.a, c.b, c.G) == (a, b, G)
        np.testing.assert_array_equal(c.N_opt, G * np.power(C / 6.0, a))
        np.testing.assert_array_equal(c.D_opt, np.power(C / 6.0, b) / G)
    with pytest.raises(ValueError, match="flops_exponent"):
        laws.n_opt(C, p.A, p.B, p.alpha, p.beta, 6.0, 0.0)


@pytest.mark.parametrize("alpha,beta", [(-0.3, 0.4), (0.3, -0.1), (0.0, 0.3)])
def test_no_interior_optimum_gives_nan_not_complex(alpha, beta):
    C = np.array([1e12, 1e14])
    p = laws.ChinchillaParams(E=0.7, A=0.01, B=360.0, alpha=alpha, beta=beta)
    co = laws.compute_optimal(p, C, flops_per_param_token=36.0, flops_exponent=0.9)
    for x in (co.N_opt, co.D_opt, co.tokens_per_parameter, co.a, co.b, co.G):
        x = np.asarray(x)
        assert not np.iscomplexobj(x) and np.all(np.isnan(x))
    # a law with an optimum is unaffected (finite, positive)
    good = laws.compute_optimal(laws.ChinchillaParams(E=1.7, A=406.4, B=410.7, alpha=0.34, beta=0.28), C)
    assert np.all(np.isfinite(good.N_opt)) and np.all(good.N_opt > 0)


# Muennighoff et al. (2023) fitted constants and the two values published with them
MUENNIGHOFF = dict(E=np.exp(0.6254804), A=np.exp(6.255414), B=np.exp(7.3049974), alpha=0.3526596,
                   beta=0.3526596, R_D_star=15.387756, R_N_star=5.309743)
MUENNIGHOFF_VALUES = (((6.34e9, 242e9, 25e9), 2.2256440889984477), ((8.67e9, 178e9, 25e9), 2.2269634075087867))


def test_data_constrained_reproduces_published_values():
    from analysis.catalog import get_law

    X = np.array([x for x, _ in MUENNIGHOFF_VALUES])
    expected = np.array([v for _, v in MUENNIGHOFF_VALUES])
    got = laws.data_constrained(X[:, 0], X[:, 1], X[:, 2], **MUENNIGHOFF)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # the fitter's log-space form of the same law (used inside fits) agrees too
    np.testing.assert_allclose(get_law("data-constrained").predict(MUENNIGHOFF, X), expected, rtol=1e-6)
    with jax.enable_x64(True):
        jx = laws.data_constrained(jnp.asarray(X[:, 0]), jnp.asarray(X[:, 1]), jnp.asarray(X[:, 2]),
                                   **MUENNIGHOFF)
    np.testing.assert_allclose(np.asarray(jx), expected, rtol=1e-6)


def test_data_constrained_reduces_to_chinchilla_without_repetition_and_decays_with_it():
    p = MUENNIGHOFF
    chin = dict(E=p["E"], A=p["A"], B=p["B"], alpha=p["alpha"], beta=p["beta"])
    # one epoch (D = U) of a model below the compute-optimal size for U: no excess anything
    N, U = np.array([1e8, 3e8]), np.array([1e11, 1e11])
    np.testing.assert_allclose(laws.data_constrained(N, U, U, **p), laws.chinchilla(N, U, **chin), rtol=1e-12)
    # repeating U tokens e times is worth less than e·U fresh tokens, more than U tokens, and the
    # worth of more epochs saturates at U·(1 + R_D*) effective tokens
    U = 1e10
    epochs = np.array([1.0, 4.0, 40.0, 1e4])
    rep = laws.data_constrained(1e8, epochs * U, U, **p)
    fresh = laws.data_constrained(1e8, epochs * U, epochs * U, **p)
    assert np.all(np.diff(rep) < 0) and np.all(rep[1:] > fresh[1:])
    sat = laws.chinchilla(1e8, U * (1 + p["R_D_star"]), **chin)
    assert rep[-1] == pytest.approx(sat, rel=1e-9)
