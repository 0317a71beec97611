"""Loss-spike detection: rises of a loss curve above its running minimum after warmup.

A spike is a maximal stretch of steps (after warmup) where the loss stands more than `threshold`
nats above the lowest value seen since warmup ended; its size is the largest rise in the stretch.
Validation loss (eval.jsonl `val/loss`) is judged as logged. The per-batch training loss is too
noisy at small batches (about 1k tokens per step) to judge point by point, so it is first smoothed
by a trailing rolling mean over `window` logged rows.

    stats = detect_spikes(steps, loss, warmup_steps=100, threshold=0.5)
    per_run = run_spikes(run_dir)           # {'train': SpikeStats, 'val': SpikeStats}
    table = spike_table(sweep_root)         # one row per run, for reports
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis import runs as runs_lib

__all__ = ["SpikeStats", "DEFAULT_THRESHOLD", "DEFAULT_WINDOW", "smooth", "detect_spikes",
           "run_spikes", "spike_table", "format_spikes"]

DEFAULT_THRESHOLD = 0.5  # nats above the running minimum
DEFAULT_WINDOW = 10  # logged training-loss rows in the trailing rolling mean


@dataclasses.dataclass(frozen=True)
class SpikeStats:
    """Spikes of one loss curve: count above the threshold, the largest rise, where it happened."""

    count: int  # stretches above running-min + threshold
    max_rise: float  # largest rise above the running minimum after warmup (nats; 0 if none)
    max_step: int | None  # step of the largest rise (None if no point after warmup)
    points: int  # points judged (after warmup)
    threshold: float  # nats

    def to_dict(self) -> dict[str, Any]:
        """Returns the stats as a JSON-serializable dict (rises in nats)."""
        return dataclasses.asdict(self)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Returns the trailing rolling mean of `values` over `window` points (units of values).

    A non-finite value stays non-finite in the output, so smoothing cannot hide a divergence.
    """
    if window < 1:
        raise ValueError(f"smooth: window={window} must be >= 1")
    raw = np.asarray(values, dtype=float)
    mean = pd.Series(raw).rolling(window, min_periods=1).mean().to_numpy()
    return np.where(np.isfinite(raw), mean, raw)  # a non-finite loss stays visible


def detect_spikes(steps: Sequence[float], values: Sequence[float], *, warmup_steps: float = 0,
                  threshold: float = DEFAULT_THRESHOLD) -> SpikeStats:
    """Returns the count and largest size (nats) of rises above the running minimum after warmup.

    Points at steps <= `warmup_steps` are ignored; a non-finite loss after warmup counts as an
    unbounded rise (max_rise = inf).
    """
    if threshold <= 0:
        raise ValueError(f"detect_spikes: threshold={threshold} must be > 0 (nats)")
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    if s.shape != v.shape:
        raise ValueError(f"detect_spikes: steps {s.shape} and values {v.shape} differ in shape")
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    keep = s > warmup_steps
    s, v = s[keep], v[keep]
    if len(v) == 0:
        return SpikeStats(0, 0.0, None, 0, float(threshold))
    v = np.where(np.isfinite(v), v, np.inf)  # NaN (divergence) counts as an unbounded rise
    running_min = np.minimum.accumulate(v)
    with np.errstate(invalid="ignore"):
        rise = np.where(np.isinf(v), np.inf, v - running_min)
    above = rise > threshold
    count = int(np.sum(above[1:] & ~above[:-1]) + int(above[0]))
    i = int(np.argmax(rise))
    return SpikeStats(count=count, max_rise=float(max(rise[i], 0.0)), max_step=int(s[i]),
                      points=int(len(v)), threshold=float(threshold))


def _warmup_of(run_dir: pathlib.Path) -> float:
    path = run_dir / "config.json"
    if not path.exists():
        return 0.0
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    return float(config.get("optim", {}).get("warmup_steps", 0) or 0)


def run_spikes(run_dir: str | os.PathLike, *, window: int = DEFAULT_WINDOW,
               threshold: float = DEFAULT_THRESHOLD,
               warmup_steps: float | None = None) -> dict[str, SpikeStats]:
    """Returns {'train': smoothed training-loss spikes, 'val': validation-loss spikes} of a run.

    `warmup_steps` None: the run's config.json optim.warmup_steps. A run without rows of a curve
    (or without metrics.jsonl: not started) gets SpikeStats with 0 points for it.
    """
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists():  # not started yet: nothing to judge
        empty = detect_spikes([], [], threshold=threshold)
        return {"train": empty, "val": empty}
    warmup = _warmup_of(run_dir) if warmup_steps is None else float(warmup_steps)
    df, _ = runs_lib.load_run(run_dir)
    out = {}
    for key, metric, win in (("train", "train/loss", window), ("val", "val/loss", 1)):
        sub = df[df["metric"] == metric].sort_values("step")
        values = smooth(sub["value"].to_numpy(), win) if len(sub) else np.zeros(0)
        out[key] = detect_spikes(sub["step"].to_numpy(), values, warmup_steps=warmup,
                                 threshold=threshold)
    return out


def spike_table(roots: str | os.PathLike | Sequence[str | os.PathLike], *,
                window: int = DEFAULT_WINDOW,
                threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Returns one row per run: run_name, run_dir, train/val spike counts and max rises (nats)."""
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    rows = []
    for root in roots:
        for run_dir, entry in runs_lib.find_run_dirs(root):
            stats = run_spikes(run_dir, window=window, threshold=threshold)
            rows.append({"run_name": entry.get("name") or run_dir.name, "run_dir": str(run_dir),
                         "train_spikes": stats["train"].count,
                         "train_max_rise": stats["train"].max_rise,
                         "val_spikes": stats["val"].count, "val_max_rise": stats["val"].max_rise,
                         "spike_threshold": threshold, "spike_window": window})
    cols = ["run_name", "run_dir", "train_spikes", "train_max_rise", "val_spikes",
            "val_max_rise", "spike_threshold", "spike_window"]
    return pd.DataFrame(rows, columns=cols)


def format_spikes(stats: dict[str, SpikeStats]) -> str:
    """Returns a compact cell 'train/val counts (largest rise in nats)', e.g. '1/0 (0.83)'."""
    rise = max(stats["train"].max_rise, stats["val"].max_rise)
    if stats["train"].points == 0 and stats["val"].points == 0:
        return "-"
    size = "inf" if math.isinf(rise) else f"{rise:.2f}"
    return f"{stats['train'].count}/{stats['val'].count} ({size})"
