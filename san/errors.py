"""Errors raised by the model library for bad checkpoints and unavailable weights."""


class CheckpointError(ValueError):
    """A checkpoint that is not of the expected layout or does not fit the model."""


class WeightsUnavailableError(RuntimeError):
    """Weights that cannot be found locally nor downloaded (e.g. offline with an empty cache)."""
