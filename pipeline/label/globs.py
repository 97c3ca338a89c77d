"""Shell globs over pyarrow paths, as ``--input`` takes them: ``*`` within one folder, ``**`` across folders,
hidden names matched only by a pattern that names them."""

from __future__ import annotations

import fnmatch

__all__ = ["glob_match", "has_wildcard", "relative_parts", "split_glob"]


def has_wildcard(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def split_glob(spec: str) -> tuple[str, list[str]]:
    """A glob -> (the folder before its first wildcard component, the pattern's components)."""
    parts = spec.split("/")
    first_wild = next(i for i, p in enumerate(parts) if has_wildcard(p))
    return "/".join(parts[:first_wild]) or ".", [p for p in parts[first_wild:] if p]


def relative_parts(path: str, root: str) -> list[str]:
    rel = path[len(root) :] if path.startswith(root) else path
    return [p for p in rel.split("/") if p]


def glob_match(parts: list[str], pattern: list[str]) -> bool:
    """Shell-glob semantics per path component: ``*`` stays within one folder, ``**`` spans zero or more
    folders, and wildcards do not match hidden (dot) names unless the pattern component starts with a dot."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        descend = bool(parts) and not parts[0].startswith(".") and glob_match(parts[1:], pattern)
        return descend or glob_match(parts, rest)
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and glob_match(parts[1:], rest)
