"""Metric writers at the edge of training: JSONL (flushed per line) and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Iterable

import numpy as np


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.item() if np.ndim(value) == 0 else np.asarray(value).tolist()
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


def truncate_jsonl(path: pathlib.Path, max_step: int) -> None:
    """Rewrites `path` atomically keeping only rows with step <= max_step (and valid JSON)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill; it is re-logged after the resume
        if int(row.get("step", 0)) <= max_step:
            kept.append(line)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(k + "\n" for k in kept))
    os.replace(tmp, path)


def logged_steps(path: pathlib.Path) -> set[int]:
    """Returns the steps that have at least one complete row in the JSONL file at `path`."""
    if not path.exists():
        return set()
    steps = set()
    for line in path.read_text().splitlines():
        try:
            steps.add(int(json.loads(line)["step"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut by a kill holds no complete row
    return steps


class JsonlWriter:
    """Appends one JSON object per line to a file, flushed and fsync'd per write."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        """Appends `row` as one line."""
        self._file.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        """Appends each row as one line, all in one write call (one step's rows land together)."""
        text = "".join(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n"
                       for row in rows)
        if not text:
            return
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Closes the file."""
        self._file.close()


class TensorBoardWriter:
    """Scalars to TensorBoard event files under `logdir` (tensorboardX, no TensorFlow needed)."""

    def __init__(self, logdir: str | pathlib.Path):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir=str(logdir))

    def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        """Writes each finite scalar at `step`."""
        for key, value in scalars.items():
            value = _jsonable(value)
            if isinstance(value, (int, float)) and value is not None:
                self._writer.add_scalar(key, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self._writer.close()
