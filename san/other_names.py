"""Distractor ("other") names: classes added to a vocabulary only so that the pixels they win become
unlabeled, as the official SAN demo augments a user's vocabulary with COCO-Stuff's names
(``predict.py``, ``augment_vocabulary``).

With a vocabulary of "cat" and "dog", SAN gives every pixel one of the two: the sky becomes a cat or a
dog. With the COCO-Stuff names added, the sky goes to ``sky-other`` and is left unlabeled.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path

from .errors import UserError
from .text_files import name_key, read_class_names

__all__ = ["OTHER_CHOICES", "OtherNamesError", "added_names", "coco_stuff_names", "read_other_names"]

#: The built-in ``--other`` sets; anything else is a file of names.
OTHER_CHOICES = ("coco-all", "coco-stuff", "none")


class OtherNamesError(UserError):
    """An ``--other`` value that is neither a built-in set nor a readable file of names."""


def coco_stuff_names(stuff_only: bool = False) -> list[str]:
    """COCO-Stuff's 171 category names as the official SAN code spells them (e.g. ``building-other``), in
    its order (80 things, then 91 stuff); ``stuff_only``: the 91 stuff names (the official ``COCO-stuff``)."""
    text = resources.files(__package__).joinpath("coco_stuff_171.txt").read_text(encoding="utf-8")
    names = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            kind, name = line.split(" ", 1)
            if kind == "stuff" or not stuff_only:
                names.append(name)
    return names


def read_other_names(spec: str, check_term: Callable[[str], str | None] | None = None) -> list[str]:
    """The names of an ``--other`` value: ``coco-all`` (171), ``coco-stuff`` (91), ``none`` (no name), or
    the path of a UTF-8 file with one name per line (``#`` lines and blank lines skipped).

    Raises:
        OtherNamesError: the file cannot be read, is not UTF-8, names nothing, names a class twice (ignoring
            case and Unicode form), or holds a name in which ``check_term`` finds a problem (naming the file
            and the line).
    """
    if spec in OTHER_CHOICES:
        return [] if spec == "none" else coco_stuff_names(stuff_only=spec == "coco-stuff")
    if not Path(spec).is_file():
        raise OtherNamesError(f"`other` {spec!r} is neither one of {', '.join(OTHER_CHOICES)} nor a file of names")
    try:
        names = read_class_names(spec, OtherNamesError)
    except OSError as error:
        raise OtherNamesError(f"{os.fspath(spec)}: cannot read the `other` names: {error.strerror}") from error
    for line_no, name in enumerate(names, start=1):
        if name is not None and check_term is not None and (problem := check_term(name)):
            raise OtherNamesError(f"{spec}:{line_no}: {problem}")
    return [name for name in names if name is not None]


def added_names(other: Sequence[str], vocabulary_terms: Iterable[str]) -> list[str]:
    """The ``other`` names that are no name or synonym of the vocabulary (compared by
    :func:`~san.text_files.name_key`: ignoring case and Unicode form), each once."""
    taken = {name_key(term) for term in vocabulary_terms}
    added = []
    for name in other:
        if name_key(name) not in taken:
            added.append(name)
            taken.add(name_key(name))
    return added
