"""`python -m scaling.sweeps.worker RUN_DIR [RUN_DIR ...]`: trains (or resumes) prepared runs of a sweep.

Loads RUN_DIR/config.json and calls `scaling.train.loop.train`, which resumes from the latest
checkpoint; several RUN_DIRs (runs of one model shape, grouped by the runner) are trained as one
population by `scaling.train.population.train_population`, each member into its own directory. Multi-process runs read SCALING_COORDINATOR_ADDRESS / SCALING_NUM_PROCESSES /
SCALING_PROCESS_ID (or SCALING_DISTRIBUTED=auto) through `scaling.distributed.initialize`; the
compilation cache directory comes from SCALING_COMPILE_CACHE_DIR. The worker holds an exclusive
lock on RUN_DIR/.lock.p<process> while it runs, so a restarted sweep never trains the same run in
two processes at once (it waits for a dying predecessor to finish its checkpoint), and it dies
with its parent (the sweep runner or Ray task) via SIGTERM, which the loop turns into a saved
checkpoint. Exit codes: 0 completed, 1 failed, 2 bad run directory or config.json, 3 interrupted
(SIGTERM), 4 diverged (non-finite loss). A population exits 0 when every member completed, 1 when
one failed or diverged, else 3; each member's status.json says its own outcome.
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
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run directory prepared by `scaling sweep`; several: one population")
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
    run_dirs = [pathlib.Path(d) for d in args.run_dirs]
    for run_dir in run_dirs:
        if not (run_dir / "config.json").exists():
            print(f"error: {run_dir}/config.json not found (prepare the run with `scaling sweep`)",
                  file=sys.stderr)
            return EXIT_USAGE
    from scaling import config as config_lib
    from scaling import validation

    configs = []
    try:  # a bad config.json is named in one line (the runner records the log's last error)
        for run_dir in run_dirs:
            configs.append(config_lib.load_json(run_dir / "config.json"))
            validation.check_vocab(configs[-1])
        if len(configs) > 1:
            from scaling.train import population_step

            population_step.check_members(configs)
    except (config_lib.ConfigFileError, config_lib.ConfigError, ValueError) as err:
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
    locks = [_lock(d, jax.process_index()) for d in run_dirs]
    try:
        cache.enable_from_env()
        if len(run_dirs) == 1:
            from scaling.train.loop import train

            summaries = [train(configs[0], run_dirs[0])]
        else:
            from scaling.train.population import train_population

            summaries = train_population(configs, run_dirs)
    except FloatingPointError:
        traceback.print_exc()
        return EXIT_DIVERGED
    except Exception:  # noqa: BLE001 - any failure of a run is reported, not raised
        traceback.print_exc()
        return EXIT_FAILED
    finally:
        for lock in locks:
            lock.close()
    for run_dir, summary in zip(run_dirs, summaries):
        log.info("run %s: %s at step %s, loss %s", run_dir.name, summary["status"],
                 summary["step"], summary["loss"])
    return exit_code([summary["status"] for summary in summaries])


def exit_code(statuses: list[str]) -> int:
    """Returns the worker exit code for its runs' final statuses: 0 all completed, 1 some
    failed (a member's status.json says whether it diverged), else 3 (interrupted)."""
    if all(s == "completed" for s in statuses):
        return EXIT_COMPLETED
    return EXIT_FAILED if "failed" in statuses else EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
