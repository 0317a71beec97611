"""Compression laws: Frantar et al.'s sparsity law on their ViT data, ΔL(N, D, bits), paired gains."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.compression import fit_quant_degradation, fit_sparsity, paired_difference
from analysis.fit import objective_value
from scaling.cli import fit as fit_cli

# The authors' notebook (jaxpruner projects/bigsparse/sparsity-scaling.ipynb, ViT cell): N in
# millions of non-zero parameters, D in billions of examples, Huber delta 0.01 on L, mean over points.
AUTHORS_OBJECTIVE = 0.0004929087939147767
AUTHORS_COEFS = dict(zip("abcdefg", (1.30485411, 0.82101251, 2.07506343, 0.39222675, 0.27818217,
                                     0.88979104, 4.51669257)))
VIT_PARAMS = 12 * (12 * 768 ** 2)  # the authors' dense parameter count at scale 1


def _vit(reference_dir):
    """Returns (S, non-zero N in parameters, D in examples, loss) of the authors' ViT runs."""
    d = pd.read_json(reference_dir / "sparsity" / "frantar2023_vit.json")
    S = d["sparsity"].to_numpy(float)
    N = VIT_PARAMS * d["scale"].to_numpy(float) * (1 - S)
    return S, N, d["total_examples"].to_numpy(float), d["val-loss"].to_numpy(float)


def test_sparsity_law_reproduces_the_authors_vit_fit(reference_dir):
    S, N, D, y = _vit(reference_dir)
    fit = fit_sparsity(S, N / 1e6, D / 1e9, y, residuals="linear")
    assert fit.n_points == len(y) == 112
    # objective as the authors report it: mean Huber over points
    assert fit.objective / len(y) == pytest.approx(AUTHORS_OBJECTIVE, rel=0.02)
    for k, v in AUTHORS_COEFS.items():
        assert fit.params[k] == pytest.approx(v, rel=0.02), k
    # most starts reach the same basin: the multi-start grid is not a lucky single start
    assert np.mean(fit.start_objectives / len(y) < 1.001 * AUTHORS_OBJECTIVE) > 0.5


def test_cli_fits_the_sparsity_law_in_raw_units(reference_dir, tmp_path, capsys):
    S, N, D, y = _vit(reference_dir)
    src, out = tmp_path / "vit.csv", tmp_path / "fit.json"
    pd.DataFrame({"sparsity": S, "nonzero": N, "examples": D, "loss": y}).to_csv(src, index=False)
    rc = fit_cli.main(["scaling fit", str(src), "--law", "sparsity-linear", "--columns",
                       "S=sparsity,N=nonzero,D=examples", "--bootstrap", "0", "--json", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "(a*(1-S)^b + c)*N^-d" in cap.out
    r = json.loads(out.read_text())["all"]
    assert r["n_points"] == 112 and r["objective"] / 112 == pytest.approx(AUTHORS_OBJECTIVE, rel=0.02)
    p = r["params"]
    # the same law in the authors' units: N' = N/1e6 rescales a, c by 1e6^d and e by 1e9^f
    assert p["a"] * 1e6 ** -p["d"] == pytest.approx(AUTHORS_COEFS["a"], rel=0.02)
    assert p["c"] * 1e6 ** -p["d"] == pytest.approx(AUTHORS_COEFS["c"], rel=0.02)
    assert p["e"] * 1e9 ** -p["f"] == pytest.approx(AUTHORS_COEFS["e"], rel=0.02)
    assert p["b"] == pytest.approx(AUTHORS_COEFS["b"], rel=0.02)
    assert p["g"] == pytest.approx(AUTHORS_COEFS["g"], rel=0.02)


def test_log_sparsity_law_recovers_known_parameters():
    true = dict(a=40.0, b=0.9, c=60.0, d=0.35, e=400.0, f=0.3, g=1.7)
    grid = [(s, n, dd) for s in (0.0, 0.5, 0.75, 0.875) for n in np.geomspace(1e6, 1e8, 4)
            for dd in np.geomspace(1e8, 1e10, 3)]
    S, N, D = (np.array(v) for v in zip(*grid))
    y = laws.sparsity(S, N, D, **true)
    fit = fit_sparsity(S, N, D, y)  # Huber on ln L, delta 1e-3
    assert fit.law.name == "sparsity" and fit.converged
    pred = fit.predict(np.column_stack([S, N, D]))
    assert np.max(np.abs(np.log(pred / y))) < 1e-4
    for k in ("b", "d", "f", "g"):
        assert fit.params[k] == pytest.approx(true[k], rel=0.05), k
    # the law's value at S = 0 is Chinchilla's with A = a + c
    assert laws.sparsity(0.0, 1e7, 1e9, **true) == pytest.approx(
        laws.chinchilla(1e7, 1e9, true["g"], true["a"] + true["c"], true["e"], true["d"], true["f"]))
    assert objective_value(fit.law, fit.raw, fit.X, fit.y) == pytest.approx(fit.objective)


def test_sparsity_outside_unit_interval_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"sparsity S must lie in \[0, 1\)"):
        fit_sparsity([0.0, 1.0], [1e6, 1e6], [1e9, 1e9], [3.0, 3.0])
    src = tmp_path / "bad.csv"
    pd.DataFrame({"S": [0.0, 0.5, -0.1] * 4, "N": [1e6] * 12, "D": np.geomspace(1e8, 1e9, 12),
                  "loss": [3.0] * 12}).to_csv(src, index=False)
    rc = fit_cli.main(["scaling fit", str(src), "--law", "sparsity", "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "column 'S' (role S, sparsity) must lie in [0, 1)" in err


@pytest.mark.parametrize("gamma_D, verdict", [(0.3, "yes"), (-0.3, "no")])
def test_quant_degradation_reports_whether_dl_grows_with_d(gamma_D, verdict):
    rng = np.random.default_rng(0)
    rows = [(n, d, b) for n in (1e5, 1e6, 1e7) for d in (1e7, 1e8, 1e9) for b in (3, 4, 8)]
    N, D, bits = (np.array(v, dtype=float) for v in zip(*rows))
    dl = 50.0 * N ** -0.4 * D ** gamma_D * np.exp(-0.9 * bits) * np.exp(rng.normal(0, 0.05, len(N)))
    dl[0] = -1e-4  # a measured "improvement" is dropped, not fitted
    res = fit_quant_degradation(N, D, bits, dl, bootstrap=100, seed=1)
    assert res.n_dropped == 1 and res.fit.n_points == len(N) - 1
    assert res.gamma_D == pytest.approx(gamma_D, abs=0.05)
    assert res.fit.params["k"] == pytest.approx(0.9, abs=0.05)
    lo, hi = res.gamma_D_ci
    assert lo < gamma_D < hi
    assert res.grows_with_D == verdict
    assert len(res.slopes) == 9 and np.all(np.sign(res.slopes["slope_lnD"]) == np.sign(gamma_D))


def test_paired_difference_ci_covers_the_mean_gain():
    alone = np.array([3.10, 3.05, 3.12, 3.08])
    teacher = alone - np.array([0.05, 0.04, 0.06, 0.05])
    r = paired_difference(teacher, alone, bootstrap=500)
    assert r["mean"] == pytest.approx(0.05) and r["ci_low"] <= 0.05 <= r["ci_high"]
    assert 0.04 <= r["ci_low"] and r["ci_high"] <= 0.06 and r["n_seeds"] == 4
    with pytest.raises(ValueError, match="2 treated but 3 control"):
        paired_difference([1, 2], [1, 2, 3])
