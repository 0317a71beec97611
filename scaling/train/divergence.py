"""Divergence policy: each step's on-device non-finite mask, read only where the host syncs.

Every train step returns `metrics["nonfinite"]`, a bit mask of the non-finite quantities (see
`step.NONFINITE_BITS`). `Guard.note` keeps the device scalar without waiting for the device;
`Guard.check(upto=s)` reads the masks of steps <= s where the loop fetches step s's metrics
anyway (logging, one step late) and always before a checkpoint is written, and
applies `train.on_nonfinite`: stop (raise a FloatingPointError, see `divergence_error`), skip (the step already kept the old
state; fail past `train.max_skipped_steps`) or rewind (the loop restores the latest checkpoint).
"""

from __future__ import annotations

import dataclasses

import jax

from scaling.train import step as step_lib


def divergence_error(step: int, quantities: list[str], why: str = "") -> FloatingPointError:
    """Returns the error for a non-finite step the policy cannot absorb, with `.step` and
    `.quantities` set. A plain FloatingPointError: the sweep runner and its logs recognize a
    diverged run by that name."""
    err = FloatingPointError(f"non-finite {', '.join(quantities)} at step {step}{why}")
    err.step, err.quantities = step, quantities
    return err


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
        self._unread: list[tuple[int, jax.Array]] = []
        self._first: tuple[int, int] | None = None  # (step, mask) of the first non-finite step
        self._count = 0

    def note(self, step: int, nonfinite_mask: jax.Array) -> None:
        """Keeps one step's non-finite mask (a device scalar) for the next read; no host sync,
        and no device work either (a per-step reduction would cost a dispatch per step)."""
        self._unread.append((int(step), nonfinite_mask))

    def read(self, upto: int | None = None) -> Event | None:
        """Returns the first non-finite step since the last reset among the noted steps
        <= `upto` (default: all), or None; waits for those steps' masks only."""
        take = [(s, m) for s, m in self._unread if upto is None or s <= upto]
        self._unread = [(s, m) for s, m in self._unread if upto is not None and s > upto]
        masks = jax.device_get([m for _, m in take])
        for (s, _), mask in zip(take, masks):
            if int(mask) != 0:
                self._count += 1
                if self._first is None:
                    self._first = (s, int(mask))
        if self._first is None:
            return None
        return Event(self._first[0], step_lib.nonfinite_names(self._first[1]), self._count)

    def check(self, upto: int | None = None) -> Event | None:
        """Applies the policy to the steps <= `upto` (default: all noted): returns an Event to
        rewind for, None to go on, or raises."""
        event = self.read(upto)
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
