"""The FiftyOne App for a review dataset: launch it, or serve it until Ctrl-C (``jobs/review.py --launch``).

The App answers ``/media?filepath=ANY`` with any file the process can read, without authentication, so it
listens on loopback unless a caller allows a remote address (``allow_remote``, ``--allow-remote``), and
then it warns at start-up."""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
from collections.abc import Callable

import fiftyone as fo
import fiftyone.core.utils as fou

from san.errors import OptionError

__all__ = ["check_address", "dataset_url", "is_loopback", "launch", "saved_view_urls", "serve_until_interrupted"]

UNAUTHENTICATED = (
    "FiftyOne's App serves any local file this process can read (/media?filepath=...) without authentication"
)


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP address or a host name) resolves to loopback addresses only; one that does
    not resolve is not."""
    try:
        resolved = socket.getaddrinfo(address, None)
    except (OSError, UnicodeError):  # socket.gaierror: unknown host; UnicodeError: a name IDNA refuses
        return False
    return bool(resolved) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in resolved)


def check_address(address: str, allow_remote: bool = False) -> bool:
    """Whether the App would listen beyond this machine on ``address``; refuse that without ``allow_remote``.

    Raises:
        OptionError: ``address`` is not loopback and ``allow_remote`` is False.
    """
    if is_loopback(address):
        return False
    if not allow_remote:
        raise OptionError(
            f"`address` {address} is not a loopback address and {UNAUTHENTICATED} to whoever reaches the port; "
            "add `allow_remote` to serve it there anyway, or leave out `address` (127.0.0.1)"
        )
    return True


def dataset_url(dataset: fo.Dataset, app_url: str) -> str:
    """The App page of ``dataset`` (``app_url`` is the App's root, ``http://address:port/``)."""
    return f"{app_url.rstrip('/')}/datasets/{dataset.slug}"


def saved_view_urls(dataset: fo.Dataset, app_url: str) -> dict[str, str]:
    """Saved view name -> the App page that opens it (``?view=<slug>``, as the App's view selector does)."""
    return {name: f"{dataset_url(dataset, app_url)}?view={fou.to_slug(name)}" for name in dataset.list_saved_views()}


def launch(dataset: fo.Dataset, port: int = 5151, address: str = "127.0.0.1", allow_remote: bool = False) -> fo.Session:
    """Start the App on ``http://address:port/`` (remote mode: no browser is opened); on an address that is not
    loopback only with ``allow_remote`` (:func:`check_address`), and then with a warning on stderr."""
    if check_address(address, allow_remote):
        print(
            f"warning: the App listens on {address}:{port}, beyond this machine: {UNAUTHENTICATED} to anyone who "
            "can reach the port",
            file=sys.stderr,
            flush=True,
        )
    return fo.launch_app(dataset, port=port, address=address, remote=True)


def serve_until_interrupted(
    dataset: fo.Dataset,
    port: int = 5151,
    address: str = "127.0.0.1",
    on_ready: Callable[[str], None] | None = None,
    allow_remote: bool = False,
) -> None:
    """Launch the App, print its address and a link to each saved view, block until Ctrl-C (or SIGTERM), then
    close the session, which stops the App server process (the database process exits with this process).
    ``on_ready(url)`` is called once the App serves and its address is printed. A Ctrl-C during start-up is
    handled the same. ``allow_remote``: as for :func:`launch`."""
    previous = signal.getsignal(signal.SIGTERM)

    def _interrupt(signum, frame):  # SIGTERM -> the same clean shutdown as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        session = launch(dataset, port=port, address=address, allow_remote=allow_remote)
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
