"""Divergence policy: an on-device record of non-finite steps, read only where the host syncs.

Every train step returns `metrics["nonfinite"]`, a bit mask of the non-finite quantities (see
`step.NONFINITE_BITS`). `Guard.note` folds it into a three-number device array (first bad step,
its mask, number of bad steps) without waiting for the device; `Guard.check` reads that array at
the points where the loop already syncs (logging) and always before a checkpoint is written, and
applies `train.on_nonfinite`: stop (raise a FloatingPointError, see `divergence_error`), skip (the step already kept the old
state; fail past `train.max_skipped_steps`) or rewind (the loop restores the latest checkpoint).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from scaling.train import step as step_lib


def divergence_error(step: int, quantities: list[str], why: str = "") -> FloatingPointError:
    """Returns the error for a non-finite step the policy cannot absorb, with `.step` and
    `.quantities` set. A plain FloatingPointError: the sweep runner and its logs recognize a
    diverged run by that name."""
    err = FloatingPointError(f"non-finite {', '.join(quantities)} at step {step}{why}")
    err.step, err.quantities = step, quantities
    return err


@jax.jit
def _note(record_3: jax.Array, step: jax.Array, mask: jax.Array) -> jax.Array:
    """Returns the record [first bad step, its mask, bad steps] updated with one step's mask."""
    bad = mask != 0
    first = (record_3[0] == 0) & bad
    return jnp.stack([jnp.where(first, step, record_3[0]),
                      jnp.where(first, mask, record_3[1]),
                      record_3[2] + bad.astype(jnp.int32)])


@dataclasses.dataclass(frozen=True)
class Event:
    """The first non-finite step since the last reset: its step, quantities and the bad-step count."""

    step: int
    quantities: list[str]
    count: int


class Guard:
    """Tracks non-finite steps on device and applies the divergence policy when read."""

    def __init__(self, policy: str, max_skipped_steps: int):
        self.policy = policy
        self.max_skipped_steps = max_skipped_steps
        self.bad_steps = 0  # non-finite steps seen by the last `check` (since the last reset)
        self.reset()

    def reset(self) -> None:
        """Forgets the non-finite steps seen so far (after a rewind)."""
        self._record_3 = jnp.zeros((3,), jnp.int32)

    def note(self, step: int, nonfinite_mask: jax.Array) -> None:
        """Folds one step's non-finite mask into the device-side record (no host sync)."""
        self._record_3 = _note(self._record_3, jnp.int32(step), nonfinite_mask)

    def read(self) -> Event | None:
        """Returns the first non-finite step since the last reset, or None (waits for the device)."""
        first, mask, count = (int(v) for v in jax.device_get(self._record_3))
        if count == 0:
            return None
        return Event(first, step_lib.nonfinite_names(mask), count)

    def check(self) -> Event | None:
        """Applies the policy: returns an Event to rewind for, None to go on, or raises."""
        event = self.read()
        self.bad_steps = event.count if event is not None else 0
        if event is None:
            return None
        if self.policy == "stop":
            raise divergence_error(event.step, event.quantities,
                                   " (train.on_nonfinite='stop'; the latest checkpoint is the "
                                   "last finite state)")
        if self.policy == "skip":
            if event.count > self.max_skipped_steps:
                raise divergence_error(
                    event.step, event.quantities,
                    f" and {event.count} steps skipped in all, more than "
                    f"train.max_skipped_steps={self.max_skipped_steps}")
            return None
        return event
