"""The tuning stage of sweeps: grid expansion, edge extension, tuned.json, the `tuned` rule, errors.

All but the last test are pure or use a fake trainer that writes the final validation loss of a
known loss-vs-LR bowl; the last one runs the real local runner on tiny models.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time

import pandas as pd
import pytest

from scaling.sweeps import manifest as manifest_lib
from scaling.sweeps import runner, spec, testing, tuning
from scaling.sweeps.spec import SweepError
from tests.conftest import REPO_ROOT

SQRT2 = math.sqrt(2.0)


def _tune_sweep(points: int = 3, **tune) -> "spec.ml_collections.ConfigDict":
    s = testing.tiny_sweep(name="tune")
    s.base.train.eval_at_checkpoints = True
    s.tune.enabled = True
    s.tune.lr_points = points
    for k, v in tune.items():
        s.tune[k] = v
    return s


def test_grid_is_spaced_by_the_factor_around_the_rule_prediction():
    s = _tune_sweep(points=4, lr_factor=2.0)
    s.lr.rule = "power"
    s.lr.ref_n, s.lr.ref_value, s.lr.exponent = 1e4, 1e-2, -0.5
    runs = spec.expand(s)
    assert len(runs) == 2 * 4
    for r in runs:
        predicted = 1e-2 * (r.n / 1e4) ** -0.5
        k = r.axes["lr_step"]
        assert r.lr == pytest.approx(predicted * 2.0 ** k)
        assert r.config.optim.lr == r.lr and r.axes["optim.lr"] == r.lr
        assert f"lr{r.lr:.4g}" in r.name and "lr_step" not in r.name
    assert sorted({r.axes["lr_step"] for r in runs}) == [-1, 0, 1, 2]
    assert len({r.id for r in runs}) == len(runs)


def test_grid_crosses_batch_and_b2_and_seeds():
    s = _tune_sweep(points=3, batch_points=3, batch_factor=2.0, b2=(0.95, 0.99))
    s.seeds = (0, 1)
    runs = spec.expand(s)
    assert len(runs) == 2 * 3 * 3 * 2 * 2
    one = [r for r in runs if r.axes["N_target"] == s.sizes[0]]
    assert sorted({r.batch for r in one}) == [2, 4, 8]
    assert {r.batch for r in one if r.axes["batch_step"] == 1} == {8}
    assert {r.config.optim.b2 for r in one} == {0.95, 0.99}
    assert {r.steps for r in one if r.batch == 8} == {10}  # same token budget, fewer steps
    assert {r.axes["seed"] for r in one} == {0, 1}


def test_extended_range_adds_grid_steps_for_one_size():
    s = _tune_sweep(points=3)
    runs = spec.expand(s, lr_steps={float(s.sizes[1]): (-1, 3)})
    steps = {t: sorted(r.axes["lr_step"] for r in runs if r.axes["N_target"] == t)
             for t in s.sizes}
    assert steps == {s.sizes[0]: [-1, 0, 1], s.sizes[1]: [-1, 0, 1, 2, 3]}
    # the initial grid's runs keep their ids (they are not retrained after an extension)
    assert {r.id for r in spec.expand(s)} <= {r.id for r in runs}


@pytest.mark.parametrize("field, value, message", [
    ("lr_points", 0, "LR grid is empty"),
    ("lr_factor", 1.0, "lr_factor=1.0: must be a number > 1"),
    ("lr_factor", float("nan"), "lr_factor=nan"),
    ("batch_factor", 0.5, "batch_factor=0.5"),
    ("batch_points", 0, "batch_points=0"),
    ("max_extend", -1, "max_extend=-1"),
    ("b2", (0.9, 1.0), "tune.b2: value 1.0"),
    ("out", "../x.json", "tune.out"),
])
def test_bad_tune_fields_are_errors(field, value, message):
    s = _tune_sweep()
    s.tune[field] = value
    with pytest.raises(SweepError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec.expand(s)


def test_tuning_needs_sizes_an_evaluation_and_no_conflicting_axis():
    s = _tune_sweep()
    s.sizes = None
    with pytest.raises(SweepError, match="sweep.sizes"):
        spec.expand(s)
    s = _tune_sweep()
    s.base.train.eval_at_checkpoints = False
    with pytest.raises(SweepError, match="eval_at_checkpoints"):
        spec.expand(s)
    s = _tune_sweep()
    s.axes = ({"optim.lr": (1e-3, 2e-3)},)
    with pytest.raises(SweepError, match="'optim.lr' is swept by sweep.tune"):
        spec.expand(s)


def _optima(rows: list[tuple[float, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"N": int(t), "N_target": t, "lr": 1e-3, "edge": e} for t, e in rows])


def test_extend_grid_moves_edges_until_max_extend_then_flags():
    opt = _optima([(1e3, ""), (2e3, "lr_high"), (4e3, "lr_low"), (8e3, "lr_high,batch_low")])
    new, flags = tuning.extend_grid(opt, {}, points=5, max_extend=1)
    assert new == {1e3: (-2, 2), 2e3: (-2, 3), 4e3: (-3, 2), 8e3: (-2, 3)}
    assert len(flags) == 1 and "N=8000" in flags[0] and "batch_low" in flags[0]
    again, flags = tuning.extend_grid(opt, new, points=5, max_extend=1)
    assert again == new  # nothing more to add: the runner stops
    assert sum("at the high edge of the grid" in f for f in flags) == 2
    assert sum("at the low edge of the grid" in f for f in flags) == 1
    assert sum("batch_low" in f for f in flags) == 1
    none, flags = tuning.extend_grid(opt, {}, points=5, max_extend=0)
    assert none == {t: (-2, 2) for t in (1e3, 2e3, 4e3, 8e3)} and len(flags) == 4


# --------------------------------------------------------------- the runner with a fake trainer


def _bowl_loss(n: int, lr: float) -> float:
    """Final loss of a fake run: a bowl in ln lr around LR*(N) = 0.3 * N^-0.5."""
    return 5.0 - 0.2 * math.log(n) + 0.1 * math.log(lr / (0.3 * n ** -0.5)) ** 2


def _fake_train(trained: list[str], loss=None):
    loss = loss or (lambda r: _bowl_loss(r.n, r.lr))

    def train(sweep, runs, root, **kwargs):
        root = pathlib.Path(root)
        runner.prepare(root, sweep, runs)
        for r in runs:
            run_dir = root / r.dir
            if manifest_lib.run_status(run_dir)["status"] == "completed":
                continue
            trained.append(r.name)
            value = loss(r)
            if value is None:  # diverged, as the training loop reports it
                manifest_lib.write_json_atomic(run_dir / "status.json", {
                    "status": "failed", "step": 3, "time": time.time(),
                    "error": "FloatingPointError: non-finite loss at step 3"})
                continue
            row = {"step": r.steps, "metric": "val/loss", "value": value}
            (run_dir / "eval.jsonl").write_text(json.dumps(row) + "\n")
            manifest_lib.write_json_atomic(run_dir / "status.json", {
                "status": "completed", "step": r.steps, "error": None, "time": time.time()})
        return {"status": "completed", "counts": {}, "runs": []}
    return train


def test_runner_extends_edges_fits_and_writes_tuned_json(tmp_path, monkeypatch):
    s = _tune_sweep(points=3, max_extend=2, bootstrap=50)
    n_small, n_big = sorted({r.n for r in spec.expand(s)})
    s.base.optim.lr = 0.3 * n_big ** -0.5  # LR*(n_big) at the grid's centre
    trained: list[str] = []
    monkeypatch.setattr(runner, "train_runs", _fake_train(trained))
    result = runner.run_sweep(s, tmp_path)
    tuned = json.loads((tmp_path / "tuned.json").read_text())
    assert result["tuning"]["sizes"] == tuned["sizes"]
    by_n = {row["N"]: row for row in tuned["sizes"]}
    # LR*(n_small) is log2(n_big / n_small) = 1.0 grid steps above the centre, at the high edge
    # of the initial grid: one extension makes it interior; LR*(n_big) is interior from the start
    assert by_n[n_small]["lr_steps"] == [-1, 2] and by_n[n_small]["extended"] == [0, 1]
    assert by_n[n_big]["lr_steps"] == [-1, 1] and by_n[n_big]["extended"] == [0, 0]
    assert all(row["edge"] == "" for row in tuned["sizes"]) and tuned["flags"] == []
    assert len(trained) == 7 and len(tuned["data"]) == 7
    for n, row in by_n.items():  # the parabola through an exact bowl finds LR* itself
        assert row["lr_opt"] == pytest.approx(0.3 * n ** -0.5, rel=1e-6)
    fit = tuned["fits"]["lr"]
    assert fit["e"] == pytest.approx(-0.5, abs=1e-6) and fit["c"] == pytest.approx(0.3, rel=1e-5)
    assert tuned["version"] == 1 and tuned["lr_factor"] == pytest.approx(SQRT2)
    # a second invocation trains nothing and writes the same optima
    trained.clear()
    runner.run_sweep(s, tmp_path)
    assert trained == [] and json.loads((tmp_path / "tuned.json").read_text())["sizes"] == \
        tuned["sizes"]
    assert "LR*(N) = 0.3 * N^-0.500" in tuning.summary(tuned, tmp_path)


def test_runner_flags_a_size_stuck_at_the_edge(tmp_path, monkeypatch):
    s = _tune_sweep(points=3, max_extend=1, bootstrap=0)
    s.base.optim.lr = 1e-5  # far below every LR*: the grid runs out before the optimum
    trained: list[str] = []
    monkeypatch.setattr(runner, "train_runs", _fake_train(trained))
    tuned = runner.run_sweep(s, tmp_path)["tuning"]
    assert len(trained) == 2 * 4
    assert [row["edge"] for row in tuned["sizes"]] == ["lr_high", "lr_high"]
    assert len(tuned["flags"]) == 2 and all("high edge" in f for f in tuned["flags"])


def test_diverged_runs_push_the_grid_down(tmp_path, monkeypatch):
    s = _tune_sweep(points=3, max_extend=2, bootstrap=20)
    n_small, n_big = sorted({r.n for r in spec.expand(s)})
    s.base.optim.lr = 2 * 0.3 * n_big ** -0.5  # grid centre two steps above LR*(n_big)

    def loss(r):  # runs above 1.3 LR*(N) diverge: every initial run of n_big does
        return None if r.lr > 1.3 * 0.3 * r.n ** -0.5 else _bowl_loss(r.n, r.lr)

    monkeypatch.setattr(runner, "train_runs", _fake_train([], loss))
    tuned = runner.run_sweep(s, tmp_path)["tuning"]
    by_n = {row["N"]: row for row in tuned["sizes"]}
    assert by_n[n_big]["lr_steps"] == [-3, 1] and by_n[n_small]["lr_steps"] == [-2, 1]
    assert [row["edge"] for row in tuned["sizes"]] == ["", ""] and tuned["flags"] == []
    # no parabola next to a diverged neighbour: the optimum is the grid point nearest LR*
    assert by_n[n_big]["lr_opt"] == pytest.approx(0.3 * n_big ** -0.5, rel=1e-9)
    assert by_n[n_small]["lr_opt"] == pytest.approx(0.3 * n_small ** -0.5, rel=1e-2)
    assert sum(d["loss"] is None for d in tuned["data"]) == 5  # diverged runs: loss +inf
    assert tuned["fits"]["lr"]["e"] == pytest.approx(-0.5, abs=0.01)


def test_all_diverged_size_is_listed_flagged_and_left_out(tmp_path, monkeypatch):
    s = _tune_sweep(points=3, max_extend=0, bootstrap=0)
    n_small, n_big = sorted({r.n for r in spec.expand(s)})
    monkeypatch.setattr(runner, "train_runs",
                        _fake_train([], lambda r: None if r.n == n_big else 3.0 + r.lr))
    tuned = runner.run_sweep(s, tmp_path)["tuning"]
    by_n = {row["N"]: row for row in tuned["sizes"]}
    assert by_n[n_big]["lr_opt"] is None and by_n[n_big]["edge"] == "lr_low"
    assert any(f"N={n_big}: every run diverged" in f for f in tuned["flags"])
    assert tuned["fits"] == {} and "every run diverged" in tuning.summary(tuned, tmp_path)
    iso = _isoflop_tuned(str(tmp_path / "tuned.json"))
    with pytest.raises(SweepError, match="no fitted lr law"):
        spec.expand(iso)  # n_small is tuned, the other sizes have nothing to go by


def test_batch_sweep_fits_b_star_and_the_tuned_batch_rule_uses_it(tmp_path, monkeypatch):
    s = _tune_sweep(points=3, batch_points=3, bootstrap=20)
    n_small, n_big = sorted({r.n for r in spec.expand(s)})
    s.base.optim.lr = 0.3 * n_big ** -0.5

    def loss(r):  # B*(N) = 4 (N / n_small): n_small's optimum is interior, n_big's at 8 = edge
        return _bowl_loss(r.n, r.lr) + 0.05 * math.log(r.batch / (4 * r.n / n_small)) ** 2

    monkeypatch.setattr(runner, "train_runs", _fake_train([], loss))
    tuned = runner.run_sweep(s, tmp_path)["tuning"]
    by_n = {row["N"]: row for row in tuned["sizes"]}
    assert by_n[n_small]["batch"] == 4 and by_n[n_small]["edge"] == ""
    assert by_n[n_big]["batch"] == 8 and by_n[n_big]["edge"] == "batch_high"
    assert any("batch_high" in f for f in tuned["flags"]) and tuned["swept"] == ["lr", "batch"]
    fit = tuned["fits"]["batch"]
    assert fit["e"] == pytest.approx(math.log(2) / math.log(n_big / n_small))
    iso = _isoflop_tuned(str(tmp_path / "tuned.json"))
    iso.batch.rule = "tuned"
    iso.batch.tuned_file = str(tmp_path / "tuned.json")
    batches = {r.n: r.batch for r in spec.expand(iso)}
    assert batches[n_small] == 4 and batches[n_big] == 8
    assert all(b == round(fit["c"] * n ** fit["e"]) for n, b in batches.items()
               if n not in (n_small, n_big))


# ------------------------------------------------------------------------------ the tuned rule


def _write_tuned(path: pathlib.Path, sizes: list[tuple[int, float]],
                 fit: dict | None = None) -> pathlib.Path:
    data = {"version": 1, "sizes": [{"N": n, "lr_opt": lr, "lr": lr} for n, lr in sizes],
            "fits": {"lr": fit} if fit else {}}
    path.write_text(json.dumps(data))
    return path


def _isoflop_tuned(tuned_file: str, source: str = "optimum"):
    s = testing.tiny_sweep(name="iso", sizes=(3.4e3, 6.7e3, 13e3))
    s.tokens = None
    s.flops = (3e8,)
    s.lr.rule = "tuned"
    s.lr.tuned_file = tuned_file
    s.lr.tuned_source = source
    return s


def test_tuned_rule_uses_tuned_optima_and_the_law_elsewhere(tmp_path):
    n_small = spec.expand(testing.tiny_sweep())[0].n
    path = _write_tuned(tmp_path / "tuned.json", [(n_small, 7e-3)],
                        {"c": 0.3, "e": -0.5, "ci_c": [0.2, 0.4], "ci_e": [-0.6, -0.4]})
    runs = spec.expand(_isoflop_tuned(str(path)))
    lrs = {r.n: r.lr for r in runs}
    assert lrs[n_small] == 7e-3
    for n, lr in lrs.items():
        if n != n_small:
            assert lr == pytest.approx(0.3 * n ** -0.5)
    runs = spec.expand(_isoflop_tuned(str(path), "fit"))
    assert all(r.lr == pytest.approx(0.3 * r.n ** -0.5) for r in runs)


def test_tuned_file_is_relative_to_the_sweep_config(tmp_path):
    (tmp_path / "out").mkdir()
    _write_tuned(tmp_path / "out" / "tuned.json", [(100, 1e-3), (200, 5e-4)],
                 {"c": 0.2, "e": -0.4})
    cfg = tmp_path / "iso.py"
    cfg.write_text("from tests.test_sweeps_tuning import _isoflop_tuned\n\n\n"
                   "def get_config():\n    return _isoflop_tuned('out/tuned.json')\n")
    sweep = spec.load_sweep(str(cfg))
    assert sweep.lr.tuned_file == str(tmp_path / "out" / "tuned.json")
    assert all(r.lr == pytest.approx(0.2 * r.n ** -0.4) for r in spec.expand(sweep))


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    ("{not json", "not a readable JSON file"),
    (json.dumps({"version": 1, "sizes": []}), "has no 'sizes' list"),
    (json.dumps({"version": 2, "sizes": [{"N": 1, "lr_opt": 1e-3}]}), "version 1"),
    (json.dumps({"version": 1, "sizes": [{"N": 1, "lr_opt": -1}]}), r"sizes\[0\] needs"),
    (json.dumps({"version": 1, "sizes": [{"N": 1, "lr_opt": 1e-3}],
                 "fits": {"lr": {"c": 0.1, "e": None}}}), "fits.lr needs"),
])
def test_missing_or_malformed_tuned_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "tuned.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SweepError, match=f"sweep.lr.tuned_file=.*{message}"):
        spec.expand(_isoflop_tuned(str(path)))


def test_tuned_rule_without_file_or_law_is_an_error(tmp_path):
    with pytest.raises(SweepError, match="tuned_file is empty"):
        spec.expand(_isoflop_tuned(""))
    path = _write_tuned(tmp_path / "t.json", [(1, 1e-3)])
    with pytest.raises(SweepError, match="no fitted lr law"):
        spec.expand(_isoflop_tuned(str(path)))
    good = _write_tuned(tmp_path / "g.json", [(1, 1e-3), (2, 1e-3)], {"c": 0.1, "e": -0.3})
    with pytest.raises(SweepError, match="tuned_source='best'"):
        spec.expand(_isoflop_tuned(str(good), "best"))
    batch = _isoflop_tuned(str(good))
    batch.batch.rule = "tuned"
    batch.batch.tuned_file = str(good)
    with pytest.raises(SweepError, match="sweep.batch.tuned_file=.*batch was not swept"):
        spec.expand(batch)


# --------------------------------------------------------------------- end to end, real runner


@pytest.mark.slow
def test_tuning_sweep_end_to_end_then_isoflop_uses_it(tmp_path, stdlib_tiny_data_dir,
                                                      tmp_path_factory):
    s = testing.tiny_sweep(stdlib_tiny_data_dir, name="tune_e2e", steps=8, checkpoint_every=8,
                           log_every=4)
    s.base.train.eval_at_checkpoints = True
    s.base.data.eval_tokens = 256
    s.base.optim.lr = 1e-4  # low: the loss falls with LR over the grid, so it extends
    s.tune.enabled = True
    s.tune.lr_points = 2  # 4 runs; the extension loop itself is tested with a fake trainer
    s.tune.max_extend = 0
    s.tune.lr_factor = 4.0
    s.tune.bootstrap = 20
    root = tmp_path / "tune"
    cache = tmp_path_factory.getbasetemp() / "sweeps_compile_cache"
    cache.mkdir(exist_ok=True)
    os.environ["JAX_PLATFORMS"] = "cpu"
    result = runner.run_sweep(s, root, workers=2, compile_cache_dir=str(cache), progress=False)
    assert result["status"] == "completed"
    tuned = json.loads((root / "tuned.json").read_text())
    assert len(tuned["sizes"]) == 2 and len(tuned["data"]) == 4
    manifest = manifest_lib.read_manifest(root)
    assert len(manifest["runs"]) == len(tuned["data"])
    assert all(e["status"] == "completed" for e in manifest["runs"])
    for row in tuned["sizes"]:
        tried = [d for d in tuned["data"] if d["N"] == row["N"]]
        assert len(tried) == row["lr_steps"][1] - row["lr_steps"][0] + 1
        best = min(tried, key=lambda d: d["loss"])
        assert row["lr"] == pytest.approx(best["lr"]) and row["loss"] == pytest.approx(best["loss"])
        assert row["extended"] == [0, 0]
        # two points: the optimum is at an edge, and max_extend=0 leaves it flagged
        assert row["edge"] in ("lr_low", "lr_high")
        assert any(f"N={row['N']}" in f and "edge" in f for f in tuned["flags"])
    fit = tuned["fits"]["lr"]
    iso = _isoflop_tuned(str(root / "tuned.json"), "fit")
    iso.base.data.tfds_data_dir = str(stdlib_tiny_data_dir)
    for r in spec.expand(iso):
        assert r.lr == pytest.approx(fit["c"] * r.n ** fit["e"])
    iso.lr.tuned_source = "optimum"
    tuned_lr = {row["N"]: row["lr_opt"] for row in tuned["sizes"]}
    runs = spec.expand(iso)
    assert {r.n for r in runs} >= set(tuned_lr)
    for r in runs:
        assert r.lr == pytest.approx(tuned_lr.get(r.n, fit["c"] * r.n ** fit["e"]))


def test_cli_dry_run_reads_a_tuned_file_relative_to_the_working_directory(tmp_path, capsys,
                                                                          monkeypatch):
    from scaling.cli import sweep as sweep_cli

    _write_tuned(tmp_path / "tuned.json", [(1, 1e-3), (2, 1e-3)], {"c": 0.25, "e": -0.5})
    cfg = tmp_path / "cfgs" / "iso.py"
    cfg.parent.mkdir()
    cfg.write_text("from tests.test_sweeps_tuning import _isoflop_tuned\n\n\n"
                   "def get_config():\n    return _isoflop_tuned('')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    code = sweep_cli.main(["scaling sweep", "--config", str(cfg), "--dry-run",
                           "--config.lr.tuned_file=tuned.json"])
    out = capsys.readouterr().out
    assert code == 0
    n_small = spec.expand(testing.tiny_sweep())[0].n
    assert f"{0.25 * n_small ** -0.5:.3g}" in out
    code = sweep_cli.main(["scaling sweep", "--config", str(cfg), "--dry-run",
                           "--config.lr.tuned_file=missing.json"])
    assert code == 2 and "missing.json" in capsys.readouterr().err


def test_an_unfinished_run_stops_tuning_without_a_tuned_file(tmp_path, monkeypatch, caplog):
    s = _tune_sweep(points=3, bootstrap=0)
    fake = _fake_train([])

    def train(sweep, runs, root, **kwargs):
        result = fake(sweep, runs, root, **kwargs)
        manifest_lib.write_json_atomic(pathlib.Path(root) / runs[0].dir / "status.json",
                                       {"status": "interrupted", "step": 2, "error": None})
        return dict(result, status="interrupted")

    monkeypatch.setattr(runner, "train_runs", train)
    result = runner.run_sweep(s, tmp_path)
    assert result["tuning"] is None and not (tmp_path / "tuned.json").exists()
    assert "is interrupted" in caplog.text and "tuned.json not written" in caplog.text
