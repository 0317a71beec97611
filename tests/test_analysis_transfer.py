"""Effective data transferred: synthetic studies with known k, alpha, beta are recovered, the CIs
cover the truth under noise, and degenerate inputs are clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import transfer
from analysis.errors import InsufficientData

TRUE = {"k": 30.0, "alpha": 0.4, "beta": 0.25}
SIZES = (1e4, 4e4, 1.6e5)
SCRATCH_D = (50, 100, 200, 400, 800, 1600, 3200, 6400, 12800)
FINETUNE_D = (25, 50, 100, 200)


def curve(N: float) -> tuple[float, float, float]:
    """Returns (E, B, beta) of the from-scratch curve of size N (bigger: lower floor)."""
    return 0.2 + 40.0 * N ** -0.5, 8.0, 0.45


def study(noise: float = 0.0, seeds: int = 1, rng_seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (scratch runs, fine-tuned runs) generated from the true law, loss noise in nats."""
    rng = np.random.default_rng(rng_seed)
    scratch, finetune = [], []
    for seed in range(seeds):
        for N in SIZES:
            E, B, beta = curve(N)
            for D in SCRATCH_D:
                scratch.append({"N": N, "D": D, "seed": seed,
                                "loss": E + B * D ** -beta + noise * rng.normal()})
            for D_F in FINETUNE_D:
                D_T = TRUE["k"] * D_F ** TRUE["alpha"] * N ** TRUE["beta"]
                finetune.append({"N": N, "D_F": D_F, "seed": seed,
                                 "loss": E + B * (D_F + D_T) ** -beta + noise * rng.normal()})
    return pd.DataFrame(scratch), pd.DataFrame(finetune)


def test_scratch_data_needed_inverts_the_curve():
    E, B, beta = 0.5, 3.0, 0.3
    D = np.array([10.0, 1e3, 1e5])
    np.testing.assert_allclose(transfer.scratch_data_needed(E + B * D ** -beta, E, B, beta), D,
                               rtol=1e-10)
    assert np.isinf(transfer.scratch_data_needed(np.array([0.4]), E, B, beta)).all()


def test_exact_data_recovers_k_alpha_beta():
    scratch, finetune = study()
    fit = transfer.fit_transfer(scratch, finetune)
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], abs=0.01)
    assert fit.params["beta"] == pytest.approx(TRUE["beta"], abs=0.01)
    assert fit.params["k"] == pytest.approx(TRUE["k"], rel=0.1)
    assert fit.points["used"].all()
    np.testing.assert_allclose(fit.points["D_T"], fit.predict(finetune["D_F"], finetune["N"]),
                               rtol=0.05)


def test_bootstrap_ci_covers_the_truth_under_noise():
    scratch, finetune = study(noise=0.002, seeds=2)
    fit = transfer.fit_transfer(scratch, finetune, bootstrap=200, seed=1)
    assert fit.n_bootstrap >= 150
    for name in ("alpha", "beta"):
        lo, hi = fit.ci[name]
        assert lo <= TRUE[name] <= hi, (name, lo, hi, fit.params[name])
        assert hi - lo < 0.5  # informative, not the whole line
    d = fit.to_dict()
    assert d["law"] == "transfer" and d["n_points"] == len(finetune)


def test_cluster_bootstrap_by_seed_counts_groups():
    scratch, finetune = study(noise=0.002, seeds=3)
    fit = transfer.fit_transfer(scratch, finetune, bootstrap=20, groups="seed")
    assert fit.n_groups == 3
    with pytest.raises(ValueError, match="no column 'run'"):
        transfer.fit_transfer(scratch, finetune, bootstrap=5, groups="run")


def test_losses_below_the_floor_and_no_transfer_are_counted():
    scratch, finetune = study()
    finetune.loc[0, "loss"] = 0.0  # better than any scratch data size
    E, B, beta = curve(finetune.loc[1, "N"])
    finetune.loc[1, "loss"] = E + B * (finetune.loc[1, "D_F"] / 2) ** -beta  # negative transfer
    fit = transfer.fit_transfer(scratch, finetune.assign(loss=finetune["loss"].clip(lower=1e-9)))
    d = fit.to_dict()
    assert d["n_below_floor"] == 1 and d["n_no_transfer"] == 1
    assert d["n_points"] == len(finetune) - 2


def test_too_few_scratch_sizes_is_an_error():
    scratch, finetune = study()
    few = scratch[scratch["D"].isin(SCRATCH_D[:3])]
    with pytest.raises(InsufficientData, match=">= 4 distinct data sizes"):
        transfer.fit_transfer(few, finetune)


def test_missing_column_is_named():
    scratch, finetune = study()
    with pytest.raises(ValueError, match=r"fine-tuned runs: missing column\(s\) \['D_F'\]"):
        transfer.fit_transfer(scratch, finetune.drop(columns=["D_F"]))


def test_cli_fit_transfer_from_one_csv(tmp_path, capsys):
    import json

    from scaling.cli import fit as fit_cli

    scratch, finetune = study(noise=0.002, seeds=2)
    rows = pd.concat([scratch.assign(arm="scratch"),
                      finetune.rename(columns={"D_F": "D"}).assign(arm="full")], ignore_index=True)
    rows = rows.rename(columns={"N": "params", "D": "examples", "loss": "val"})
    src, out = tmp_path / "t.csv", tmp_path / "t.json"
    rows.to_csv(src, index=False)
    cols = "N=params,D=examples,loss=val"
    rc = fit_cli.main(["scaling fit", str(src), "--law", "transfer", "--columns", cols, "--scratch", "arm=scratch",
                       "--cluster", "seed", "--bootstrap", "30", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "D_T = k * D_F^alpha * N^beta" in printed and "resampling 2 clusters" in printed
    res = json.loads(out.read_text())["all"]
    assert res["n_scratch"] == len(scratch) and res["n_finetuned"] == len(finetune)
    assert res["params"]["alpha"] == pytest.approx(TRUE["alpha"], abs=0.05)
    assert res["params"]["beta"] == pytest.approx(TRUE["beta"], abs=0.05)
    lo, hi = res["ci"]["alpha"]
    assert lo <= res["params"]["alpha"] <= hi
    # bad input: no --scratch, a selector that picks every row, --scratch on another law
    for extra, msg in (([], "needs --scratch COL=VALUE"), (["--scratch", "arm=nope"], "selects 0 of"),
                       (["--scratch", "group=scratch"], "column 'group' not in the CSV")):
        assert fit_cli.main(["scaling fit", str(src), "--law", "transfer", "--columns", cols, *extra]) == 2
        assert msg in capsys.readouterr().err
    assert fit_cli.main(["scaling fit", str(src), "--law", "power-n", "--columns", cols,
                         "--scratch", "arm=scratch"]) == 2
    assert "--scratch applies only to --law transfer" in capsys.readouterr().err
