"""Preemption (SIGTERM): every process of a run saves the same step and stops there.

One process: a Python SIGTERM handler sets a flag that the loop reads after each step.

Several processes (`jax.distributed`): a host that sees SIGTERM at step s must not stop alone,
or the others enter the next collective train step (or the collective checkpoint save) without
it and hang. With JAX's preemption service (`jax_enable_preemption_service`, on by default) the
coordination service catches SIGTERM on any host, gathers every host's step and picks the next
step after the largest as the sync point; `reached(step)` is True on every host at exactly that
step (`jax.experimental.multihost_utils.reached_preemption_sync_point`, as MaxText does). The
Python handler is not installed then, since it would replace the service's. Without the service,
each process keeps its own flag and the processes agree every `sync_every` steps with a
cross-process max of the flags (`multihost_utils.process_allgather`; a collective, so every
process reaches it at the same steps).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)


class Preemption:
    """Turns SIGTERM into a stop step that all processes of the run agree on."""

    def __init__(self, sync_every: int = 1) -> None:
        self.requested = False  # this process received SIGTERM (not set under JAX's service)
        self.sync_every = max(1, int(sync_every))
        self.mode = "local"
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "Preemption":
        if jax.process_count() > 1:
            self.mode = ("service" if jax.config.jax_enable_preemption_service
                         else "allgather")
        if self.mode != "service":
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
                self._installed = True
            except ValueError:  # not the main thread: no signal handling
                self._installed = False
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.requested = True

    def stopped_before_start(self) -> bool:
        """Returns True if the run should end before its first step (one process only: with
        several, a local flag is not an agreement, and the first agreed step is saved)."""
        return self.mode == "local" and self.requested

    def reached(self, step: int) -> bool:
        """Returns True if the run stops at `step` (after saving it); the same on every process.

        Call it once per step, with the same steps on every process."""
        if self.mode == "local":
            return self.requested
        if self.mode == "service":
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        if step % self.sync_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flags))

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
