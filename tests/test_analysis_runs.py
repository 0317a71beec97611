"""Loading run directories: good rows kept, corrupt/missing files warned about and skipped."""

import json
import logging

import numpy as np
import pytest

from analysis.runs import (Convention, apply_convention, final_values, find_run_dirs, load_runs, run_table,
                           select_runs)
from analysis.synthetic import make_sweep, write_run


def _root(tmp_path):
    return make_sweep(tmp_path / "sweep", sizes=(1e6, 2e6), budgets=(1e14,), arms=("base",),
                      arm_scale=(1.0,), tasks=False)


def test_load_sweep_rows_and_columns(tmp_path):
    root = _root(tmp_path)
    df = load_runs(root)
    assert df["run_id"].nunique() == 2
    for col in ("run_id", "step", "metric", "value", "N", "N_nonembed", "D", "C", "model.n_params_target",
                "optim.schedule", "status", "source"):
        assert col in df.columns
    tr = df[df["metric"] == "train/loss"]
    assert len(tr) > 10 and (tr["source"] == "train").all()
    # C = 6 N D in the synthetic logs; N comes from run.json
    np.testing.assert_allclose(tr["C"], 6 * tr["N"] * tr["D"], rtol=1e-12)
    ev = df[df["metric"] == "val/loss"]
    assert (ev["source"] == "eval").all() and len(ev) >= 2
    assert set(df["metric"]) >= {"train/loss", "train/lr", "train/grad_norm", "val/loss"}
    fin = final_values(df, "val/loss")
    assert len(fin) == 2 and (fin.groupby("run_id")["step"].max() == fin.set_index("run_id")["step"]).all()
    rt = run_table(root)
    assert len(rt) == 2 and set(rt["status"]) == {"completed"}


