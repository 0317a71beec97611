"""Tuning analysis on synthetic loss-vs-LR tables: seed aggregation, optima, edges, LR*(N) fit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import tuning

FACTOR = math.sqrt(2.0)


def _lr_star(n: float) -> float:
    return 0.02 * (n / 1e4) ** -0.5


def _table(sizes=(1e4, 4e4, 1.6e5), steps=range(-3, 4), seeds=(0,), noise=0.0,
           center=0.01, star=_lr_star, seed_offset=0.0, rng_seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    rows = []
    for n in sizes:
        for s in seeds:
            for k in steps:
                lr = center * FACTOR ** k
                loss = 3.0 - 0.1 * math.log10(n) + 0.05 * math.log(lr / star(n)) ** 2
                loss += seed_offset * s + rng.normal(0.0, noise) if noise else seed_offset * s
                rows.append({"N": n, "lr": lr, "lr_step": k, "seed": s, "loss": loss})
    return pd.DataFrame(rows)


def test_aggregate_seeds_gives_mean_and_spread_per_point():
    df = pd.DataFrame({"lr": [1, 1, 1, 2, 2], "seed": [0, 1, 2, 0, 1],
                       "loss": [3.0, 3.2, 3.4, 2.0, math.nan]})
    agg = tuning.aggregate_seeds(df, ["lr"])
    one = agg[agg["lr"] == 1].iloc[0]
    assert one["mean"] == pytest.approx(3.2) and one["std"] == pytest.approx(0.2)
    assert one["min"] == 3.0 and one["max"] == 3.4 and one["n_seeds"] == 3
    assert math.isinf(agg[agg["lr"] == 2].iloc[0]["mean"])  # a diverged seed poisons the mean
    with pytest.raises(ValueError, match="seed"):
        tuning.aggregate_seeds(df.drop(columns="seed"), ["lr"])


def test_size_optima_recover_the_true_optimum_and_flag_no_edges():
    opt = tuning.size_optima(_table())
    assert list(opt["edge"]) == ["", "", ""]
    # the loss is exactly quadratic in ln lr, so the parabola vertex is the true optimum
    np.testing.assert_allclose(opt["lr_opt"], [_lr_star(n) for n in opt["N"]], rtol=1e-6)
    for _, row in opt.iterrows():  # the grid optimum is the grid point nearest in ln lr
        assert abs(math.log(row["lr"] / _lr_star(row["N"]))) <= math.log(FACTOR) / 2 + 1e-9


def test_optimum_at_an_edge_is_flagged():
    table = _table(steps=range(-1, 2), center=0.002)  # grid 0.0014..0.0028: below every LR*
    opt = tuning.size_optima(table)
    assert list(opt["edge"]) == ["lr_high", "lr_high", "lr_high"]
    assert list(opt["lr_step"]) == [1, 1, 1]
    assert list(opt["lr_opt"]) == list(opt["lr"])  # no parabola at an edge


def test_diverged_points_lose_and_all_diverged_is_an_error():
    table = _table()
    table.loc[table["lr_step"] == 3, "loss"] = math.nan
    opt = tuning.size_optima(table)
    assert (opt["lr_step"] < 3).all()
    table.loc[table["N"] == 4e4, "loss"] = math.inf
    with pytest.raises(ValueError, match="N=40000"):
        tuning.size_optima(table)


def test_fit_recovers_the_law_with_bootstrap_intervals():
    table = _table(sizes=(1e4, 2e4, 4e4, 8e4, 1.6e5), seeds=(0, 1, 2), noise=0.003)
    fit = tuning.fit_optimum_law(table, bootstrap=200, seed=1)
    assert fit["e"] == pytest.approx(-0.5, abs=0.05)
    assert fit["c"] == pytest.approx(0.02 * 1e4 ** 0.5, rel=0.5)
    assert fit["ci_e"][0] <= fit["e"] <= fit["ci_e"][1] and fit["ci_e"][0] < fit["ci_e"][1]
    assert fit["ci_e"][0] < -0.5 < fit["ci_e"][1]
    assert fit["bootstrap"] > 150 and fit["n_seeds"] == [3] * 5
    np.testing.assert_allclose(tuning.predict_law(fit, [1e4]), fit["c"] * 1e4 ** fit["e"])


def test_bootstrap_resamples_whole_seeds_not_points():
    # Each seed shifts its whole curve (same offset at every LR): resampling whole seeds leaves
    # the optimum where it is, so the exponent's interval is a point.
    table = _table(seeds=(0, 1, 2, 3), seed_offset=0.3)
    fit = tuning.fit_optimum_law(table, bootstrap=100, seed=0)
    assert fit["ci_e"][1] - fit["ci_e"][0] == pytest.approx(0.0, abs=1e-9)
    assert fit["e"] == pytest.approx(-0.5, abs=1e-6)


def test_fit_needs_two_sizes():
    with pytest.raises(ValueError, match="2 sizes"):
        tuning.fit_optimum_law(_table(sizes=(1e4,)))


def test_plot_lr_curves_draws_a_curve_and_a_star_per_size():
    table = _table(seeds=(0, 1), noise=0.01)
    fit = tuning.fit_optimum_law(table, bootstrap=0)
    fig = tuning.plot_lr_curves(table, fit=fit)
    ax = fig.axes[0]
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 3 and ax.get_xscale() == "log"
    assert len(ax.get_legend().get_texts()) == 3
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_read_tuned_gives_the_table_with_diverged_runs_as_inf(tmp_path):
    import json

    table = _table()
    rows = table.to_dict("records")
    rows[-1]["loss"] = None  # a diverged run, as tuned.json stores it
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"version": 1, "data": rows}))
    tuned, back = tuning.read_tuned(path)
    assert len(back) == len(table) and math.isinf(back["loss"].iloc[-1])
    assert tuning.size_optima(back)["lr_step"].tolist() == \
        tuning.size_optima(table)["lr_step"].tolist()
    path.write_text(json.dumps({"version": 1}))
    with pytest.raises(ValueError, match="no 'data'"):
        tuning.read_tuned(path)


def test_report_section_lists_optima_fit_flags_and_writes_the_figure(tmp_path):
    import json

    table = _table(seeds=(0, 1))
    opt = tuning.size_optima(table)
    fit = tuning.fit_optimum_law(table, bootstrap=20)
    sizes = opt.to_dict("records")
    sizes[0]["edge"] = "lr_high"
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"version": 1, "data": table.to_dict("records"), "sizes": sizes,
                                "fits": {"lr": fit}, "flags": ["N=10000: stuck at the edge"]}))
    text, files = tuning.report_section(path, tmp_path / "report")
    assert [f.name for f in files] == ["lr_tuning.png", "lr_tuning.pdf"]
    assert all(f.exists() and f.stat().st_size > 0 for f in files)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 3 and "lr_high" in rows[1]
    assert f"{fit['e']:.3f}" in text and "stuck at the edge" in text
