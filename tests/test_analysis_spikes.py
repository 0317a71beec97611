"""The loss-spike detector on synthetic curves (spiky, smooth, noisy but flat) and run files."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

from analysis import spikes


def _decay(steps: np.ndarray) -> np.ndarray:
    return 2.0 + 3.0 * np.exp(-steps / 200.0)


def test_smooth_curve_has_no_spikes():
    steps = np.arange(0, 2000, 10)
    stats = spikes.detect_spikes(steps, _decay(steps), warmup_steps=100)
    assert stats.count == 0
    assert stats.max_rise == 0.0
    assert stats.points == int(np.sum(steps > 100))


def test_spiky_curve_counts_each_excursion_and_its_size():
    steps = np.arange(0, 2000, 10)
    loss = _decay(steps)
    loss[(steps >= 500) & (steps < 540)] += 1.2  # one spike of 4 points
    loss[steps == 1200] += 0.8  # a second, single-point spike
    loss[steps == 1500] += 0.3  # below the threshold: not a spike
    stats = spikes.detect_spikes(steps, loss, warmup_steps=100, threshold=0.5)
    assert stats.count == 2
    assert 500 <= stats.max_step < 540
    # measured against the running minimum: the last point before the spike (step 490)
    expected = loss[steps == 500][0] - _decay(np.array([490.0]))[0]
    assert expected < 1.2
    assert stats.max_rise == pytest.approx(expected)


def test_rise_during_warmup_is_ignored():
    steps = np.arange(0, 1000, 10)
    loss = _decay(steps)
    loss[steps == 50] += 2.0
    assert spikes.detect_spikes(steps, loss, warmup_steps=100).count == 0
    assert spikes.detect_spikes(steps, loss, warmup_steps=0).count == 1


def test_noisy_flat_curve_is_judged_after_smoothing():
    rng = np.random.default_rng(0)
    steps = np.arange(0, 3000, 10)
    loss = 3.0 + rng.normal(0.0, 0.3, len(steps))
    raw = spikes.detect_spikes(steps, loss, warmup_steps=100)
    smoothed = spikes.detect_spikes(steps, spikes.smooth(loss, 20), warmup_steps=100)
    assert raw.count > 0  # per-point noise crosses 0.5 nats above the running minimum
    assert smoothed.count == 0
    assert smoothed.max_rise < 0.5


def test_smoothing_keeps_a_real_spike_and_a_divergence():
    steps = np.arange(0, 3000, 10)
    loss = np.full(len(steps), 3.0)
    loss[(steps >= 1000) & (steps < 1300)] = 5.0  # a long excursion survives the rolling mean
    assert spikes.detect_spikes(steps, spikes.smooth(loss, 10), warmup_steps=100).count == 1
    loss[-1] = math.nan
    stats = spikes.detect_spikes(steps, spikes.smooth(loss, 10), warmup_steps=100)
    assert math.isinf(stats.max_rise) and stats.count == 2


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="threshold"):
        spikes.detect_spikes([1, 2], [1.0, 2.0], threshold=0.0)
    with pytest.raises(ValueError, match="shape"):
        spikes.detect_spikes([1, 2, 3], [1.0, 2.0])
    with pytest.raises(ValueError, match="window"):
        spikes.smooth([1.0], 0)


def _write_run(run_dir: pathlib.Path, train: list[float], val: list[float],
               warmup: int) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"optim": {"warmup_steps": warmup}}))
    (run_dir / "run.json").write_text(json.dumps({"version": 1, "id": run_dir.name,
                                                  "name": run_dir.name, "axes": {}}))
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 10 * (i + 1), "loss": v}) + "\n" for i, v in enumerate(train)))
    (run_dir / "eval.jsonl").write_text("".join(
        json.dumps({"step": 100 * (i + 1), "metric": "val/loss", "value": v}) + "\n"
        for i, v in enumerate(val)))


def test_run_spikes_reads_a_run_and_uses_its_warmup(tmp_path):
    train = [5.0] * 3 + [3.0] * 40 + [4.5] * 15 + [3.0] * 20  # a 1.5-nat plateau of 15 rows
    val = [4.0, 3.2, 3.0, 3.9, 2.9]
    _write_run(tmp_path / "runs" / "a", train, val, warmup=20)
    stats = spikes.run_spikes(tmp_path / "runs" / "a", window=5)
    assert stats["train"].count == 1
    assert stats["train"].max_rise == pytest.approx(1.5)
    assert stats["val"].count == 1 and stats["val"].max_rise == pytest.approx(0.9)
    assert spikes.format_spikes(stats) == "1/1 (1.50)"
    table = spikes.spike_table(tmp_path)
    assert list(table["run_name"]) == ["a"]
    assert table.loc[0, "train_spikes"] == 1 and table.loc[0, "val_spikes"] == 1


def test_sweep_status_shows_a_spike_column(tmp_path, capsys):
    from scaling.cli import sweep_status
    from scaling.sweeps import manifest as manifest_lib

    _write_run(tmp_path / "runs" / "spiky", [5.0] * 3 + [3.0] * 40 + [4.5] * 15, [3.0, 2.9],
               warmup=20)
    _write_run(tmp_path / "runs" / "calm", [5.0] * 3 + [3.0] * 40, [3.0, 2.9], warmup=20)
    manifest_lib.write_manifest(tmp_path, {"name": "s", "runs": [
        {"id": name, "name": name, "dir": f"runs/{name}", "n": 1000, "d": 2000, "c": 1e9,
         "status": "completed"} for name in ("spiky", "calm")]})
    info = sweep_status.collect(tmp_path)
    cells = {r["name"]: r["spikes_cell"] for r in info["runs"]}
    assert cells == {"spiky": "1/0 (1.50)", "calm": "0/0 (0.00)"}
    assert info["runs"][0]["spikes"]["train"]["count"] == 1
    assert sweep_status.main(["scaling sweep-status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "spikes" in out.splitlines()[0] and "1/0 (1.50)" in out


def test_a_run_that_has_not_logged_yet_has_no_spike_points(tmp_path, caplog):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({"status": "running", "step": 0}))
    stats = spikes.run_spikes(run_dir)
    assert stats["train"].points == 0 and stats["val"].points == 0
    assert spikes.format_spikes(stats) == "-"
    assert not caplog.records  # no "file is missing" warning for a run that just started
