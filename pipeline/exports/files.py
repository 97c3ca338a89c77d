"""Where exports write: file names for one file per image (:func:`mask_file_names`, escaped by
:func:`escape_name`) and a new folder that appears whole or not at all (:func:`new_folder`). Shared by
the exports (``pipeline.exports``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import unicodedata
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from san.errors import UserError

__all__ = [
    "STAGING",
    "clash_key",
    "common_parents",
    "escape_name",
    "file_name",
    "mask_file_names",
    "name_parents",
    "new_folder",
]

#: The folder inside an export where a parallel export stages the images its run's input embeds (removed after).
STAGING = ".staged"
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


def name_parents(path: str) -> tuple[str, ...]:
    """The folders of ``path`` that :func:`file_name` keeps below the images' common folder."""
    return _parts(path)[:-1]


def common_parents(first: tuple[str, ...] | None, second: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The folders two groups of images share (``None``: a group without images)."""
    if first is None or second is None:
        return second if first is None else first
    common = 0
    while common < min(len(first), len(second)) and first[common] == second[common]:
        common += 1
    return first[:common]


def _stem(path: str, image_id: int) -> str:
    parts = _parts(path)
    return PurePosixPath(parts[-1] if parts else str(image_id)).stem or str(image_id)


def file_name(path: str, image_id: int, common: int, suffix: str = "", with_id: bool = False) -> str:
    """The relative file name of an image: its path below its first ``common`` folders (those all images
    share), with ``suffix``, escaped (:func:`escape_name`); ``with_id``: ``.<image_id>`` before the suffix (a
    name that would clash)."""
    last = f"{_stem(path, image_id)}.{image_id}{suffix}" if with_id else f"{_stem(path, image_id)}{suffix}"
    return escape_name("/".join([*name_parents(path)[common:], last]))


def clash_key(path: str, image_id: int) -> int:
    """A 64-bit hash of the name :func:`file_name` gives the image, case-folded and before the common folder is
    cut: two images whose names clash (whatever the common folder and suffix) have the same key."""
    text = escape_name("/".join([*name_parents(path), _stem(path, image_id)])).casefold()
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little", signed=True
    )


def mask_file_names(items: list[tuple[str, int]], suffix: str = ".png") -> dict[str, str]:
    """``(image_path, image_id)`` -> relative file path: the image's path relative to the folder all images
    share, with ``suffix``, escaped (:func:`escape_name`); a name that would clash (case-insensitively) gets
    ``.<image_id>`` before it."""
    shared = None
    for path, _ in items:
        shared = common_parents(shared, name_parents(path))
    common = len(shared or ())
    names: dict[str, str] = {}
    used: set[str] = set()
    for path, image_id in items:
        rel = file_name(path, image_id, common, suffix)
        if rel.casefold() in used:
            rel = file_name(path, image_id, common, suffix, with_id=True)
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
