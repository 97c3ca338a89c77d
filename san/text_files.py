"""The text files users write (vocabularies, input lists, class-name files): UTF-8 decoding with errors
that name the line, the key class names are compared by, and the class-name file format.

Class-name file: line ``v`` (1-based line ``v + 1``) names class (label value) ``v``. Whitespace in a name
is stripped and collapsed to one space. Every line counts, so that line numbers stay aligned with values:
a line that is blank or whose first non-blank character is ``#`` is a *gap* (no class at that value);
trailing gap lines are dropped. A leading UTF-8 BOM is ignored. Two names with one :func:`name_key` are
one class.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

__all__ = ["decode_utf8", "name_key", "parse_class_names", "read_class_names", "spelling_note"]


def name_key(name: str) -> str:
    """The key two class names are the same class by: Unicode NFC normalisation, then case folding (NFC
    again after it). ``café`` written as one code point or as ``e`` and a combining accent (NFC and NFD),
    and ``Cat`` and ``cat``, give CLIP's tokenizer the same tokens (it normalises and lower-cases), so they
    would be one embedding under two names."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


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
        error: no class name at all (``SOURCE: ...``), or a name on two lines, compared by
            :func:`name_key` (``SOURCE:LINE: ...`` naming both lines).
    """
    names: list[str | None] = []
    first_line: dict[str, tuple[str, int]] = {}
    for line_no, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        name = " ".join(line.split())
        if not name or name.startswith("#"):
            names.append(None)
            continue
        if (key := name_key(name)) in first_line:
            first, first_no = first_line[key]
            raise error(f"{source}:{line_no}: class {name!r} is also on line {first_no}{spelling_note(name, first)}")
        first_line[key] = (name, line_no)
        names.append(name)
    while names and names[-1] is None:
        names.pop()
    if not names:
        raise error(f"{source}: no class names (only blank lines and '#' lines)")
    return names


def spelling_note(name: str, first: str) -> str:
    """How ``name`` differs from ``first``, an earlier name with its :func:`name_key`, for a duplicate's
    message: ``""`` when it is written the same."""
    if name == first:
        return ""
    if unicodedata.normalize("NFC", name) == unicodedata.normalize("NFC", first):
        return f" as {first!r} (the same letters in another Unicode form, NFC or NFD)"
    return f" as {first!r}"


def read_class_names(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> list[str | None]:
    """:func:`parse_class_names` of the file at ``path``.

    Raises:
        OSError: the file cannot be read (``FileNotFoundError`` when it does not exist).
        error: not UTF-8 (naming the line), or see :func:`parse_class_names`.
    """
    source = os.fspath(path)
    return parse_class_names(decode_utf8(Path(source).read_bytes(), source, error), source, error)
