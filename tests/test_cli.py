"""The `scaling` command explains itself: top-level help and every subcommand's --help."""

import pytest

from scaling import cli


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["scaling", "--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["scaling", "trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_subcommand_has_help(command, capsys):
    try:
        code = cli.main(["scaling", command, "--help"])
    except SystemExit as exit_:  # argparse-based commands exit after printing help
        code = exit_.code
    assert code == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower() and len(out.splitlines()) >= 5, out


LM_TINY = "configs/lm_tiny.py"


def test_user_errors_are_one_line_and_debug_shows_the_trace(tmp_path, capsys):
    argv = ["scaling", "train", "--config", LM_TINY, "--workdir", str(tmp_path / "run"),
            "--config.optim.b1=1.5"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: config.optim.b1=1.5: must be a finite number in [0, 1)"
    assert cli.main(argv + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.rstrip().endswith("error: config.optim.b1=1.5: must be a finite number in [0, 1)")
    assert not (tmp_path / "run").exists()


def _sweep_root_with_running_run(root):
    import json

    run_dir = root / "runs" / "r0"
    run_dir.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps(
        {"version": 1, "name": "s", "runs": [{"id": "abc", "name": "r0", "dir": "runs/r0",
                                              "status": "running", "attempts": 1}]}))
    (run_dir / "status.json").write_text(json.dumps({"status": "running", "step": 3,
                                                     "error": None}))
    return run_dir


def test_sweep_status_reports_running_without_a_live_worker_as_stale(tmp_path, capsys):
    import fcntl

    from scaling.sweeps import manifest as manifest_lib

    run_dir = _sweep_root_with_running_run(tmp_path)
    assert cli.main(["scaling", "sweep-status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stale" in out and "no process holds the run" in out
    with open(manifest_lib.worker_lock_path(run_dir), "a+") as lock:  # a live worker's lock
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli.main(["scaling", "sweep-status", str(tmp_path), "--json"]) == 0
        import json

        rows = json.loads(capsys.readouterr().out)["runs"]
        assert [r["status"] for r in rows] == ["running"] and rows[0]["error"] is None


def test_attempt_numbers_agree_between_manifest_and_log(tmp_path, monkeypatch):
    import re
    import sys

    from scaling.sweeps import manifest as manifest_lib
    from scaling.sweeps import launch, runner, testing

    # every attempt crashes at once (no training): two attempts per invocation (max_retries=1)
    monkeypatch.setattr(launch, "worker_command",
                        lambda run_dir: [sys.executable, "-c", "raise SystemExit(1)"])
    sweep = testing.tiny_sweep(sizes=(3.4e3,))
    root = tmp_path / "root"
    for invocation in (1, 2):
        result = runner.run_sweep(sweep, root, max_retries=1, progress=False)
        assert result["status"] == "failed"
        entry = manifest_lib.read_manifest(root)["runs"][0]
        log_text = (root / entry["dir"] / "train.log").read_text()
        numbers = [int(n) for n in re.findall(r"attempt (\d+) process", log_text)]
        assert entry["attempts"] == 2 * invocation
        assert numbers == list(range(1, 2 * invocation + 1))


def test_a_run_with_an_invalid_config_json_fails_once_naming_the_file(tmp_path):
    from scaling.sweeps import manifest as manifest_lib
    from scaling.sweeps import runner, testing

    sweep = testing.tiny_sweep(sizes=(3.4e3,))
    root = tmp_path / "root"
    runner.pending_commands(sweep, root)  # prepares the run directory without training
    entry = manifest_lib.read_manifest(root)["runs"][0]
    (root / entry["dir"] / "config.json").write_text("{broken")
    result = runner.run_sweep(sweep, root, max_retries=2, progress=False)
    entry = result["runs"][0]
    assert entry["status"] == "failed" and entry["attempts"] == 1  # not retried
    assert "config.json: is not valid JSON" in entry["error"]
