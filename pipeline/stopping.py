"""A job stopped from outside (``ray job stop``, ``kill``: SIGTERM) ends like one stopped with Ctrl-C: the
signal raises :class:`StopRequested` in the main thread, so the job saves what is finished and says that
it was stopped, instead of dying as a failure (Ray's own handler calls ``sys.exit(15)``)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopRequested(BaseException):
    """SIGTERM arrived. A ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception`` swallows it."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(f"stopped by {signal.Signals(signum).name} (e.g. ray job stop)")


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`StopRequested` (in the main thread; elsewhere Python cannot
    install a signal handler, and SIGTERM keeps its handler). The previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
