"""Where exports write: file names for one file per image (:func:`mask_file_names`, escaped by
:func:`escape_name`) and a new folder that appears whole or not at all (:func:`new_folder`). Shared by
the exports (``pipeline.exports``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import unicodedata
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from san.errors import UserError

__all__ = ["escape_name", "mask_file_names", "new_folder"]

# Unicode categories escaped in file names: control characters (newline, tab, DEL, NEL, ...) and the line
# and paragraph separators, which line-based readers (str.splitlines) also split on.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def escape_name(text: str) -> str:
    """``text`` with each control character or line separator percent-encoded as in a URL (``"\\n"`` ->
    ``"%0A"``): the one rule for every file name an export writes and every name its listings hold, so that
    no name spans two lines. Other characters, ``%`` included, are kept (a name that then clashes gets
    :func:`mask_file_names`' image id)."""
    return "".join(
        urllib.parse.quote(ch, safe="") if unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch for ch in text
    )


def _parts(path: str) -> tuple[str, ...]:
    text = str(path).replace("\\", "/")
    if "://" in text:
        text = text.split("://", 1)[1]
    return tuple(p for p in text.split("/") if p not in ("", ".", ".."))


def mask_file_names(items: list[tuple[str, int]], suffix: str = ".png") -> dict[str, str]:
    """``(image_path, image_id)`` -> relative file path: the image's path relative to the folder all images
    share, with ``suffix``, escaped (:func:`escape_name`); a name that would clash (case-insensitively) gets
    ``.<image_id>`` before it."""
    parents = [_parts(p)[:-1] for p, _ in items]
    common = 0
    if parents:
        shortest = min(len(p) for p in parents)
        while common < shortest and len({p[common] for p in parents}) == 1:
            common += 1
    names: dict[str, str] = {}
    used: set[str] = set()
    for (path, image_id), parent in zip(items, parents, strict=True):
        stem = PurePosixPath(_parts(path)[-1] if _parts(path) else str(image_id)).stem or str(image_id)
        rel = escape_name("/".join([*parent[common:], f"{stem}{suffix}"]))
        if rel.casefold() in used:
            rel = escape_name("/".join([*parent[common:], f"{stem}.{image_id}{suffix}"]))
        used.add(rel.casefold())
        names[path] = rel
    return names


@contextlib.contextmanager
def new_folder(target: Path, option: str, error: type[UserError]) -> Iterator[Path]:
    """A temporary folder beside ``target`` that becomes ``target`` when the block succeeds and is deleted
    when it fails, so ``target`` holds one whole export or nothing. ``target`` must be new or empty (files of
    an earlier export would otherwise mix in); else ``error`` names ``option`` (e.g. ``"--masks"``)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        what = "is not empty" if target.is_dir() else "is a file"
        raise error(f"{option} {str(target)!r} {what}; choose a new or empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, target)  # also over an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
