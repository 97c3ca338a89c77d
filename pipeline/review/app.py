"""The FiftyOne App for a review dataset: launch it, or serve it until Ctrl-C (``jobs/review.py --launch``)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import fiftyone as fo

__all__ = ["launch", "serve_until_interrupted"]


def launch(dataset: fo.Dataset, port: int = 5151, address: str = "127.0.0.1") -> fo.Session:
    """Start the App on ``http://address:port/`` (remote mode: no browser is opened)."""
    return fo.launch_app(dataset, port=port, address=address, remote=True)


def serve_until_interrupted(
    dataset: fo.Dataset,
    port: int = 5151,
    address: str = "127.0.0.1",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Launch the App, print its address, block until Ctrl-C (or SIGTERM), then close the session, which
    stops the App server process (the database process exits with this process). ``on_ready(url)`` is
    called once the App serves and its address is printed. A Ctrl-C during start-up is handled the same."""
    previous = signal.getsignal(signal.SIGTERM)

    def _interrupt(signum, frame):  # SIGTERM -> the same clean shutdown as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        session = launch(dataset, port=port, address=address)
        url = f"http://{address}:{port}/"
        print(f"App: {url} (Ctrl-C to stop)", flush=True)
        if on_ready is not None:
            on_ready(url)
        session.wait(-1)
    except KeyboardInterrupt:
        print("stopping the App", file=sys.stderr, flush=True)
    finally:
        fo.close_app()  # no-op when launch_app did not get as far as making the session
        signal.signal(signal.SIGTERM, previous)