def test_corrupt_files_warn_and_keep_good_rows(tmp_path, caplog):
    root = _root(tmp_path)
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    good, bad = runs[0], runs[1]
    n_good_metrics = len((good / "metrics.jsonl").read_text().splitlines())
    # bad run: a garbage line in the middle, a truncated final line, no config.json, corrupt status
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    lines.insert(3, "{not json")
    (bad / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 99999, "loss": 1.')
    (bad / "config.json").unlink()
    (bad / "status.json").write_text("{")
    # an extra run listed in the manifest with no directory, and one with an unreadable run.json
    man = json.loads((root / "manifest.json").read_text())
    man["runs"].append({"id": "ghost", "name": "ghost", "dir": "ghost", "axes": {}, "status": "pending"})
    (root / "manifest.json").write_text(json.dumps(man))
    odd = root / "odd"
    write_run(odd, run_id="odd", N=3e6, D=1e7, axes={"optim.schedule": "base"}, tasks=False)
    (odd / "run.json").write_text('{"version": 1, "id": ')
    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        df = load_runs(root)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("metrics.jsonl" in m and "line 4" in m and "bad JSON" in m for m in msgs)
    assert any("truncated final line" in m for m in msgs)
    assert any(str(bad / "config.json") in m and "missing" in m for m in msgs)
    assert any("status.json" in m and "unreadable JSON" in m for m in msgs)
    assert any("ghost" in m for m in msgs)
    assert any("run.json" in m and "unreadable JSON" in m for m in msgs)
    # all good rows kept: the good run fully, the bad run minus its two broken lines
    g = df[(df["run_dir"] == str(good)) & (df["source"] == "train")]
    assert g["step"].nunique() == n_good_metrics
    b = df[(df["run_dir"] == str(bad)) & (df["source"] == "train")]
    assert b["step"].nunique() == len(lines) - 1 and 99999 not in set(b["step"])
    # the run with a corrupt run.json is still loaded (id from its directory, N from eval.jsonl)
    o = df[df["run_id"] == "odd"]
    assert len(o) > 0 and np.isfinite(o[o["source"] == "eval"]["N"]).all()


def test_run_dir_root_and_missing_path(tmp_path, caplog):
    d = tmp_path / "single"
    write_run(d, run_id="one", N=1e6, D=1e7, axes={}, tasks=True)
    assert [p for p, _ in find_run_dirs(d)] == [d]
    df = load_runs([d])
    assert set(df["run_id"]) == {"one"}
    assert any(m.startswith("parity/subtask_") for m in df["metric"].unique())
    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        empty = load_runs(tmp_path / "nope")
    assert empty.empty and any("does not exist" in r.getMessage() for r in caplog.records)
    # a directory without a manifest is scanned for run directories
    (tmp_path / "loose" / "a").mkdir(parents=True)
    write_run(tmp_path / "loose" / "a" / "r1", run_id="r1", N=1e6, D=1e7, axes={}, tasks=False)
    assert set(load_runs(tmp_path / "loose")["run_id"]) == {"r1"}


def test_a_compressed_checkpoint_has_no_training_log_by_design(tmp_path, caplog):
    # `scaling compress` writes an evaluated run without metrics.jsonl: no warning for it, while a
    # trained run that lost its metrics.jsonl is still warned about
    for name in ("compressed", "trained"):
        write_run(tmp_path / name, run_id=name, N=1e6, D=1e7, axes={}, tasks=False)
        (tmp_path / name / "metrics.jsonl").unlink()
    info = json.loads((tmp_path / "compressed" / "run.json").read_text())
    info["compression"] = {"quant": {"bits": 4}, "prune": None}
    (tmp_path / "compressed" / "run.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        df = load_runs(tmp_path)
    missing = [r.getMessage() for r in caplog.records if "metrics.jsonl" in r.getMessage()]
    assert len(missing) == 1 and str(tmp_path / "trained") in missing[0]
    assert set(df[df["metric"] == "val/loss"]["run_id"]) == {"compressed", "trained"}


def test_failed_diverged_interrupted_and_running_runs_are_excluded_and_listed(tmp_path):
    root = tmp_path / "sweep"
    entries = []
    for i, (state, error) in enumerate([("completed", None), ("completed", None), ("failed", "OSError: disk"),
                                         ("failed", "FloatingPointError: loss is nan at step 7"),
                                         ("interrupted", None), ("running", None)]):
        entries.append(write_run(root / f"r{i}", run_id=f"r{i}", N=1e6 * (i + 1), D=1e7, axes={}, tasks=False,
                                 status=state))
        if error:
            (root / f"r{i}" / "status.json").write_text(json.dumps({"status": state, "step": 3, "error": error}))
    (root / "r6").mkdir()
    write_run(root / "r6", run_id="r6", N=1e6, D=1e7, axes={}, tasks=False)
    (root / "r6" / "status.json").unlink()  # no status: not known to be complete
    df, runs = load_runs(root), run_table(root)
    assert list(runs.sort_values("run_id")["state"]) == ["completed", "completed", "failed", "diverged",
                                                          "interrupted", "running", "unknown"]
    kept, kept_runs, excluded = select_runs(df, runs)
    assert set(kept["run_id"]) == {"r0", "r1"} and set(kept_runs["run_id"]) == {"r0", "r1"}
    assert sorted(excluded["run"]) == ["r2", "r3", "r4", "r5", "r6"]
    reasons = dict(zip(excluded["run"], excluded["reason"]))
    assert reasons["r2"] == "OSError: disk" and reasons["r3"].startswith("FloatingPointError")
    assert reasons["r4"] == "status interrupted"
    # asked for: every run kept, nothing excluded
    kept, kept_runs, excluded = select_runs(df, runs, include_incomplete=True)
    assert kept["run_id"].nunique() == 7 and excluded.empty


def test_convention_uses_each_runs_own_n_and_flops_per_token(tmp_path):
    d = tmp_path / "r"
    write_run(d, run_id="r", N=1e6, D=1e7, axes={}, tasks=False)
    info = json.loads((d / "run.json").read_text())
    info["flops_per_token"] = 9.5e6  # the measured accounting, not 6N
    (d / "run.json").write_text(json.dumps(info))
    df = load_runs(d)
    out = apply_convention(df, Convention())
    np.testing.assert_allclose(out["N"], 0.9e6 * np.ones(len(out)), rtol=1e-6)  # non-embedding
    np.testing.assert_allclose(out["N_total"], df["N"])
    np.testing.assert_allclose(out["C"], out["D"] * 9.5e6, rtol=1e-12)
    six = apply_convention(df, Convention("total", "6ND"))
    np.testing.assert_allclose(six["C"], 6 * df["N"] * df["D"], rtol=1e-12)
    assert "non-embedding" in Convention().describe() and "measured" in Convention().describe()
    assert "6·N·D" in Convention(compute="6ND").describe()
    with pytest.raises(ValueError, match="params"):
        Convention(params="embedding")
