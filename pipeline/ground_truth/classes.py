"""Ground-truth class names: the key classes are aligned by, and reading a class-names file (``--gt-classes``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .base import GroundTruthError

__all__ = ["check_distinct_names", "normalise_class_name", "read_class_names"]


def normalise_class_name(name: str) -> str:
    """The key classes are aligned by: case-folded, underscores read as spaces, whitespace stripped and
    collapsed to one space (``Traffic_Light`` and ``traffic light`` are one class)."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def check_distinct_names(names: Sequence[str], source: str) -> None:
    """Raise :class:`GroundTruthError` (naming ``source``) when two names are equal after
    :func:`normalise_class_name`."""
    seen: dict[str, str] = {}
    for name in names:
        key = normalise_class_name(name)
        if key in seen:
            raise GroundTruthError(f"{source}: class {name!r} appears twice (also as {seen[key]!r})")
        seen[key] = name


def read_class_names(path: str | os.PathLike[str]) -> tuple[list[str | None], list[int]]:
    """Read a ground-truth class-names file: line ``v`` (0-based) names the class of pixel value ``v``.

    Every line counts, so line numbers stay aligned with pixel values. A line that is empty or whose
    first non-blank character is ``#`` is a *gap*: that value is no class and its pixels are ignored
    (e.g. ``# other`` on line 0 for ADE20K's raw annotations, whose 0 means "other"). Whitespace in
    names is stripped and collapsed; trailing gap lines are dropped; a leading UTF-8 BOM is ignored.

    Returns:
        ``(names_by_value, gap_values)``: one entry per value, None for a gap.

    Raises:
        GroundTruthError: missing, unreadable, not UTF-8, no class, or a name repeated (case-insensitively).
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise GroundTruthError(f"--gt-classes file not found: {source}") from None
    except UnicodeDecodeError as exc:
        raise GroundTruthError(f"{source}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise GroundTruthError(f"{source}: cannot read: {exc.strerror or exc}") from None
    text = text.removeprefix("\ufeff")
    names: list[str | None] = []
    for raw in text.split("\n"):
        name = " ".join(raw.split())
        names.append(None if not name or name.startswith("#") else name)
    while names and names[-1] is None:
        names.pop()
    if not names:
        raise GroundTruthError(f"{source}: no class names (only blank lines and '#' lines)")
    check_distinct_names([n for n in names if n is not None], source)
    return names, [v for v, n in enumerate(names) if n is None]
