"""The errors of training a user can act on; each message says what and what to do."""

from __future__ import annotations

from common.errors import UserError


class DatasetError(UserError, ValueError):
    """A Dataset asked for something the store cannot give; the message names both."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (a NaN loss, a missing device); the message says why and what to do."""
