"""What every job script shares: its parser's layout (``--help`` shows the script's docstring), and
its ending: run ``main``, and turn the errors a user fixes by changing the command into one line on
stderr with exit status 2 instead of a traceback, and Ctrl-C into one line with exit status 130."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def job_parser(script: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``jobs/<script>``: the docstring's first paragraph as the description, the rest
    (usage examples) as the epilog, line breaks kept."""
    return argparse.ArgumentParser(
        prog=f"jobs/{script}",
        description=doc.split("\n\n")[0],
        epilog="\n".join(doc.split("\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def weights_hint(error: BaseException) -> str:
    """What to try when the released weights cannot be had (offline, no cache)."""
    from san.errors import WeightsUnavailableError

    if isinstance(error, WeightsUnavailableError):
        return "\nTo see the whole flow without weights, add --smoke-test (a tiny random model)."
    return ""


def run_job(
    main: Callable[[argparse.Namespace], Any],
    parse_args: Callable[[], argparse.Namespace],
    user_errors: tuple[type[BaseException], ...],
    hint: Callable[[BaseException], str] | None = None,
    resume_hint: str = "",
) -> None:
    """Parse the arguments and run ``main``; a ``user_errors`` exception exits with status 2, Ctrl-C
    with 130 after printing ``resume_hint`` (how to continue)."""
    arguments = parse_args()
    try:
        main(arguments)
    except user_errors as error:
        print(f"error: {error}{hint(error) if hint else ''}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted{'; ' + resume_hint if resume_hint else ''}", file=sys.stderr)
        sys.exit(130)
