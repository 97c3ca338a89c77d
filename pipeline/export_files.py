"""Where exports write: file names for one file per image (:func:`mask_file_names`) and a new folder that
appears whole or not at all (:func:`new_folder`). Shared by ``pipeline.review.export`` and ``pipeline.exports``."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from san.errors import UserError

__all__ = ["mask_file_names", "new_folder"]


def _parts(path: str) -> tuple[str, ...]:
    text = str(path).replace("\\", "/")
    if "://" in text:
        text = text.split("://", 1)[1]
    return tuple(p for p in text.split("/") if p not in ("", ".", ".."))


def mask_file_names(items: list[tuple[str, int]], suffix: str = ".png") -> dict[str, str]:
    """``(image_path, image_id)`` -> relative file path: the image's path relative to the folder all images
    share, with ``suffix``; a name that would clash (case-insensitively) gets ``.<image_id>`` before it."""
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
        rel = "/".join([*parent[common:], f"{stem}{suffix}"])
        if rel.casefold() in used:
            rel = "/".join([*parent[common:], f"{stem}.{image_id}{suffix}"])
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
