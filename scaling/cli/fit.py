"""`scaling fit`: fit a scaling law to a CSV file and print its parameters with bootstrap CIs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Sequence

LAW_CHOICES = ("power-n", "power-d", "power-c", "kaplan", "chinchilla", "isoflop", "bnsl", "sigmoid")
_DEFAULT_COLS = {"N": "N", "D": "D", "C": "C", "loss": "loss", "x": "x", "y": "y"}
_LAW_Y = {"bnsl": "y", "sigmoid": "y"}

DESCRIPTION = """\
Fit a scaling law to the rows of a CSV file and print its parameters with bootstrap CIs.

Laws (inputs -> output column roles):
  power-n     L = E + A*N^-alpha                          (N -> loss)
  power-d     L = E + B*D^-beta                           (D -> loss)
  power-c     L = E + A*C^-alpha                          (C -> loss)
  kaplan      L = (N_c/N)^alpha_N, or with a D column
              L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D
  chinchilla  L = E + A/N^alpha + B/D^beta  (Hoffmann et al. approach 3: Huber delta=1e-3 on ln L,
              4,500-start grid, L-BFGS)                   (N, D -> loss)
  isoflop     approach 2: per budget C, Akima minimum of ln loss over ln N; N* = k*C^a
                                                          (C, N, loss [, D])
  bnsl        y = a + b*x^-c0*(1+(x/d1)^(1/f1))^(-c1*f1)  (x -> y; least squares on ln(1+y))
  sigmoid     y = floor + (ceil-floor)*sigmoid(k*(log10 x - x0))   (x -> y; least squares)

Units are those of the columns (N parameters, D tokens, C FLOPs, loss nats/token).
"""

EPILOG = """\
examples:
  scaling fit runs.csv --law chinchilla --columns N=params,D=tokens,loss=val_loss --bootstrap 200
  scaling fit isoflop.csv --law isoflop --columns C=flops,N=n,loss=loss --group config
  scaling fit addition.csv --law bnsl --columns x=train_dataset_size,y=test_cross_entropy --json fit.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `scaling fit` arguments to parser."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("csv", metavar="FILE.csv", help="input table, one row per run or checkpoint")
    parser.add_argument("--law", required=True, choices=LAW_CHOICES, help="functional form to fit")
    parser.add_argument("--columns", default="", metavar="ROLE=COL,...",
                        help="map roles N, D, C, loss, x, y to CSV column names "
                             "(default: columns named N, D, C, loss, x, y)")
    parser.add_argument("--group", metavar="COL", help="fit each value of this column separately")
    parser.add_argument("--bootstrap", type=int, default=200, metavar="K",
                        help="bootstrap resamples for the CIs (0: none; default 200)")
    parser.add_argument("--cluster", metavar="COL[,COL...]",
                        help="bootstrap whole clusters of rows sharing these columns (e.g. run,seed), so "
                             "the checkpoints of one run move together (default: rows)")
    parser.add_argument("--level", type=float, default=0.95, help="CI level (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--query", metavar="COL=VALUE", action="append", default=[],
                        help="keep only rows where column COL equals VALUE (repeatable)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")


def _parse_columns(spec: str) -> dict[str, str]:
    cols = dict(_DEFAULT_COLS)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise ValueError(f"--columns: expected ROLE=COL, got {part!r}")
        role, col = (s.strip() for s in part.split("=", 1))
        if role not in _DEFAULT_COLS:
            raise ValueError(f"--columns: unknown role {role!r} (roles: {', '.join(_DEFAULT_COLS)})")
        cols[role] = col
    return cols


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.6g}"


