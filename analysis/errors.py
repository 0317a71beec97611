"""The one error type the analysis raises for an expected data shortage (not a bug)."""

from __future__ import annotations

__all__ = ["InsufficientData"]


class InsufficientData(ValueError):
    """Too few usable runs or points for an analysis step; the message says what is missing.

    Callers that draw optional report sections catch this type only, so any other exception (a
    bug, a malformed file) propagates instead of turning into a "skipped" section.
    """
