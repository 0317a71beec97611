"""`scaling fit`: emergence on any CSV, the data-constrained law, and the dropped/duplicate-row report."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from scaling.cli import fit as fit_cli

X = np.geomspace(1e18, 1e23, 26)  # training FLOPs of the checkpoints


def _fit(tmp_path, df: pd.DataFrame):
    """Returns (CSV path holding df, JSON output path)."""
    src, out = tmp_path / "in.csv", tmp_path / "out.json"
    df.to_csv(src, index=False)
    return src, out


def _run(capsys, src, out, *args: str):
    """Returns (exit status, JSON results or None, stdout, stderr) of `scaling fit src args`."""
    rc = fit_cli.main(["scaling fit", str(src), *args, "--json", str(out)])
    cap = capsys.readouterr()
    res = json.loads(out.read_text()) if rc == 0 else None
    return rc, res, cap.out, cap.err


def test_emergence_flat_near_chance_is_no_transition(tmp_path, capsys):
    rng = np.random.default_rng(0)
    # 4-way multiple choice at chance: accuracy wiggles around 0.25
    df = pd.DataFrame({"flops": X, "acc": 0.25 + rng.normal(0, 0.01, len(X))})
    src, out = _fit(tmp_path, df)
    rc, res, printed, err = _run(capsys, src, out, "--law", "emergence", "--columns", "x=flops,y=acc",
                                 "--chance", "0.25", "--bootstrap", "0")
    assert rc == 0, err
    assert "no transition (" in printed and "late decline: no" in printed
    r = res["all"]
    assert r["transition"] is False and r["reasons"] and r["verdict"].startswith("no transition")
    assert r["chance"] == 0.25 and r["params"]["ceil"] > r["params"]["floor"]


def test_emergence_recovers_sigmoid_midpoint_within_its_ci(tmp_path, capsys):
    rng = np.random.default_rng(1)
    acc = laws.sigmoid(X, 0.25, 0.85, 4.0, 21.0) + rng.normal(0, 0.02, len(X))
    src, out = _fit(tmp_path, pd.DataFrame({"flops": X, "acc": acc}))
    rc, res, printed, err = _run(capsys, src, out, "--law", "emergence", "--columns", "x=flops,y=acc",
                                 "--chance", "0.25", "--bootstrap", "100", "--seed", "3")
    assert rc == 0, err
    r = res["all"]
    assert r["verdict"] == "transition" and r["transition"] is True
    lo, hi = r["x0_ci"]
    assert lo <= 21.0 <= hi and lo < r["x0_log10"] < hi
    assert hi - lo < 0.5  # noise 0.02 on a 0.6 rise pins the midpoint to a few tenths of a decade
    assert r["x0_log10"] == pytest.approx(21.0, abs=0.1)
    assert r["late_decline"] is False
    assert "emergence of acc vs flops" in printed and ": transition" in printed
    assert f"x0 = {r['x0_log10']:.6g} (log10 flops), 95% CI [{lo:.6g}, {hi:.6g}]" in printed


def test_emergence_flags_a_rise_then_fall(tmp_path, capsys):
    rng = np.random.default_rng(2)
    acc = np.clip(laws.sigmoid(X, -0.05, 0.8, 5.0, 20.0), 0.0, None)  # exact zeros before the rise
    acc[-6:] -= np.linspace(0.05, 0.4, 6)  # the largest runs get worse
    acc = acc + np.where(acc > 0, rng.normal(0, 0.01, len(X)), 0.0)
    src, out = _fit(tmp_path, pd.DataFrame({"flops": X, "acc": acc}))
    rc, res, printed, err = _run(capsys, src, out, "--law", "emergence", "--columns", "x=flops,y=acc",
                                 "--bootstrap", "0")
    assert rc == 0, err
    assert "dropped" not in err  # y = 0 is a valid accuracy, only x must be positive
    r = res["all"]
    assert r["late_decline"] is True and r["drop"] > 0.2
    assert "late decline: yes" in printed
    assert r["n_points"] == len(X)


def test_emergence_decreasing_direction_for_an_error_rate(tmp_path, capsys):
    rng = np.random.default_rng(4)
    err_rate = laws.sigmoid(X, 0.1, 0.9, -4.0, 21.0) + rng.normal(0, 0.02, len(X))  # falls from 0.9 to 0.1
    src, out = _fit(tmp_path, pd.DataFrame({"x": X, "y": err_rate}))
    rc, res, _, err = _run(capsys, src, out, "--law", "emergence", "--direction", "decreasing",
                           "--chance", "0.9", "--bootstrap", "0")
    assert rc == 0, err
    r = res["all"]
    assert r["transition"] is True and r["direction"] == "decreasing"
    assert r["x0_log10"] == pytest.approx(21.0, abs=0.15)
    assert r["params"]["floor"] == pytest.approx(0.1, abs=0.05)
    assert r["params"]["ceil"] == pytest.approx(0.9, abs=0.05)
    # the same series read as an increasing metric has no increasing transition
    rc, res, _, _ = _run(capsys, src, out, "--law", "emergence", "--bootstrap", "0")
    assert rc == 0 and res["all"]["transition"] is False


def test_data_constrained_fit_recovers_parameters(tmp_path, capsys):
    true = dict(E=1.87, A=520.0, B=1490.0, alpha=0.35, beta=0.33, R_D_star=15.4, R_N_star=5.3)
    # 60 runs: models below and far above the compute-optimal size for U, 0.5 to 100 epochs
    rows = [(N, U * epochs, U) for U in (1e8, 1e9, 1e10) for N in np.geomspace(1e7, 3e9, 4)
            for epochs in (0.5, 2, 8, 30, 100)]
    N, D, U = np.array(rows).T
    df = pd.DataFrame({"params": N, "tokens": D, "unique": U,
                       "val": laws.data_constrained(N, D, U, **true)})
    src, out = _fit(tmp_path, df)
    rc, res, printed, err = _run(capsys, src, out, "--law", "data-constrained", "--columns",
                                 "N=params,D=tokens,U=unique,loss=val", "--bootstrap", "0")
    assert rc == 0, err
    assert "data-constrained" in printed and "R_N_star" in printed
    got = res["all"]["params"]
    for k, v in true.items():
        assert got[k] == pytest.approx(v, rel=1e-3), k  # noiseless data


def test_dropped_and_duplicate_rows_are_counted(tmp_path, capsys):
    N = np.geomspace(1e6, 1e9, 10)
    df = pd.DataFrame({"N": N, "loss": 1.5 + 40.0 * N ** -0.3})
    bad = pd.DataFrame({"N": [np.nan, -1e7, 1e7, 2e7], "loss": [3.0, 3.0, 0.0, np.inf]})
    df = pd.concat([df, df.iloc[[2, 5]], bad], ignore_index=True)  # 2 duplicates, 4 unusable rows
    src, out = _fit(tmp_path, df)
    rc, res, _, err = _run(capsys, src, out, "--law", "power-n", "--bootstrap", "0")
    assert rc == 0, err
    assert "warning: dropped 4 of 16 rows: 2 with a missing or non-finite value in N, loss; " \
           "2 with a non-positive value in N, loss" in err
    assert "warning: 2 duplicate rows (same N, loss" in err
    assert res["all"]["n_points"] == 12 and res["all"]["params"]["alpha"] == pytest.approx(0.3, rel=1e-3)
    # a clean file gives no warning
    df.iloc[:10].to_csv(src, index=False)
    rc, _, _, err = _run(capsys, src, out, "--law", "power-n", "--bootstrap", "0")
    assert rc == 0 and "warning" not in err


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "in.csv"
    pd.DataFrame({"x": X, "y": ["a"] + [0.5] * (len(X) - 1)}).to_csv(src, index=False)
    assert fit_cli.main(["scaling fit", str(src), "--law", "emergence"]) == 2
    assert "column 'y' has non-numeric values" in capsys.readouterr().err
    assert fit_cli.main(["scaling fit", str(src), "--law", "sigmoid", "--chance", "0.1"]) == 2
    assert "--chance applies only to --law emergence" in capsys.readouterr().err
    assert fit_cli.main(["scaling fit", str(src), "--law", "emergence", "--group", "model"]) == 2
    assert "--group: column 'model' not in the CSV" in capsys.readouterr().err


def test_finetune_rectified_law_matches_the_authors_on_flan(tmp_path, capsys, reference_dir):
    wide = pd.read_csv(reference_dir / "finetune" / "lin2024_flan.csv")
    authors = pd.read_csv(reference_dir / "finetune" / "lin2024_rmsd_flan.csv").set_index("model")
    sizes = [c for c in wide.columns if c.isdigit()]
    long = wide.melt(id_vars=["config name"], value_vars=sizes, var_name="examples", value_name="loss")
    long = long.rename(columns={"config name": "model"})
    src, out = _fit(tmp_path, long)
    rms = {}
    for law in ("finetune-rectified", "finetune-power"):
        rc, res, printed, err = _run(capsys, src, out, "--law", law, "--group", "model", "--columns",
                                     "D=examples,loss=loss", "--bootstrap", "0")
        assert rc == 0, err
        # the authors fit D = 200 ... 1,638,400; the D = 0 row of every model is dropped, and said so
        assert err.count("dropped 1 of 15 rows: 1 with a non-positive value in examples, loss") == 30
        assert len(res) == 30 and all(r["n_points"] == 14 for r in res.values())
        rms[law] = pd.Series({m: r["rms_residual"] for m, r in res.items()})  # RMSD of ln L
    rect, plain = rms["finetune-rectified"], rms["finetune-power"]
    assert set(rect.index) == set(authors.index)
    # a fitter that finds the optimum does at least as well as the authors' fit on every model
    ratio = rect / authors.loc[rect.index, "our_rmsd_under_log"]
    assert (ratio <= 1.001).all(), ratio[ratio > 1.001]
    assert rect.mean() <= 0.0065  # the authors' mean over FLAN models
    assert rect.mean() < 0.5 * plain.mean()  # the rectified law beats the plain one on average
