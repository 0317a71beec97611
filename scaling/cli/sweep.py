"""`scaling sweep --config configs/sweeps/<name>.py --root DIR [--backend local|ray] ...`."""

from __future__ import annotations

from typing import Any

from scaling.cli import common

DESCRIPTION = """Expands a sweep config into runs and trains them, each in its own run directory.

A sweep config (configs/sweeps/<name>.py, get_config() -> scaling.sweeps.spec.default_sweep() with
fields set) declares a base run config, model sizes by a family rule (sweep.sizes, target
non-embedding parameters), a data axis (sweep.tokens, sweep.tokens_per_param or IsoFLOP budgets
sweep.flops), any config fields as axes (sweep.axes), seeds, and batch-size / learning-rate rules of
model size. Any field can be overridden, e.g. --config.flops='(1e12,3e12)' or
--config.base.optim.lr=1e-3.

The sweep root gets manifest.json (one line per run: id, name, dir, axes, N, D, C, status),
sweep.json and runs/<name>/ per run. The whole sweep is validated before anything starts.
Re-running the same command skips completed runs, resumes interrupted ones from their latest
checkpoint and retries failed ones (a run that diverged to NaN only with --retry_failed).

examples:
  scaling sweep --config configs/sweeps/isoflop_tiny.py --root sweeps/isoflop --dry-run
  scaling sweep --config configs/sweeps/isoflop_tiny.py --root sweeps/isoflop --workers 2
  scaling sweep --config configs/sweeps/size_data_tiny.py --root sweeps/sd \\
      --backend ray --address 10.0.0.1:6379
  scaling sweep-status sweeps/isoflop"""

EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 3


def normalize_argv(argv: list[str]) -> list[str]:
    """Returns argv with GNU-style --dry-run / --no-retry-failed spelled as absl flags."""
    out = [argv[0]]
    for arg in argv[1:]:
        if arg.startswith("--") and not arg.startswith("--config"):
            name, eq, value = arg[2:].partition("=")
            if name.startswith("no-"):
                name = "no" + name[3:]
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


def define_flags(argv: list[str]) -> Any:
    """Returns the FlagValues of `scaling sweep` (config overrides discovered in `argv`)."""
    from absl import flags
    from ml_collections import config_flags

    fv = common.new_flag_values(with_config=False)
    # sys_argv: config_flags finds the --config.<field> overrides in the argv it is given, not
    # in sys.argv, so that main(argv) also works in-process.
    config_flags.DEFINE_config_file(
        "config", default=None, flag_values=fv, lock_config=True, sys_argv=argv,
        help_string="Sweep config file (get_config() returns a scaling.sweeps.spec."
        "default_sweep() tree); override any field, e.g. --config.sizes='(1e5,2e5)' or "
        "--config.base.optim.lr=1e-3.")
    flags.DEFINE_string("root", None, "Sweep root directory (created; re-used to resume).",
                        flag_values=fv)
    flags.DEFINE_enum("backend", "local", ["local", "ray"],
                      "local: subprocesses on this machine; ray: Ray tasks on a cluster.",
                      flag_values=fv)
    flags.DEFINE_string("address", None, "Ray cluster address HOST:PORT (backend ray; default: "
                        "RAY_ADDRESS or a local Ray instance).", flag_values=fv)
    flags.DEFINE_integer("workers", 0, "Runs at a time (0: 1 for local, as many as the Ray "
                         "cluster's resources allow for ray).", lower_bound=0, flag_values=fv)
    flags.DEFINE_boolean("dry_run", False, "Print the run table (name, N, D, C, steps, batch, lr) "
                         "and exit without writing or training anything.", flag_values=fv)
    flags.DEFINE_boolean("prepare_only", False, "Write the run directories and manifest, print "
                         "one worker command per unfinished run (for SLURM arrays or other "
                         "schedulers) and exit without training.", flag_values=fv)
    flags.DEFINE_integer("max_retries", None, "Extra attempts per failed run (default: the "
                         "sweep's max_retries).", lower_bound=0, flag_values=fv)
    flags.DEFINE_boolean("retry_failed", False, "Also retry runs that diverged (non-finite loss) "
                         "in an earlier invocation.", flag_values=fv)
    flags.DEFINE_string("compile_cache_dir", None, "Shared JAX compilation cache directory "
                        "(default ROOT/compile_cache when the sweep's compile_cache is on; "
                        "'none' disables it).", flag_values=fv)
    flags.DEFINE_boolean("progress", True, "Show a progress bar over runs.", flag_values=fv)
    return fv


