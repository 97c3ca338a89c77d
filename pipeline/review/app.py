"""The FiftyOne App for a review dataset: launch it, or serve it until Ctrl-C (``jobs/review.py --launch``)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import fiftyone as fo
import fiftyone.core.utils as fou

__all__ = ["dataset_url", "launch", "saved_view_urls", "serve_until_interrupted"]


def dataset_url(dataset: fo.Dataset, app_url: str) -> str:
    """The App page of ``dataset`` (``app_url`` is the App's root, ``http://address:port/``)."""
    return f"{app_url.rstrip('/')}/datasets/{dataset.slug}"


def saved_view_urls(dataset: fo.Dataset, app_url: str) -> dict[str, str]:
    """Saved view name -> the App page that opens it (``?view=<slug>``, as the App's view selector does)."""
    return {name: f"{dataset_url(dataset, app_url)}?view={fou.to_slug(name)}" for name in dataset.list_saved_views()}


def launch(dataset: fo.Dataset, port: int = 5151, address: str = "127.0.0.1") -> fo.Session:
    """Start the App on ``http://address:port/`` (remote mode: no browser is opened)."""
    return fo.launch_app(dataset, port=port, address=address, remote=True)


def serve_until_interrupted(
    dataset: fo.Dataset,
    port: int = 5151,
    address: str = "127.0.0.1",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Launch the App, print its address and a link to each saved view, block until Ctrl-C (or SIGTERM), then
    close the session, which stops the App server process (the database process exits with this process).
    ``on_ready(url)`` is called once the App serves and its address is printed. A Ctrl-C during start-up is
    handled the same."""
    previous = signal.getsignal(signal.SIGTERM)

    def _interrupt(signum, frame):  # SIGTERM -> the same clean shutdown as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        session = launch(dataset, port=port, address=address)
        url = f"http://{address}:{port}/"
        print(f"App: {url} (Ctrl-C to stop)", flush=True)
        views = saved_view_urls(dataset, url)
        if views:
            print("saved views:\n" + "".join(f"  {name}: {link}\n" for name, link in views.items()), end="", flush=True)
        if on_ready is not None:
            on_ready(url)
        session.wait(-1)
    except KeyboardInterrupt:
        print("stopping the App", file=sys.stderr, flush=True)
    finally:
        fo.close_app()  # no-op when launch_app did not get as far as making the session
        signal.signal(signal.SIGTERM, previous)