def _fit_one(df, law: str, cols: dict[str, str], args: argparse.Namespace) -> dict:
    from analysis.fit import fit_law
    from analysis.isoflop import approach2

    def col(role: str):
        name = cols[role]
        if name not in df.columns:
            raise ValueError(f"column {name!r} (role {role}) not in the CSV; columns: {list(df.columns)}")
        return df[name].to_numpy(float)

    if law == "isoflop":
        D = col("D") if cols["D"] in df.columns else None
        res = approach2(col("C"), col("N"), col("loss"), D, bootstrap=args.bootstrap, seed=args.seed,
                        level=args.level)
        return {"law": "isoflop", **res.to_dict(),
                "optima": res.optima.to_dict(orient="records")}
    if law == "kaplan":
        name = "kaplan-nd" if cols["D"] in df.columns else "kaplan-n"
    else:
        name = law
    from analysis.fit import get_law
    lw = get_law(name)
    X = [col(r) for r in lw.inputs]
    import numpy as np
    y = col(_LAW_Y.get(law, "loss"))
    groups = None
    if getattr(args, "cluster", None):
        names = [c.strip() for c in args.cluster.split(",") if c.strip()]
        missing = [c for c in names if c not in df.columns]
        if missing:
            raise ValueError(f"--cluster: column(s) {missing} not in the CSV; columns: {list(df.columns)}")
        groups = df[names].astype(str).to_numpy()
    fit = fit_law(lw, np.column_stack(X), y, bootstrap=args.bootstrap, seed=args.seed, level=args.level,
                  groups=groups)
    return fit.to_dict()


def _print(result: dict, label: str | None, out) -> None:
    head = f"[{label}] " if label else ""
    if result["law"] == "isoflop":
        for key, name in (("N_opt", "N*(C) = k*C^a"), ("D_opt", "D*(C) = k*C^b")):
            r = result[key]
            ci = (f" [{_fmt(r['ci_a'][0])}, {_fmt(r['ci_a'][1])}]" if all(map(math.isfinite, r["ci_a"]))
                  else "")
            print(f"{head}{name}: exponent {_fmt(r['a'])}{ci}, "
                  f"k {_fmt(r['k'])}, R^2 {_fmt(r['r2'])}, {r['n']} budgets", file=out)
        print(f"{head}budgets kept {result['budgets_kept']}/{result['budgets_total']}", file=out)
        return
    print(f"{head}{result['law']}: {result['formula']}", file=out)
    level = int(round(100 * result["level"]))
    for k, v in result["params"].items():
        ci = result["ci"].get(k)
        ci_s = f"  {level}% CI [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
        print(f"{head}  {k:>8s} = {_fmt(v)}{ci_s}", file=out)
    print(f"{head}  objective {_fmt(result['objective'])} (target {result['target']}, "
          f"delta {result['delta']}), RMS residual {_fmt(result['rms_residual'])}, "
          f"{result['n_points']} points ({result['n_distinct']} distinct), {result['n_starts']} starts, "
          f"{result['n_converged']} converged{'' if result['converged'] else ' (NOT the best one)'}", file=out)
    if result["n_bootstrap_requested"]:
        unit = f"{result['n_groups']} clusters" if result["n_groups"] else "rows"
        print(f"{head}  bootstrap: {result['n_bootstrap']}/{result['n_bootstrap_requested']} replicates "
              f"used, {result['n_bootstrap_failed']} failed ({result['n_bootstrap_degenerate']} with too "
              f"few distinct points); resampling {unit}; {result['n_bootstrap_starts']} starts per refit "
              f"({result['bootstrap_search']})", file=out)


def run(args: argparse.Namespace) -> int:
    """Runs `scaling fit`; returns the process exit status (0 ok, 2 bad input)."""
    import pandas as pd
    try:
        cols = _parse_columns(args.columns)
        df = pd.read_csv(args.csv)
        for q in args.query:
            k, v = q.split("=", 1)
            df = df[df[k].astype(str) == v]
        groups = [(None, df)] if not args.group else [(str(k), g) for k, g in df.groupby(args.group, sort=True)]
        results = {}
        for label, g in groups:
            res = _fit_one(g, args.law, cols, args)
            _print(res, label, sys.stdout)
            results[label or "all"] = res
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        print(f"scaling fit: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1, default=float)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit status of `scaling fit`; argv[0] is the program name (as sys.argv)."""
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog=argv[0] if argv else "scaling fit")
    add_arguments(parser)
    return run(parser.parse_args(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
