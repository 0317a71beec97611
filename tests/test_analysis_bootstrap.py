"""Bootstrap honesty: wide refit search, counted failures, cluster (run) resampling."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from analysis import laws
from analysis.fit import fit_law, fit_power_law, objective_value
from analysis.law_spec import Law
from analysis.resample import group_codes, resample_weights


# --- a many-minima construction: y = c + a·cos(k ln x) + b·sin(k ln x) fitted to pure noise ------
# The objective has a local minimum at every peak of the periodogram (about 20 over k in [0.4, 22]),
# many of similar height, so resamples of the data pick different frequencies.

def _wave_pred(th, X):
    lx = jnp.log(X[:, 0])
    return th[0] + th[1] * jnp.cos(th[3] * lx) + th[2] * jnp.sin(th[3] * lx)


def _identity(r):
    return np.array(r, dtype=float)


def _wave_grid(X, y):
    return np.array([(0.0, a, b, k) for k in np.linspace(0.4, 20.0, 50) for a, b in ((0.1, 0.0), (0.0, 0.1))])


WAVE = Law(name="wave", inputs=("x",), raw_names=("c", "a", "b", "k"), param_names=("c", "a", "b", "k"),
           target="identity", delta=math.inf, predict_t=_wave_pred, to_natural=_identity,
           from_natural=_identity, init=_wave_grid)


def test_bootstrap_basin_search_matches_a_full_grid_refit_on_many_minima():
    rng = np.random.default_rng(0)
    x = np.exp(rng.uniform(0.0, 6.9, 40))  # irregular spacing: no aliased frequencies
    y = rng.normal(0.0, 1.0, 40)
    kw = dict(bootstrap=60, seed=1)
    grid = fit_law(WAVE, x[:, None], y, bootstrap_search="grid", **kw)
    basins = fit_law(WAVE, x[:, None], y, **kw)
    old = fit_law(WAVE, x[:, None], y, bootstrap_starts=4, **kw)  # the old search: 4 best basins
    assert grid.n_bootstrap_starts == 100 and basins.bootstrap_search == "basins"
    assert 8 <= basins.n_bootstrap_starts <= 32
    assert grid.n_bootstrap == basins.n_bootstrap == 60
    k_grid, k_basins, k_old = grid.boot[:, 3], basins.boot[:, 3], old.boot[:, 3]
    same = np.isclose(k_basins, k_grid, rtol=1e-3)
    assert same.mean() >= 0.9
    # where the two differ, the basin search found an equal or lower minimum of the resampled objective
    W = resample_weights(40, 60, np.random.default_rng(1))
    for i in np.nonzero(~same)[0]:
        f_b = objective_value(WAVE, basins.boot[i], basins.X, basins.y, weights=W[i])
        f_g = objective_value(WAVE, grid.boot[i], grid.X, grid.y, weights=W[i])
        assert f_b <= f_g * (1 + 1e-9)
    lo_g, hi_g = grid.ci["k"]
    lo_b, hi_b = basins.ci["k"]
    assert lo_b == pytest.approx(lo_g, rel=0.05) and hi_b == pytest.approx(hi_g, rel=0.05)
    # starting only from the best few full-data basins misses resample optima: a narrower CI
    assert np.isclose(k_old, k_grid, rtol=1e-3).mean() < 0.8
    assert old.ci["k"][1] - old.ci["k"][0] < 0.8 * (hi_g - lo_g)


def test_failed_replicates_are_counted_not_hidden():
    x = np.geomspace(1e7, 1e10, 5)  # 5 distinct points for 3 parameters: many resamples are degenerate
    y = laws.power_law(x, 1.8, 300.0, 0.3) * np.exp(np.random.default_rng(0).normal(0, 0.01, 5))
    f = fit_power_law(x, y, bootstrap=100, seed=0)
    assert f.n_bootstrap_requested == 100
    assert f.n_bootstrap_degenerate > 0
    assert f.n_bootstrap + f.n_bootstrap_failed == 100
    assert f.n_bootstrap_failed >= f.n_bootstrap_degenerate
    assert f.n_bootstrap == int(np.all(np.isfinite(f.boot), axis=1).sum()) < 100  # the old count was 100
    d = f.to_dict()
    assert (d["n_bootstrap"], d["n_bootstrap_failed"], d["n_bootstrap_requested"]) == (f.n_bootstrap, f.n_bootstrap_failed, 100)
    s = f.summary()
    assert set(s["n_bootstrap_failed"]) == {f.n_bootstrap_failed}
    # refits cut off by maxiter are failures too, and so is the full fit's convergence flag
    g = fit_power_law(x, y, bootstrap=20, seed=0, maxiter=3)
    assert not g.converged and g.n_bootstrap == 0 and g.n_bootstrap_failed == 20
    assert all(math.isnan(v) for ci in g.ci.values() for v in ci)


# --- cluster bootstrap: many checkpoints of few runs ----------------------------------------------
TRUE_C = dict(E=1.7, A=2e3, alpha=0.15)


def _runs(seed, n_runs=8, n_ckpt=16):
    """Returns (C, loss, run id): each run's checkpoints share a run effect (2%) plus 0.2% noise."""
    rng = np.random.default_rng(seed)
    C = (np.geomspace(1e16, 1e19, n_runs)[:, None] * np.geomspace(1 / 30, 1, n_ckpt)[None]).ravel()
    run = np.repeat(np.arange(n_runs), n_ckpt)
    eps = rng.normal(0, 0.02, n_runs)[run] + rng.normal(0, 0.002, n_runs * n_ckpt)
    return C, laws.power_law(C, *TRUE_C.values()) * np.exp(eps), run


