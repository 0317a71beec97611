"""`python -m scaling.sweeps.worker RUN_DIR`: trains (or resumes) one prepared run of a sweep.

Loads RUN_DIR/config.json and calls `scaling.train.loop.train`, which resumes from the latest
checkpoint. Multi-process runs read SCALING_COORDINATOR_ADDRESS / SCALING_NUM_PROCESSES /
SCALING_PROCESS_ID (or SCALING_DISTRIBUTED=auto) through `scaling.distributed.initialize`; the
compilation cache directory comes from SCALING_COMPILE_CACHE_DIR. The worker holds an exclusive
lock on RUN_DIR/.lock.p<process> while it runs, so a restarted sweep never trains the same run in
two processes at once (it waits for a dying predecessor to finish its checkpoint), and it dies
with its parent (the sweep runner or Ray task) via SIGTERM, which the loop turns into a saved
checkpoint. Exit codes: 0 completed, 1 failed, 2 bad run directory or config.json, 3 interrupted
(SIGTERM), 4 diverged (non-finite loss).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import sys
import traceback

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3
EXIT_DIVERGED = 4
PARENT_ENV = "SCALING_SWEEP_PARENT_PID"

log = logging.getLogger("scaling.sweeps.worker")


def _die_with_parent() -> None:
    """Asks Linux to send SIGTERM when the parent exits; exits now if it already did."""
    parent = os.environ.get(PARENT_ENV)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the runner terminates its workers itself
    if parent and os.getppid() != int(parent):
        sys.exit(EXIT_INTERRUPTED)


def _lock(run_dir: pathlib.Path, process_id: int):
    """Returns an open file holding an exclusive flock on the run for this process (blocks)."""
    import fcntl

    from scaling.sweeps.manifest import worker_lock_path

    f = open(worker_lock_path(run_dir, process_id), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logging.warning("another process still holds %s; waiting for it to exit", f.name)
        fcntl.flock(f, fcntl.LOCK_EX)
    return f


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Returns the parsed worker arguments: run_dir and the optional multi-process settings."""
    parser = argparse.ArgumentParser(
        prog="python -m scaling.sweeps.worker", description=__doc__.split("\n\n")[0],
        epilog="Multi-process settings default to SCALING_COORDINATOR_ADDRESS, "
        "SCALING_NUM_PROCESSES and SCALING_PROCESS_ID; with SCALING_DISTRIBUTED=auto JAX detects "
        "them (SLURM, TPU pods), e.g. `srun python -m scaling.sweeps.worker RUN_DIR`.")
    parser.add_argument("run_dir", help="a run directory prepared by `scaling sweep`")
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Trains the run in RUN_DIR; returns the exit code (0 completed, 3 interrupted, 4 diverged)."""
    argv = list(sys.argv if argv is None else argv)
    try:
        args = parse_args(argv[1:])
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code else 0
    run_dir = pathlib.Path(args.run_dir)
    if not (run_dir / "config.json").exists():
        print(f"error: {run_dir}/config.json not found (prepare the run with `scaling sweep`)",
              file=sys.stderr)
        return EXIT_USAGE
    from scaling import config as config_lib
    from scaling import validation

    try:  # a bad config.json is named in one line (the runner records the log's last error)
        config = config_lib.load_json(run_dir / "config.json")
        validation.check_vocab(config)
    except (config_lib.ConfigFileError, config_lib.ConfigError) as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_USAGE
    _die_with_parent()
    from scaling.cli import common

    common.setup_logging(False)
    import jax

    from scaling import distributed
    from scaling.sweeps import cache

    try:
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return EXIT_FAILED
    lock = _lock(run_dir, jax.process_index())
    try:
        cache.enable_from_env()
        from scaling.train.loop import train

        summary = train(config, run_dir)
    except FloatingPointError:
        traceback.print_exc()
        return EXIT_DIVERGED
    except Exception:  # noqa: BLE001 - any failure of a run is reported, not raised
        traceback.print_exc()
        return EXIT_FAILED
    finally:
        lock.close()
    log.info("run %s: %s at step %s, loss %s", run_dir.name, summary["status"],
             summary["step"], summary["loss"])
    return EXIT_COMPLETED if summary["status"] == "completed" else EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