def main(argv: list[str]) -> int:
    """Runs `scaling sweep`; returns the exit code (0 all completed, 1 some failed, 2 usage)."""
    argv = normalize_argv(argv)
    fv = define_flags(argv)
    rest = common.parse(fv, argv, DESCRIPTION)
    if rest is None:
        return 0
    if fv.config is None or (fv.root is None and not fv.dry_run):
        return common.fail("--config and --root are required (see --help)")
    common.setup_logging(fv.verbose)
    from ml_collections import config_flags

    from scaling.sweeps import runner, spec, tuning

    # a relative lr/batch.tuned_file set in the sweep config file is relative to that file; one
    # given on the command line is relative to the working directory
    given = {what for what in ("lr", "batch")
             if any(a.startswith(f"--config.{what}.tuned_file") for a in argv)}
    tuning.resolve_paths(fv.config, config_flags.get_config_filename(fv["config"]), skip=given)

    def run() -> int:
        if fv.dry_run:
            skipped: list[str] = []
            runs = spec.expand(fv.config, skipped)
            print(runner.plan_table(runs))
            print(dry_run_summary(runs))
            for line in skipped:
                print(f"skipped: {line}")
            return 0
        check_root(fv.root)
        cache = fv.compile_cache_dir
        if cache is not None and cache.lower() in ("none", "off", ""):
            cache = ""
        if fv.prepare_only:
            for line in runner.pending_commands(fv.config, fv.root, cache):
                print(line)
            return 0
        result = runner.run_sweep(
            fv.config, fv.root, backend=fv.backend, workers=fv.workers, address=fv.address,
            max_retries=fv.max_retries, retry_failed=fv.retry_failed,
            compile_cache_dir=cache, progress=fv.progress)
        counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items() if v)
        print(f"sweep {result['status']}: {counts}")
        if result.get("tuning"):
            print(tuning.summary(result["tuning"], fv.root))
        return {"completed": 0, "interrupted": EXIT_INTERRUPTED}.get(result["status"],
                                                                    EXIT_SOME_FAILED)

    return common.run_with_errors(run, fv.debug)


def check_root(root: str) -> None:
    """Returns None; raises a user error naming --root if it cannot hold a sweep."""
    import pathlib

    from scaling.sweeps import manifest as manifest_lib

    path = pathlib.Path(root)
    if path.exists() and not path.is_dir():
        raise common.UsageError(f"--root={root}: exists and is not a directory")
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise common.UsageError(f"--root={root}: {parent} is not a directory")
    if path.is_dir():
        manifest_lib.read_manifest(path)  # a corrupt manifest: name the file before any run


def dry_run_summary(runs: list) -> str:
    """Returns the dry run's closing lines: run count, total FLOPs, worst IsoFLOP deviation."""
    from scaling.sweeps import spec

    total = sum(r.c for r in runs)
    lines = [f"{len(runs)} runs, {total:.3e} training FLOPs in total"]
    budgeted = [r for r in runs if r.budget is not None]
    if budgeted:
        worst = max(abs(r.c - r.budget) / (r.flops_per_token * r.tokens_per_step)
                    for r in budgeted)
        budgets = ", ".join(spec.format_flops(b) for b in sorted({r.budget for r in budgeted}))
        lines.append(f"IsoFLOP: every run within {worst:.2f} steps' FLOPs of its budget "
                     f"(budgets {budgets})")
    return "\n".join(lines)
