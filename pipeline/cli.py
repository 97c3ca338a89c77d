"""What every job script shares: its parser's layout (``--help`` shows the script's docstring), and
its ending: run ``main``, and turn a :class:`san.errors.UserError` (fixed by changing the command or
the input) into one line on stderr with exit status 2, and Ctrl-C (SIGTERM) into one line with exit status
130 (143).
Any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from typing import Any

from san.errors import UserError, WeightsUnavailableError

from .stopping import StopRequested


def job_parser(script: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``jobs/<script>``: the docstring's first paragraph as the description, the rest
    (usage examples) as the epilog, line breaks kept."""
    return argparse.ArgumentParser(
        prog=f"jobs/{script}",
        description=doc.split("\n\n")[0],
        epilog="\n".join(doc.split("\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def flag(name: str) -> str:
    """The command-line flag of option (dataclass field) ``name``: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def weights_hint(error: BaseException) -> str:
    """What to try when the released weights cannot be had (offline, no cache)."""
    if isinstance(error, WeightsUnavailableError):
        return "\nTo see the whole flow without weights, add --smoke-test (a tiny random model)."
    return ""


def user_message(error: UserError, arguments: argparse.Namespace) -> str:
    """``error``'s message with each option it names that the job has shown as the job's flag."""
    return error.worded(lambda name: flag(name) if name in vars(arguments) else None)


def run_job(
    main: Callable[[argparse.Namespace], Any],
    parse_args: Callable[[], argparse.Namespace],
    hint: Callable[[BaseException], str] | None = None,
    resume_hint: str = "",
) -> None:
    """Parse the arguments and run ``main``; a :class:`UserError` exits with status 2 after one line,
    Ctrl-C with 130 and SIGTERM (:class:`~pipeline.stopping.StopRequested`) with 143 after printing
    ``resume_hint`` (how to continue)."""
    arguments = parse_args()
    try:
        main(arguments)
    except UserError as error:
        # Raised in a Ray task, it arrives wrapped with the worker's traceback: its cause is the message.
        cause = getattr(error, "cause", None)
        shown = cause if isinstance(cause, UserError) else error
        print(f"error: {user_message(shown, arguments)}{hint(shown) if hint else ''}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted{'; ' + resume_hint if resume_hint else ''}", file=sys.stderr)
        sys.exit(130)
    except StopRequested as stop:
        print(f"\n{stop}{'; ' + resume_hint if resume_hint else ''}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
