"""`scaling fit`: fit a scaling law (or an emergence curve) to a CSV file and print it with bootstrap CIs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Sequence

from scaling.cli import common

if TYPE_CHECKING:  # imported lazily at run time, so `scaling --help` stays fast
    import numpy as np
    import pandas as pd

LAW_CHOICES = ("power-n", "power-d", "power-c", "kaplan", "chinchilla", "data-constrained", "isoflop",
               "bnsl", "sigmoid", "emergence", "finetune-rectified", "finetune-power", "sparsity",
               "sparsity-linear", "transfer")
DIRECTION_CHOICES = ("increasing", "decreasing")
_DEFAULT_COLS = {"N": "N", "D": "D", "C": "C", "U": "U", "S": "S", "loss": "loss", "x": "x", "y": "y"}
_LAW_Y = {"bnsl": "y", "sigmoid": "y", "emergence": "y"}

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
  data-constrained
              Muennighoff et al. 2023, repeated data: L = E + A/N'^alpha + B/D'^beta with
              D' = U + U*R_D*(1-exp(-R_D/R_D*)), R_D = max(D/U-1, 0) repetitions of the U unique
              tokens, and N' the same in excess parameters over N_opt(U) (R_N*)
              (Huber delta=1e-3 on ln L, 900 starts)      (N, D, U -> loss)
  finetune-rectified
              Lin et al. 2024, fine-tuning: L = (A-E)/(1 + e^B*D^beta) + E, D fine-tuning
              examples (least squares on ln L)           (D -> loss)
  finetune-power
              the plain power law it is compared with: L = (1/(B*D^beta) + E)^alpha
              (least squares on ln L)                    (D -> loss)
  sparsity    Frantar et al. 2023, sparse models: L = (a*(1-S)^b + c)*N^-d + e*D^-f + g, S sparsity
              in [0, 1), N non-zero parameters (Huber delta=1e-3 on ln L, their language-model
              fit; 576 starts)                           (S, N, D -> loss)
  sparsity-linear
              the same law with Huber delta=0.01 on L itself (their ViT fit)
  transfer    Hernandez et al. 2021, effective data transferred: D_T = k*D_F^alpha*N^beta. Rows
              selected by --scratch are trained from scratch (a curve L = E + B*D^-beta per N,
              >= 4 data sizes each); the other rows are fine-tuned on D = D_F examples. D_T is the
              scratch data that reaches a fine-tuned loss, minus D_F; the plane is fitted to log D_T
              (bootstrap resamples both kinds of rows together; --cluster takes one column)
                                                          (N, D, loss + --scratch)
  isoflop     approach 2: per budget C, Akima minimum of ln loss over ln N; N* = k*C^a
                                                          (C, N, loss [, D])
  bnsl        y = a + b*x^-c0*(1+(x/d1)^(1/f1))^(-c1*f1)  (x -> y; least squares on ln(1+y))
  sigmoid     y = floor + (ceil-floor)*sigmoid(k*(log10 x - x0))   (x -> y; least squares)
  emergence   the emergence analysis of `scaling analyze` on any series (e.g. accuracy over
              checkpoints): a monotone sigmoid (--direction; ceil > floor, k > 0) against flat and
              linear models; prints the verdict ("transition" only if the sigmoid wins by BIC,
              the midpoint has 3 points on each side, the rise exceeds 3 x the residual SD and,
              with --chance, the level reached clears chance by --chance-margin), x0 = log10 x of
              the midpoint with its CI, and the late-decline flag   (x -> y)

Rows with a missing or non-finite value in a used column, or a non-positive value where the law
takes a logarithm, are dropped; the dropped and the duplicate rows are counted on stderr.

Units are those of the columns (N parameters, D tokens, C FLOPs, loss nats/token).
"""

