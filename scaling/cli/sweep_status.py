"""`scaling sweep-status DIR`: a table of a sweep's runs with status, step and last loss."""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any

from scaling.cli import common

DESCRIPTION = """Argument: DIR, a sweep root made by `scaling sweep`.

Shows the runs of the sweep in DIR: name, status, step / total steps, last logged training loss,
last validation loss (val/loss in eval.jsonl, @ its step), N (non-embedding parameters),
D (tokens), C (training FLOPs), loss spikes, attempts and the error of failed runs, read from
DIR/manifest.json and each run directory's status.json, metrics.jsonl and eval.jsonl. A run whose
status.json says "running" while no worker process holds it (the worker was killed) shows as
"stale"; the next `scaling sweep` resumes it. It only reads files, so it is safe while the sweep
runs.

spikes: "T/V (R)": T rises of the training loss (rolling mean over 10 logged steps) and V rises of
the validation loss more than 0.5 nats above their running minimum after warmup, and R the
largest rise of either (nats); see analysis/spikes.py.

examples:
  scaling sweep-status sweeps/isoflop
  scaling sweep-status sweeps/isoflop --watch 10
  scaling sweep-status sweeps/isoflop --json > status.json"""


def collect(root: str | pathlib.Path) -> dict[str, Any]:
    """Returns {'root', 'name', 'runner_active', 'runs': [per-run status rows]} of a sweep root."""
    from analysis import spikes as spikes_lib
    from scaling.sweeps import manifest as manifest_lib

    root = pathlib.Path(root)
    manifest = manifest_lib.read_manifest(root)
    if not manifest["runs"] and not manifest_lib.manifest_path(root).exists():
        raise FileNotFoundError(f"{root} has no manifest.json (not a sweep root?)")
    rows = []
    for entry in manifest["runs"]:
        run_dir = root / entry["dir"]
        status = manifest_lib.run_status(run_dir)
        metrics = manifest_lib.last_metrics(run_dir) or {}
        val = manifest_lib.last_metrics(run_dir, name="eval.jsonl", metric="val/loss") or {}
        run = manifest_lib.read_json(run_dir / "run.json") or {}
        spikes = spikes_lib.run_spikes(run_dir) if run_dir.is_dir() else None
        state = status["status"]
        error = status.get("error") or entry.get("error")
        if state == "running" and not manifest_lib.run_process_alive(run_dir):
            state = "stale"  # the process that wrote "running" is gone (killed, or lost)
            error = error or ("status.json says running but no process holds the run; the next "
                              "`scaling sweep` resumes it")
        rows.append({
            "name": entry["name"], "id": entry["id"], "status": state,
            "manifest_status": entry.get("status"),
            "step": int(metrics.get("step", status.get("step") or 0)),
            "num_steps": int(run.get("num_steps", entry.get("steps", 0)) or 0),
            "loss": metrics.get("loss"), "val_loss": val.get("value"),
            "val_step": val.get("step"), "n": entry.get("n"), "d": entry.get("d"),
            "c": entry.get("c"), "attempts": entry.get("attempts", 0),
            "error": error, "dir": entry["dir"],
            "spikes": None if spikes is None else {k: v.to_dict() for k, v in spikes.items()},
            "spikes_cell": "-" if spikes is None else spikes_lib.format_spikes(spikes)})
    return {"root": str(root), "name": manifest.get("name", ""),
            "runner_active": runner_active(root), "runs": rows}


def runner_active(root: pathlib.Path) -> bool:
    """Returns True if a `scaling sweep` process currently holds the root's lock."""
    import fcntl

    from scaling.sweeps.runner import LOCK_NAME

    path = root / LOCK_NAME
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def render(info: dict[str, Any]) -> str:
    """Returns the status table and a one-line summary of counts by status."""
    from scaling.sweeps.runner import format_table
    from scaling.sweeps.spec import format_count

    header = ["name", "status", "step", "loss", "val_loss", "N", "D", "C", "spikes", "tries",
              "error"]
    rows = []
    counts: dict[str, int] = {}
    for r in info["runs"]:
        status = r["status"]
        counts[status] = counts.get(status, 0) + 1
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        val = "-" if r.get("val_loss") is None else f"{r['val_loss']:.4f}@{r['val_step']}"
        error = (r["error"] or "")[:60]
        rows.append([r["name"], status, f"{r['step']}/{r['num_steps']}", loss, val,
                     format_count(r["n"]) if r["n"] else "-",
                     format_count(r["d"]) if r["d"] else "-",
                     f"{r['c']:.2e}" if r["c"] else "-", r.get("spikes_cell", "-"),
                     str(r["attempts"]), error])
    table = format_table(header, rows)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    runner = "runner active" if info["runner_active"] else "no runner active"
    return f"{table}\n\n{len(rows)} runs: {summary} ({runner})"


def main(argv: list[str]) -> int:
    """Runs `scaling sweep-status`; returns the exit code (0, or 2 if DIR is not a sweep root)."""
    from absl import flags

    fv = common.new_flag_values(with_config=False)
    flags.DEFINE_boolean("json", False, "Print the rows as JSON instead of a table.",
                         flag_values=fv)
    flags.DEFINE_float("watch", 0.0, "Refresh every this many seconds until interrupted (0: once).",
                       lower_bound=0.0, flag_values=fv)
    from scaling.cli.sweep import normalize_argv

    rest = common.parse(fv, normalize_argv(argv), DESCRIPTION)
    if rest is None:
        return 0
    if len(rest) != 1:
        print("error: expected exactly one sweep root DIR (see --help)", file=sys.stderr)
        return 2
    try:
        while True:
            info = collect(rest[0])
            if fv.json:
                print(json.dumps(info, indent=2, default=str))
            else:
                print(render(info))
            if fv.watch <= 0:
                return 0
            time.sleep(fv.watch)
            print()
    except (FileNotFoundError, ValueError) as err:  # not a sweep root, or a corrupt manifest
        return common.fail(str(err), fv.debug)
    except KeyboardInterrupt:
        return 0
