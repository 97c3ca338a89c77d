"""A full disk (or a used-up quota) under a job's output: recognised in any write error, and told in one line
that names the folder."""

from __future__ import annotations

import errno
import os

from san.errors import UserError

__all__ = ["NO_SPACE", "OutputFullError", "is_out_of_space", "out_of_space"]


class OutputFullError(UserError):
    """The output folder's disk is full (or its quota used up); the message names the folder."""


# The errors of a write that found no space (a full disk, a used-up quota).
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_out_of_space(error: BaseException) -> bool:
    """Whether ``error`` is a write that found no space left."""
    return isinstance(error, OSError) and error.errno in NO_SPACE


def out_of_space(folder: str | os.PathLike[str], reason: str) -> OutputFullError:
    """The one line of a run stopped because ``folder`` is full (``reason``: the system's words)."""
    return OutputFullError(
        f"no space left to write to the `output` folder {folder} ({reason}); the images labeled so far are saved: "
        "free space there and rerun the same command to label the rest"
    )