EPILOG = """\
examples:
  scaling fit runs.csv --law chinchilla --columns N=params,D=tokens,loss=val_loss --bootstrap 200
  scaling fit isoflop.csv --law isoflop --columns C=flops,N=n,loss=loss --group config
  scaling fit addition.csv --law bnsl --columns x=train_dataset_size,y=test_cross_entropy --json fit.json
  scaling fit repeats.csv --law data-constrained --columns N=params,D=tokens,U=unique_tokens,loss=loss
  scaling fit flan.csv --law finetune-rectified --columns D=examples,loss=loss --group model
  scaling fit sparse.csv --law sparsity --columns S=sparsity,N=nonzero_params,D=tokens,loss=loss
  scaling fit transfer.csv --law transfer --scratch arm=scratch --cluster seed
  scaling fit mmlu.csv --law emergence --columns x=flops,y=accuracy --chance 0.25 --group model
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `scaling fit` arguments to parser."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("csv", metavar="FILE.csv", help="input table, one row per run or checkpoint")
    parser.add_argument("--law", required=True, choices=LAW_CHOICES, help="functional form to fit")
    parser.add_argument("--columns", default="", metavar="ROLE=COL,...",
                        help="map roles N, D, C, U, S, loss, x, y to CSV column names "
                             "(default: columns named N, D, C, U, S, loss, x, y)")
    parser.add_argument("--group", metavar="COL", help="fit each value of this column separately")
    parser.add_argument("--bootstrap", type=common.non_negative_int, default=200, metavar="K",
                        help="bootstrap resamples for the CIs (0: none; default 200)")
    parser.add_argument("--cluster", metavar="COL[,COL...]",
                        help="bootstrap whole clusters of rows sharing these columns (e.g. run,seed), so "
                             "the checkpoints of one run move together (default: rows)")
    parser.add_argument("--level", type=common.open_unit_float, default=0.95,
                        help="CI level in (0, 1) (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--query", metavar="COL=VALUE", action="append", default=[],
                        help="keep only rows where column COL equals VALUE (repeatable)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    tr = parser.add_argument_group("transfer (--law transfer)")
    tr.add_argument("--scratch", metavar="COL=VALUE", default=None,
                    help="rows whose column COL equals VALUE are trained from scratch; every other row "
                         "is fine-tuned (its D is the fine-tuning data size D_F)")
    em = parser.add_argument_group("emergence (--law emergence)")
    em.add_argument("--direction", choices=DIRECTION_CHOICES, default=None,
                    help="which way the metric improves (default increasing; decreasing for error rates)")
    em.add_argument("--chance", type=float, default=None, metavar="Y",
                    help="the task's chance level in the units of y; a transition must clear it")
    em.add_argument("--chance-margin", type=float, default=None, metavar="DY",
                    help="how far beyond chance the level reached must be (units of y; default 0.05)")


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


def _roles(law: str, cols: dict[str, str], columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Returns (roles used by the law, roles that must be positive); optional D only if present."""
    if law == "isoflop":
        used = ["C", "N", "loss"] + (["D"] if cols["D"] in columns else [])
        return used, used
    if law in ("sigmoid", "emergence"):
        return ["x", "y"], ["x"]
    if law == "transfer":
        return ["N", "D", "loss"], ["N", "D", "loss"]
    from analysis.catalog import get_law

    lw = get_law(_law_name(law, cols, columns))
    y_role = _LAW_Y.get(law, "loss")
    positive = [r for r in lw.inputs if r != "S"]  # sparsity S lies in [0, 1), checked in _fit_one
    return [*lw.inputs, y_role], positive + ([y_role] if lw.target == "log" else [])


def _law_name(law: str, cols: dict[str, str], columns: Sequence[str]) -> str:
    if law == "kaplan":
        return "kaplan-nd" if cols["D"] in columns else "kaplan-n"
    return law


