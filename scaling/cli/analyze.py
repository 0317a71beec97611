"""`scaling analyze`: build a Markdown + HTML report from sweep roots / run directories."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from scaling.cli import common

DESCRIPTION = """\
Build a report from one or more sweep roots (directories with manifest.json) or run directories.

Writes REPORT_DIR/report.md, report.html, summary.json and figures/*.png|pdf: loss vs compute with
the frontier (approach 1), IsoFLOP curves (approach 2), the L(N, D) fit and residuals (approach 3)
with a backtest, emergence curves (discrete and continuous metrics), per-subtask curves and an
ablation forest plot. Each section appears only when its data exists; the report lists the skipped
ones and why. Missing or corrupt run files are reported as warnings and skipped.

Convention: N is the non-embedding parameter count and C = D x the run's own measured FLOPs per
token (run.json); --params total and --compute 6ND ask for the others. Only completed runs enter
the fits: failed, diverged, interrupted and running runs are listed with their state and error
(--include-incomplete fits them too). IsoFLOP budgets come from the sweep's budget axis (C_budget).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `scaling analyze` arguments to parser."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "example:\n  scaling analyze runs/isoflop runs/ablation --out reports/may"
    parser.add_argument("roots", nargs="+", metavar="ROOT", help="sweep root or run directory")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="output directory")
    parser.add_argument("--bootstrap", type=common.non_negative_int, default=200, metavar="K",
                        help="bootstrap resamples for CIs (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--arm-axis", metavar="AXIS",
                        help="sweep axis holding ablation arms (default: detected; size, data, compute "
                             "and seed axes never are); --arm-axis '' for none: every run enters the "
                             "scaling sections and the report has no ablation section")
    parser.add_argument("--subtask-threshold", type=common.unit_float, default=0.9,
                        help="metric value at which a subtask counts as learned (default 0.9)")
    parser.add_argument("--title", default="Scaling analysis", help="report title")
    parser.add_argument("--params", choices=("nonembed", "total"), default="nonembed",
                        help="which parameter count is N in every fit (default: nonembed)")
    parser.add_argument("--compute", choices=("measured", "6ND"), default="measured",
                        help="C = D x the run's measured FLOPs per token (default), or 6ND")
    parser.add_argument("--include-incomplete", action="store_true",
                        help="fit failed, diverged, interrupted and running runs too (their last "
                             "logged values); by default they are listed and left out")
    parser.add_argument("--loss-metric", choices=("val/loss", "val/bits_per_byte"),
                        default="val/loss",
                        help="the loss every fit uses: val/loss (nats/token; train/loss when no run "
                             "was evaluated) or val/bits_per_byte (compares runs with different "
                             "tokenizers)")
    parser.add_argument("--budget-axis", default="C_budget", metavar="AXIS",
                        help="run axis holding each run's IsoFLOP budget in FLOPs (default C_budget); "
                             "runs without it are grouped by measured C within 5%%")


def run(args: argparse.Namespace) -> int:
    """Runs `scaling analyze`; returns the exit status (0 ok, 2 bad input)."""
    import logging
    import pathlib

    from analysis.report import build_report

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    missing = [r for r in args.roots if not pathlib.Path(r).exists()]
    if missing:
        print(f"scaling analyze: error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    path = build_report(args.roots, args.out, bootstrap=args.bootstrap, seed=args.seed,
                        arm_axis=args.arm_axis, subtask_threshold=args.subtask_threshold, title=args.title,
                        params=args.params, compute=args.compute, include_incomplete=args.include_incomplete,
                        budget_axis=args.budget_axis, loss_metric=args.loss_metric)
    print(f"report written to {path} (and {path.with_suffix('.html').name})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit status of `scaling analyze`; argv[0] is the program name (as sys.argv)."""
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog=argv[0] if argv else "scaling analyze")
    add_arguments(parser)
    return run(parser.parse_args(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
