"""Ground-truth class names: the key classes are aligned by, and reading a class-names file (``--gt-classes``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from san import text_files

from .base import GroundTruthError

__all__ = ["check_distinct_names", "normalise_class_name", "read_class_names"]


def normalise_class_name(name: str) -> str:
    """The key classes are aligned by: underscores read as spaces, whitespace stripped and collapsed to one
    space, then :func:`san.text_files.name_key` (case-folded, Unicode NFC): ``Traffic_Light`` and ``traffic
    light`` are one class, and so are ``café`` in its NFC and NFD forms."""
    return text_files.name_key(" ".join(str(name).replace("_", " ").split()))


def check_distinct_names(names: Sequence[str], source: str) -> None:
    """Raise :class:`GroundTruthError` (naming ``source``) when two names are equal after
    :func:`normalise_class_name`."""
    seen: dict[str, str] = {}
    for name in names:
        key = normalise_class_name(name)
        if key in seen:
            raise GroundTruthError(f"{source}: class {name!r} appears twice (also as {seen[key]!r})")
        seen[key] = name


def read_class_names(path: str | os.PathLike[str]) -> list[str | None]:
    """Read a ground-truth class-names file (``--gt-classes``): entry ``v`` names the class of pixel value ``v``,
    None for a gap line whose pixels are ignored (e.g. ``# other`` on line 0 for ADE20K's raw annotations,
    whose 0 means "other"). Format: :mod:`san.text_files`.

    Raises:
        GroundTruthError: missing, unreadable, not UTF-8, no class, or a name repeated (also case-insensitively,
            :func:`check_distinct_names`).
    """
    source = os.fspath(path)
    try:
        names = text_files.read_class_names(source, GroundTruthError)
    except FileNotFoundError:
        raise GroundTruthError(f"`gt_classes` file not found: {source}") from None
    except OSError as exc:
        raise GroundTruthError(f"{source}: cannot read: {exc.strerror or exc}") from None
    check_distinct_names([n for n in names if n is not None], source)
    return names
