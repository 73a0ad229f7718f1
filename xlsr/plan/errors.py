"""The plan's user error."""

from __future__ import annotations

from xlsr.process import UserError


class PlanError(UserError, ValueError):
    """A plan cannot be made from what was given (one line, exit code 2)."""