def test_cluster_bootstrap_by_run_matches_the_spread_of_independent_replicas():
    start = np.array([[math.log(TRUE_C["A"]), math.log(TRUE_C["E"]), TRUE_C["alpha"]]])
    kw = dict(axis="C", delta=math.inf, init=start)
    # the truth: alpha refitted on independent replicas (fresh run effects and noise)
    alphas = [fit_power_law(*_runs(100 + s)[:2], **kw).params["alpha"] for s in range(60)]
    true_width = np.subtract(*np.quantile(alphas, [0.975, 0.025]))
    w_cluster, w_row = [], []
    for s in range(6):
        C, L, run = _runs(s)
        fc = fit_power_law(C, L, bootstrap=200, seed=s, groups=run, **kw)
        fr = fit_power_law(C, L, bootstrap=200, seed=s, **kw)
        assert fc.n_groups == 8 and fr.n_groups is None
        w_cluster.append(fc.ci["alpha"][1] - fc.ci["alpha"][0])
        w_row.append(fr.ci["alpha"][1] - fr.ci["alpha"][0])
    ratio_cluster, ratio_row = np.mean(w_cluster) / true_width, np.mean(w_row) / true_width
    assert 0.6 <= ratio_cluster <= 1.6, ratio_cluster
    assert ratio_row < 0.5, ratio_row  # rows as independent points: far too confident
    assert np.mean(w_cluster) > 2 * np.mean(w_row)


def test_cluster_resamples_move_whole_groups():
    run = np.array(["a", "a", "b", "b", "b", "c"])
    seed = np.array([0, 0, 0, 0, 0, 1])
    codes = group_codes(np.column_stack([run, seed]), 6)
    assert len(set(codes)) == 3
    W = resample_weights(6, 50, np.random.default_rng(0), codes)
    for k in range(50):
        for g in range(3):
            assert len(set(W[k, codes == g])) == 1  # rows of one group get the same count
        assert sum(W[k, np.nonzero(codes == g)[0][0]] for g in range(3)) == 3  # 3 groups drawn
    with pytest.raises(ValueError, match="groups"):
        group_codes(["a", "b"], 6)
    x = np.geomspace(1e7, 1e10, 6)
    with pytest.raises(ValueError, match="at least 2 groups"):
        fit_power_law(x, laws.power_law(x, 1.8, 300.0, 0.3), bootstrap=5, groups=np.zeros(6))


def test_cli_fit_prints_replicate_counts_and_clusters_runs(tmp_path, capsys):
    import json

    import pandas as pd

    from scaling.cli import fit as fit_cli
    C, L, run = _runs(0, n_runs=6, n_ckpt=5)
    pd.DataFrame({"C": C, "loss": L, "run": [f"r{i}" for i in run]}).to_csv(tmp_path / "ck.csv", index=False)
    out = tmp_path / "fit.json"
    rc = fit_cli.main(["scaling fit", str(tmp_path / "ck.csv"), "--law", "power-c", "--bootstrap", "30",
                       "--cluster", "run", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())["all"]
    assert res["n_groups"] == 6 and res["n_bootstrap_requested"] == 30
    assert res["n_bootstrap"] + res["n_bootstrap_failed"] == 30
    assert f"bootstrap: {res['n_bootstrap']}/30 replicates used" in printed and "resampling 6 clusters" in printed
    assert fit_cli.main(["scaling fit", str(tmp_path / "ck.csv"), "--law", "power-c", "--cluster", "nope"]) == 2
    assert "--cluster" in capsys.readouterr().err
    # 16 copies of one row: refused, naming the count of distinct points
    pd.DataFrame({"N": [1e8] * 16, "loss": [3.0] * 16}).to_csv(tmp_path / "one.csv", index=False)
    assert fit_cli.main(["scaling fit", str(tmp_path / "one.csv"), "--law", "kaplan"]) == 2
    assert "1 distinct input points" in capsys.readouterr().err
