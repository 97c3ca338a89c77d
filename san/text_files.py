"""The text files users write (vocabularies, input lists, class-name files): UTF-8 decoding with errors
that name the line, and the class-name file format.

Class-name file: line ``v`` (1-based line ``v + 1``) names class (label value) ``v``. Whitespace in a name
is stripped and collapsed to one space. Every line counts, so that line numbers stay aligned with values:
a line that is blank or whose first non-blank character is ``#`` is a *gap* (no class at that value);
trailing gap lines are dropped. A leading UTF-8 BOM is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["decode_utf8", "parse_class_names", "read_class_names"]


def decode_utf8(data: bytes, source: str, error: type[Exception] = ValueError) -> str:
    """``data`` as UTF-8 text; otherwise raise ``error("SOURCE:LINE: not valid UTF-8 (byte 0x.. at offset N)")``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        raise error(f"{source}:{line_no}: not valid UTF-8 (byte 0x{byte:02x} at offset {exc.start})") from None


def parse_class_names(text: str, source: str, error: type[Exception] = ValueError) -> list[str | None]:
    """The class names of a class-name file's ``text`` (format in the module docstring): one entry per
    value, None for a gap.

    Raises:
        error: no class name at all (``SOURCE: ...``), or a name on two lines (``SOURCE:LINE: ...``
            naming both lines).
    """
    names: list[str | None] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        name = " ".join(line.split())
        if not name or name.startswith("#"):
            names.append(None)
            continue
        if name in first_line:
            raise error(f"{source}:{line_no}: class {name!r} is also on line {first_line[name]}")
        first_line[name] = line_no
        names.append(name)
    while names and names[-1] is None:
        names.pop()
    if not names:
        raise error(f"{source}: no class names (only blank lines and '#' lines)")
    return names


def read_class_names(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> list[str | None]:
    """:func:`parse_class_names` of the file at ``path``.

    Raises:
        OSError: the file cannot be read (``FileNotFoundError`` when it does not exist).
        error: not UTF-8 (naming the line), or see :func:`parse_class_names`.
    """
    source = os.fspath(path)
    return parse_class_names(decode_utf8(Path(source).read_bytes(), source, error), source, error)
