"""Shared ending of the benchmark scripts: print a Markdown table, and append it to a file when asked."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], write: Path | None) -> None:
    """Print ``lines`` and, when ``write`` is given, append them to that Markdown file."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text)
    if write:
        with open(write, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)
