"""The sweep root's manifest and the per-run files the runner reads (status, last metrics).

    sweep_root/manifest.json  {"version": 1, "name", "runs": [{"id", "name", "dir", "axes", "n",
                               "d", "c", "status", "attempts", ...}, ...]}
    sweep_root/sweep.json     the sweep declaration as expanded (for the record)
    sweep_root/runs/<name>/   one run directory per run (config.json, run.json, status.json, ...)

The manifest is only ever replaced whole: written to a temporary file in the same directory,
fsync'd, then `os.replace`d over the old one, so a kill at any moment leaves either the old or the
new manifest, never a torn one. Runs are keyed by id: merging a sweep's runs into an existing
manifest keeps every run it had (in order) and appends new ones, so nothing is duplicated or lost.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time
from typing import Any, Iterable

MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """A sweep root whose manifest.json cannot be read; the message names the file."""


STATUSES = ("pending", "running", "completed", "failed", "interrupted")


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """Writes `value` as JSON to `path` (fsync'd temporary file, os.replace); returns None."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """Returns the JSON object in `path`, or None if it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def manifest_path(root: str | os.PathLike) -> pathlib.Path:
    """Returns the path of the sweep root's manifest.json."""
    return pathlib.Path(root) / "manifest.json"


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Returns the manifest of `root` (an empty version-1 manifest if there is none).

    Raises ManifestError naming the file if it is not a version-1 manifest."""
    value = read_json(manifest_path(root))
    if value is None:
        if manifest_path(root).exists():
            raise ManifestError(f"{manifest_path(root)}: not a valid JSON object (move it away "
                                "to start the sweep root afresh)")
        return {"version": MANIFEST_VERSION, "runs": []}
    if value.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{manifest_path(root)}: unsupported manifest version "
                         f"{value.get('version')!r} (expected {MANIFEST_VERSION})")
    return value


def write_manifest(root: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Replaces root/manifest.json atomically with `manifest` (ids checked unique); returns None."""
    ids = [r["id"] for r in manifest["runs"]]
    if len(ids) != len(set(ids)):
        raise ValueError("manifest would contain duplicated run ids")
    manifest = dict(manifest, version=MANIFEST_VERSION, updated=time.time())
    write_json_atomic(manifest_path(root), manifest)


def merge(manifest: dict[str, Any], entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Returns `manifest` with `entries` merged by id (existing runs keep status and attempts)."""
    runs = [dict(r) for r in manifest.get("runs", [])]
    index = {r["id"]: i for i, r in enumerate(runs)}
    for entry in entries:
        if entry["id"] in index:
            old = runs[index[entry["id"]]]
            keep = {k: old[k] for k in ("status", "attempts") if k in old}
            old.update(entry)
            old.update(keep)
        else:
            index[entry["id"]] = len(runs)
            runs.append(dict(entry))
    return dict(manifest, runs=runs)


def run_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Returns run_dir/status.json ({'status', 'step', 'error'}), 'pending' if it has none."""
    value = read_json(pathlib.Path(run_dir) / "status.json")
    if value is None or value.get("status") not in STATUSES:
        return {"status": "pending", "step": 0, "error": None}
    return value


def last_metrics(run_dir: str | os.PathLike, max_bytes: int = 65536,
                 name: str = "metrics.jsonl", metric: str | None = None) -> dict[str, Any] | None:
    """Returns the last complete row of run_dir/metrics.jsonl (step, loss, ...), or None.

    With `name`='eval.jsonl' and `metric`='val/loss': the last evaluation row of that metric.
    """
    path = pathlib.Path(run_dir) / name
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and (metric is None or row.get("metric") == metric):
            return row
    return None


def worker_lock_path(run_dir: str | os.PathLike, process_id: int = 0) -> pathlib.Path:
    """Returns the file a worker process of the run holds an exclusive flock on while it runs."""
    return pathlib.Path(run_dir) / f".lock.p{process_id}"


def run_process_alive(run_dir: str | os.PathLike) -> bool:
    """Returns True if a live worker process holds the run's lock (process 0's)."""
    import fcntl

    path = worker_lock_path(run_dir)
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
