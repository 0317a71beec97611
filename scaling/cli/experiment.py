"""`scaling experiment NAME --root DIR [--scale tiny|small|medium|large] [--backend local|ray]`."""

from __future__ import annotations

import sys

from absl import flags

from scaling.cli import common

DESCRIPTION = """Runs a whole study end to end: trains its sweeps (skipping completed runs and
resuming interrupted ones from their latest checkpoint), evaluates every checkpoint that has no
evaluation yet, and writes the report (ROOT/report/experiment.md with the measured numbers against
the expected outcome, report.md with the generic scaling analysis, figures/, experiment.json).
Interrupt it (Ctrl-C / SIGTERM: each running run saves a checkpoint) and run the same command again
to continue where it stopped.

usage: scaling experiment --list
       scaling experiment NAME --root DIR [--scale small] [--backend local|ray] [--workers N]

examples:
  scaling experiment quickstart --root runs/quickstart
  scaling experiment grokking --root runs/grokking --scale tiny
  scaling experiment sparse_parity --root /shared/fs/sp --scale large --backend ray --address HOST:6379"""

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3


def define_flags(argv: list[str]) -> flags.FlagValues:
    """Returns the FlagValues of `scaling experiment`."""
    from experiments.common import DEFAULT_SCALE, SCALES

    fv = common.new_flag_values(argv, with_config=False)
    flags.DEFINE_boolean("list", False, "List the experiments with a description and runtime.",
                         flag_values=fv)
    flags.DEFINE_string("root", None, "Experiment root directory (created; re-used to resume).",
                        flag_values=fv)
    flags.DEFINE_enum("scale", DEFAULT_SCALE, list(SCALES),
                      "tiny: seconds (tests); small: minutes on a 2-core CPU; medium: one GPU; "
                      "large: a GPU/TPU cluster.", flag_values=fv)
    flags.DEFINE_enum("backend", "local", ["local", "ray"],
                      "local: subprocesses on this machine; ray: Ray tasks on a cluster.",
                      flag_values=fv)
    flags.DEFINE_string("address", None, "Ray cluster address HOST:PORT (backend ray).",
                        flag_values=fv)
    flags.DEFINE_integer("workers", 0, "Runs at a time (0: 2 on the CPU scales, 1 on medium/large "
                         "with the local backend, as many as the cluster allows with Ray).",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_string("tfds_data_dir", "", "TFDS data directory of the text corpus (default: "
                        "TFDS's own; the stdlib corpus is built there on first use).",
                        flag_values=fv)
    flags.DEFINE_string("tfds_name", "", "Text corpus of the LM experiments (default: "
                        "stdlib_corpus; required for --scale=large).", flag_values=fv)
    flags.DEFINE_integer("bootstrap", None, "Bootstrap resamples of the analysis (default per "
                         "scale: 8 tiny, 200 small, 400 medium, 1000 large).", lower_bound=0,
                         flag_values=fv)
    flags.DEFINE_boolean("dry_run", False, "Print each sweep's run table and exit.",
                         flag_values=fv)
    flags.DEFINE_boolean("analyze_only", False, "Only (re)write the report from the runs there.",
                         flag_values=fv)
    flags.DEFINE_boolean("progress", True, "Show progress bars over runs.", flag_values=fv)
    return fv


def list_text() -> str:
    """Returns the `--list` table: name, one-line description, expected runtime (default scale)."""
    import experiments
    from experiments.common import DEFAULT_SCALE

    mods = experiments.all_experiments()
    width = max(len(m.NAME) for m in mods)
    lines = [f"experiments (runtime at --scale={DEFAULT_SCALE}; see experiments/README.md):", ""]
    for m in mods:
        lines.append(f"  {m.NAME.ljust(width)}  {m.DESCRIPTION}")
        lines.append(f"  {''.ljust(width)}  runtime: {m.EXPECTED_RUNTIME[DEFAULT_SCALE]}; tiny: "
                     f"{m.EXPECTED_RUNTIME['tiny']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Runs `scaling experiment`; returns the exit code (0 done, 1 a run failed, 2 usage, 3 interrupted)."""
    from scaling.cli.sweep import normalize_argv

    argv = normalize_argv(argv)
    fv = define_flags(argv)
    rest = common.parse(fv, argv, DESCRIPTION)
    if rest is None:
        return 0
    if fv.list:
        print(list_text())
        return 0
    if len(rest) != 1 or (fv.root is None and not fv.dry_run):
        return common.fail("give one experiment NAME and --root DIR (or --list; see --help)")
    common.setup_logging(fv.verbose)
    import experiments
    from experiments import common as exp_common
    from scaling.sweeps import spec

    try:
        module = experiments.get(rest[0])
    except KeyError as err:
        return common.fail(err.args[0])

    def run() -> int:
        try:
            if fv.dry_run:
                from scaling.sweeps import runner

                for name, sweep in module.sweeps(fv.scale, data_dir=fv.tfds_data_dir,
                                                 tfds_name=fv.tfds_name).items():
                    skipped: list[str] = []
                    runs = spec.expand(sweep, skipped)
                    print(f"== {name}: {len(runs)} runs, {sum(r.c for r in runs):.3e} FLOPs")
                    print(runner.plan_table(runs))
                    for line in skipped:  # sizes left out of a budget (min_steps, isoflop_window)
                        print(f"skipped: {line}")
                return 0
            from scaling.cli.sweep import check_root

            check_root(fv.root)
            result = exp_common.run_experiment(
                module, fv.root, fv.scale, backend=fv.backend, workers=fv.workers,
                address=fv.address, data_dir=fv.tfds_data_dir, tfds_name=fv.tfds_name,
                bootstrap=fv.bootstrap, analyze_only=fv.analyze_only, progress=fv.progress)
        except KeyboardInterrupt:  # during evaluation or analysis (training handles it itself)
            print(f"{module.NAME}: interrupted; run the same command again to continue",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        t = result["timings"]
        if result["status"] == "interrupted":
            print(f"{module.NAME}: interrupted after {t.get('train_s', 0):.0f} s of training; run "
                  "the same command again to continue", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"{module.NAME} ({fv.scale}): {result['status']} in {t['total_s']:.0f} s "
              f"(train {t.get('train_s', 0):.0f} s, evaluate {t.get('evaluate_s', 0):.0f} s, "
              f"analyze {t['analyze_s']:.0f} s); report: {result['report']}")
        return 0 if result["status"] == "completed" else EXIT_FAILED

    return common.run_with_errors(run, fv.debug)
