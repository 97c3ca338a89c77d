"""The errors a user fixes by changing the command or the input: :class:`UserError` and its kinds.

Jobs print a :class:`UserError` as one line; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_OPTION = re.compile(r"`(\w+)`")


class UserError(Exception):
    """An error the user fixes by changing the command or the input (a job prints it as one line).

    The message may name options as ```name``` (a field of an options dataclass such as
    :class:`san.training.config.TrainConfig`): ``str()`` shows the bare name, a job its command-line
    flag (:meth:`worded`), so that the library names no flag.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)  # the marked message: what pickling (e.g. by Ray) passes back to __init__
        self.template = message

    def __str__(self) -> str:
        return _OPTION.sub(r"\1", self.template)

    def worded(self, wording: Callable[[str], str | None]) -> str:
        """The message with each option ``name`` shown as ``wording(name)`` (e.g. ``"--batch-size"``),
        or as the bare name where ``wording`` gives ``None``."""
        return _OPTION.sub(lambda match: wording(match[1]) or match[1], self.template)


class OptionError(UserError):
    """An option value that cannot work (alone or with the others)."""


class DataError(UserError):
    """A training or validation folder that is missing or holds unusable files."""


class CheckpointError(UserError):
    """A checkpoint that is missing, not of the expected layout, or does not fit the model."""


class ModelConfigError(UserError):
    """An official SAN config (YAML/JSON) that is missing or cannot be converted."""


class WeightsUnavailableError(UserError):
    """Weights that cannot be found locally nor downloaded (e.g. offline with an empty cache)."""