def clean_rows(df: pd.DataFrame, law: str, cols: dict[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """Returns (rows the law can use, warning lines counting the dropped and the duplicate rows).

    A row is dropped for a missing or non-finite value in a used column, or a non-positive value
    where the law takes a logarithm; duplicates (same values in every used column) are kept.
    """
    import numpy as np

    used, positive = _roles(law, cols, list(df.columns))
    for role in used:
        if cols[role] not in df.columns:
            raise ValueError(f"column {cols[role]!r} (role {role}) not in the CSV; columns: {list(df.columns)}")
    names = [cols[r] for r in used]
    vals = {r: numeric_column(df[cols[r]], cols[r]) for r in used}
    finite = np.all([np.isfinite(v) for v in vals.values()], axis=0)
    pos = np.all([vals[r] > 0 for r in positive], axis=0) if positive else np.ones(len(df), bool)
    keep = finite & pos
    notes = []
    n_nonfinite, n_nonpos = int(np.sum(~finite)), int(np.sum(finite & ~pos))
    if n_nonfinite or n_nonpos:
        parts = []
        if n_nonfinite:
            parts.append(f"{n_nonfinite} with a missing or non-finite value in {', '.join(names)}")
        if n_nonpos:
            pnames = ", ".join(cols[r] for r in positive)
            parts.append(f"{n_nonpos} with a non-positive value in {pnames} (the law takes logarithms)")
        notes.append(f"dropped {n_nonfinite + n_nonpos} of {len(df)} rows: {'; '.join(parts)}")
    out = df[keep]
    n_dup = int(out.duplicated(subset=names).sum())
    if n_dup:
        notes.append(f"{n_dup} duplicate rows (same {', '.join(names)} as an earlier row); "
                     f"kept, each counts as a point of the fit")
    return out, notes


def numeric_column(s: pd.Series, name: str) -> np.ndarray:
    """Returns column s as a float array; a non-numeric entry is an error naming the column."""
    import numpy as np
    import pandas as pd

    v = pd.to_numeric(s, errors="coerce")
    bad = v.isna() & s.notna()
    if bad.any():
        raise ValueError(f"column {name!r} has non-numeric values, e.g. {s[bad].iloc[0]!r}")
    return v.to_numpy(dtype=float, na_value=np.nan)


def _fit_one(df, law: str, cols: dict[str, str], args: argparse.Namespace) -> dict:
    from analysis.catalog import get_law
    from analysis.fit import fit_law
    from analysis.isoflop import approach2

    def col(role: str):
        return numeric_column(df[cols[role]], cols[role])

    if law == "isoflop":
        D = col("D") if cols["D"] in df.columns else None
        res = approach2(col("C"), col("N"), col("loss"), D, bootstrap=args.bootstrap, seed=args.seed,
                        level=args.level)
        return {"law": "isoflop", **res.to_dict(),
                "optima": res.optima.to_dict(orient="records")}
    if law == "emergence":
        from analysis.emergence import fit_emergence

        res = fit_emergence(col("x"), col("y"), direction=args.direction or "increasing",
                            chance=args.chance,
                            chance_margin=0.05 if args.chance_margin is None else args.chance_margin,
                            bootstrap=args.bootstrap, seed=args.seed, level=args.level)
        return {"law": "emergence", "formula": res.fit.law.formula, "x": cols["x"], "y": cols["y"],
                **res.to_dict()}
    if law == "transfer":
        return _fit_transfer(df, cols, args)
    import numpy as np
    lw = get_law(_law_name(law, cols, list(df.columns)))
    X = np.column_stack([col(r) for r in lw.inputs])
    if "S" in lw.inputs:
        S = X[:, lw.inputs.index("S")]
        if np.any((S < 0) | (S >= 1)):
            raise ValueError(f"column {cols['S']!r} (role S, sparsity) must lie in [0, 1); got values "
                             f"from {S.min():g} to {S.max():g}")
    groups = _cluster_labels(df, args)
    fit = fit_law(lw, X, col(_LAW_Y.get(law, "loss")), bootstrap=args.bootstrap, seed=args.seed,
                  level=args.level, groups=groups)
    return fit.to_dict()


def _cluster_labels(df: pd.DataFrame, args: argparse.Namespace) -> np.ndarray | None:
    """Returns the --cluster columns of each row as strings (rows x columns), or None without it."""
    if not getattr(args, "cluster", None):
        return None
    names = [c.strip() for c in args.cluster.split(",") if c.strip()]
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise ValueError(f"--cluster: column(s) {missing} not in the CSV; columns: {list(df.columns)}")
    return df[names].astype(str).to_numpy()


def _scratch_mask(df: pd.DataFrame, spec: str | None) -> np.ndarray:
    """Returns a boolean array: True for the rows --scratch COL=VALUE selects."""
    if not spec or "=" not in spec:
        raise ValueError(f"--law transfer needs --scratch COL=VALUE (which rows are trained from scratch), "
                         f"got {spec!r}")
    name, value = spec.split("=", 1)
    if name not in df.columns:
        raise ValueError(f"--scratch: column {name!r} not in the CSV; columns: {list(df.columns)}")
    return (df[name].astype(str) == value).to_numpy()


def _fit_transfer(df: pd.DataFrame, cols: dict[str, str], args: argparse.Namespace) -> dict:
    import pandas as pd

    from analysis.transfer import fit_transfer

    scratch_rows = _scratch_mask(df, args.scratch)
    if not scratch_rows.any() or scratch_rows.all():
        raise ValueError(f"--scratch {args.scratch}: selects {int(scratch_rows.sum())} of {len(df)} rows; "
                         f"the transfer law needs both from-scratch and fine-tuned rows")
    frame = pd.DataFrame({r: numeric_column(df[cols[r]], cols[r]) for r in ("N", "D", "loss")})
    labels = _cluster_labels(df, args)
    groups = None
    if labels is not None:
        frame["cluster"] = ["|".join(row) for row in labels]
        groups = "cluster"
    fit = fit_transfer(frame[scratch_rows], frame[~scratch_rows].rename(columns={"D": "D_F"}),
                       bootstrap=args.bootstrap, groups=groups, seed=args.seed, level=args.level)
    return fit.to_dict() | {"n_scratch": int(scratch_rows.sum()), "n_finetuned": int((~scratch_rows).sum())}


def _print_params(params: dict, ci: dict, level: float, head: str, out) -> None:
    """Prints one line per parameter: its estimate and, where there is one, its CI; returns None."""
    pct = int(round(100 * level))
    for k, v in params.items():
        c = ci.get(k)
        c_s = f"  {pct}% CI [{_fmt(c[0])}, {_fmt(c[1])}]" if c else ""
        print(f"{head}  {k:>8s} = {_fmt(v)}{c_s}", file=out)


def _print_transfer(r: dict, head: str, out) -> None:
    print(f"{head}transfer: {r['formula']} ({r['n_scratch']} from-scratch rows, {r['n_finetuned']} "
          f"fine-tuned rows)", file=out)
    _print_params(r["params"], r["ci"], r["level"], head, out)
    print(f"{head}  {r['n_points']} fine-tuned rows in the plane; left out: {r['n_below_floor']} below their "
          f"size's scratch floor, {r['n_no_transfer']} without positive transfer", file=out)
    if r["n_bootstrap"] or r["n_bootstrap_failed"]:
        unit = f"{r['n_groups']} clusters" if r["n_groups"] else "rows"
        print(f"{head}  bootstrap: {r['n_bootstrap']} replicates used, {r['n_bootstrap_failed']} failed; "
              f"resampling {unit}", file=out)
    for n, c in r["scratch"].items():
        print(f"{head}  scratch curve N={_fmt(float(n))}: E {_fmt(c['E'])}, B {_fmt(c['B'])}, "
              f"beta {_fmt(c['beta'])}", file=out)


def _print_emergence(r: dict, head: str, out) -> None:
    level = int(round(100 * r["level"]))
    lo, hi = r["x0_ci"]
    ci = f", {level}% CI [{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(lo) else ""
    print(f"{head}emergence of {r['y']} vs {r['x']} ({r['direction']}, {r['n_points']} points): "
          f"{r['verdict']}", file=out)
    where = "inside" if r["x0_in_range"] else "outside"
    print(f"{head}  x0 = {_fmt(r['x0_log10'])} (log10 {r['x']}){ci}; {r['x']} = {_fmt(r['x_emergence'])}, "
          f"{where} the data", file=out)
    _print_params(r["params"], r["ci"], r["level"], head, out)
    chance = "" if r["chance"] is None else f", chance {_fmt(r['chance'])} (margin {_fmt(r['chance_margin'])})"
    print(f"{head}  rise over the data {_fmt(r['rise'])}, residual SD {_fmt(r['residual_sd'])}, "
          f"level at the largest x {_fmt(r['level_end'])}{chance}", file=out)
    if r["late_decline"]:
        print(f"{head}  late decline: yes (best {_fmt(r['peak_y'])} at {r['x']} = {_fmt(r['peak_x'])}, "
              f"then {_fmt(r['last_y'])} at the end; drop {_fmt(r['drop'])})", file=out)
    else:
        print(f"{head}  late decline: no", file=out)


def _print(result: dict, label: str | None, out) -> None:
    head = f"[{label}] " if label else ""
    if result["law"] == "emergence":
        _print_emergence(result, head, out)
        return
    if result["law"] == "transfer":
        _print_transfer(result, head, out)
        return
    if result["law"] == "isoflop":
        for key, name in (("N_opt", "N*(C) = k*C^a"), ("D_opt", "D*(C) = k*C^b")):
            r = result[key]
            if r is None:  # no D column: D* is not derived from an assumed FLOPs-per-token rule
                print(f"{head}{name}: not fitted (give a D column to fit it)", file=out)
                continue
            ci = (f" [{_fmt(r['ci_a'][0])}, {_fmt(r['ci_a'][1])}]" if all(map(math.isfinite, r["ci_a"]))
                  else "")
            print(f"{head}{name}: exponent {_fmt(r['a'])}{ci}, "
                  f"k {_fmt(r['k'])}, R^2 {_fmt(r['r2'])}, {r['n']} budgets", file=out)
        print(f"{head}budgets kept {result['budgets_kept']}/{result['budgets_total']}", file=out)
        return
    print(f"{head}{result['law']}: {result['formula']}", file=out)
    _print_params(result["params"], result["ci"], result["level"], head, out)
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
        if args.law != "emergence":
            for flag, v in (("--direction", args.direction), ("--chance", args.chance),
                            ("--chance-margin", args.chance_margin)):
                if v is not None:
                    raise ValueError(f"{flag} applies only to --law emergence")
        if args.law != "transfer" and args.scratch is not None:
            raise ValueError("--scratch applies only to --law transfer")
        df = pd.read_csv(args.csv)
        for q in args.query:
            if "=" not in q:
                raise ValueError(f"--query: expected COL=VALUE, got {q!r}")
            k, v = q.split("=", 1)
            if k not in df.columns:
                raise ValueError(f"--query: column {k!r} not in the CSV; columns: {list(df.columns)}")
            df = df[df[k].astype(str) == v]
        if args.group and args.group not in df.columns:
            raise ValueError(f"--group: column {args.group!r} not in the CSV; columns: {list(df.columns)}")
        groups = [(None, df)] if not args.group else [(str(k), g) for k, g in df.groupby(args.group, sort=True)]
        results = {}
        for label, g in groups:
            g, notes = clean_rows(g, args.law, cols)
            for note in notes:
                print(f"scaling fit: warning: {'[' + label + '] ' if label else ''}{note}", file=sys.stderr)
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
