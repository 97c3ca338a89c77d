"""The error of every review module."""

from __future__ import annotations

from san.errors import UserError

__all__ = ["ReviewError"]


class ReviewError(UserError):
    """The run, the ground truth or the dataset cannot be reviewed; the message says why."""
