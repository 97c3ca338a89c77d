"""Vocabulary files: the class names (and their synonyms) a labeling run predicts.

One class per line, ``name: synonym, synonym``, optionally ending in ``@ 0.4`` (the class's own minimum
score), ``#`` comments; names and synonyms unique case-insensitively and across Unicode forms (NFC, NFD);
category ids 1..N in file order.
Every problem raises :class:`VocabularyError` naming the file, the 1-based line and the problem. The full
format: ``docs/labeling.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from san.errors import UserError
from san.text_files import decode_utf8, name_key, spelling_note

__all__ = ["Vocabulary", "VocabularyError", "load_vocabulary", "parse_vocabulary"]


class VocabularyError(UserError):
    """A vocabulary file or JSON object is malformed; the message says where and why."""


def _normalise(text: str) -> str:
    """Strip and collapse all runs of whitespace to one space."""
    return " ".join(text.split())


def _check_unique(entries: Sequence[tuple[str, int]], source: str, unit: str = "line") -> None:
    """Raise on the first duplicate among ``(term, line)`` pairs, compared by :func:`san.text_files.name_key`
    (Unicode NFC, case-insensitive)."""
    first_seen: dict[str, tuple[str, int]] = {}
    for term, line in entries:
        key = name_key(term)
        if key in first_seen:
            prev_term, prev_line = first_seen[key]
            prefix = f"{source}:{line}" if unit == "line" else f"{source}: {unit} {line}"
            how = spelling_note(term, prev_term) or f" as {prev_term!r}"
            raise VocabularyError(
                f"{prefix}: duplicate class name or synonym {term!r} (already defined{how} on {unit} {prev_line})"
            )
        first_seen[key] = (term, line)


@dataclass(frozen=True)
class Vocabulary:
    """An ordered set of classes, each with a name and optional synonyms.

    Attributes:
        names: class names in file order; class index ``i`` (0-based) has category id ``i + 1``.
        synonyms: per class, its synonyms (the name itself excluded), in file order.
        min_scores: per class, its own minimum score (``None``: the run's ``--min-score``); ``()`` when the
            file gives none (normalised to one ``None`` per class).
    """

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    min_scores: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.names, tuple) or not isinstance(self.synonyms, tuple):
            raise TypeError("Vocabulary.names and Vocabulary.synonyms must be tuples")
        if len(self.names) != len(self.synonyms):
            raise VocabularyError(f"Vocabulary has {len(self.names)} names but {len(self.synonyms)} synonym lists")
        if self.min_scores == ():
            object.__setattr__(self, "min_scores", (None,) * len(self.names))
        if not isinstance(self.min_scores, tuple) or len(self.min_scores) != len(self.names):
            raise VocabularyError(f"Vocabulary has {len(self.names)} names but min_scores {self.min_scores!r}")
        for index, score in enumerate(self.min_scores):
            if score is not None and (problem := _score_problem(score)):
                raise VocabularyError(f"Vocabulary: class {index + 1}: minimum score {score!r} {problem}")
        if not self.names:
            raise VocabularyError("Vocabulary has no classes")
        entries: list[tuple[str, int]] = []
        for index, (name, syns) in enumerate(zip(self.names, self.synonyms, strict=True)):
            if not isinstance(syns, tuple):
                raise TypeError(f"synonyms of class {index + 1} must be a tuple, got {type(syns).__name__}")
            for term in (name, *syns):
                if not isinstance(term, str) or not term or term != _normalise(term):
                    raise VocabularyError(
                        f"Vocabulary: class {index + 1}: {term!r} is not a non-empty, whitespace-normalised string"
                    )
                entries.append((term, index + 1))
        _check_unique(entries, "Vocabulary", unit="class")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def category_ids(self) -> tuple[int, ...]:
        """COCO category ids, ``1..N`` in file order (class index ``i`` -> id ``i + 1``)."""
        return tuple(range(1, len(self.names) + 1))

    @property
    def prompts(self) -> tuple[str, ...]:
        """All text prompts, flat: each class's name then its synonyms, class by class. Length P."""
        pairs = zip(self.names, self.synonyms, strict=True)
        return tuple(term for name, syns in pairs for term in (name, *syns))

    @property
    def prompt_to_class(self) -> tuple[int, ...]:
        """For each prompt index (0..P-1), the 0-based index of the class it belongs to."""
        return tuple(index for index, syns in enumerate(self.synonyms) for _ in range(1 + len(syns)))

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict ``{"names": [...], "synonyms": [[...], ...]}``, with ``"min_scores": [0.4,
        null, ...]`` when a class has its own minimum score."""
        names = {"names": list(self.names), "synonyms": [list(s) for s in self.synonyms]}
        return {**names, "min_scores": list(self.min_scores)} if self.has_min_scores else names

    @property
    def has_min_scores(self) -> bool:
        """Whether a class has its own minimum score."""
        return any(score is not None for score in self.min_scores)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Vocabulary:
        """Inverse of :meth:`to_json`; validates like a file (normalised, unique, non-empty)."""
        if not isinstance(obj, Mapping) or "names" not in obj:
            raise VocabularyError("vocabulary JSON must be an object with a 'names' list")
        names = obj["names"]
        synonyms = obj.get("synonyms", [[] for _ in names])
        if not isinstance(names, list) or not isinstance(synonyms, list):
            raise VocabularyError("vocabulary JSON 'names' and 'synonyms' must be lists")
        if not all(isinstance(s, list) for s in synonyms):
            raise VocabularyError("vocabulary JSON 'synonyms' must be a list of lists")
        min_scores = obj.get("min_scores", [])
        if not isinstance(min_scores, list):
            raise VocabularyError("vocabulary JSON 'min_scores' must be a list")
        return cls(names=tuple(names), synonyms=tuple(tuple(s) for s in synonyms), min_scores=tuple(min_scores))

    @property
    def fingerprint(self) -> str:
        """sha256 hex digest of the classes (names and synonyms, in order).

        Comments, blank lines, whitespace and minimum scores in the file do not change it; names, synonyms,
        their case and their order do.
        """
        classes = {"names": list(self.names), "synonyms": [list(s) for s in self.synonyms]}
        canonical = json.dumps(classes, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_vocabulary(
    text: str, source: str = "<string>", check_term: Callable[[str], str | None] | None = None
) -> Vocabulary:
    """Parse vocabulary text (format: ``docs/labeling.md``).

    Args:
        text: the decoded file content.
        source: name used in error messages (usually the file path).
        check_term: a further check of each name and synonym: the problem, or ``None`` when it is fine
            (the labeling job refuses names whose prompts CLIP would cut).

    Raises:
        VocabularyError: ``"{source}:{line}: {problem}"`` for an empty name or synonym, a second ``:`` or
            ``@``, a minimum score after ``@`` that is no number of 0 or more, a duplicate ignoring
            case and Unicode form (:func:`san.text_files.name_key`; both lines named), a problem
            ``check_term`` finds, or ``"{source}: no classes ..."``.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    names: list[str] = []
    synonyms: list[tuple[str, ...]] = []
    min_scores: list[float | None] = []
    entries: list[tuple[str, int]] = []
    # split on "\n" only (not str.splitlines) so line numbers match the byte-level count used for
    # decode errors; a trailing "\r" is whitespace and gets stripped.
    for line_no, raw in enumerate(text.split("\n"), start=1):
        content = _normalise(raw.split("#", 1)[0])
        if not content:
            continue
        content, min_score = _split_min_score(content, f"{source}:{line_no}")
        if content.count(":") > 1:
            raise VocabularyError(f"{source}:{line_no}: more than one ':' in {content!r}")
        name, colon, rest = content.partition(":")
        name = _normalise(name)
        if not name:
            raise VocabularyError(f"{source}:{line_no}: empty class name in {content!r}")
        syns: tuple[str, ...] = ()
        if colon and rest.strip():
            syns = tuple(_normalise(s) for s in rest.split(","))
            if not all(syns):
                raise VocabularyError(f"{source}:{line_no}: empty synonym in {content!r}")
        for term in (name, *syns) if check_term else ():
            if problem := check_term(term):
                raise VocabularyError(f"{source}:{line_no}: {problem}")
        names.append(name)
        synonyms.append(syns)
        min_scores.append(min_score)
        entries.extend((term, line_no) for term in (name, *syns))
    if not names:
        raise VocabularyError(f"{source}: no classes found (only blank lines and comments)")
    _check_unique(entries, source)
    return Vocabulary(names=tuple(names), synonyms=tuple(synonyms), min_scores=tuple(min_scores))


def _score_problem(score: Any) -> str | None:
    """What is wrong with a minimum score, or ``None``."""
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        return "is not a finite number"
    return "is below 0" if score < 0 else None


def _split_min_score(content: str, where: str) -> tuple[str, float | None]:
    """A line's content without its trailing ``@ SCORE``, and the score (``None`` without ``@``)."""
    if "@" not in content:
        return content, None
    if content.count("@") > 1:
        raise VocabularyError(f"{where}: more than one '@' in {content!r}")
    terms, _, text = content.partition("@")
    try:
        score = float(text)
    except ValueError:
        raise VocabularyError(
            f"{where}: {text.strip()!r} after '@' is not a minimum score (a number such as @0.4) in {content!r}"
        ) from None
    if problem := _score_problem(score):
        raise VocabularyError(f"{where}: minimum score {text.strip()!r} {problem} in {content!r}")
    return _normalise(terms), score


def load_vocabulary(path: str | os.PathLike[str], check_term: Callable[[str], str | None] | None = None) -> Vocabulary:
    """Read and parse a UTF-8 vocabulary file (``check_term``: see :func:`parse_vocabulary`).

    Raises:
        VocabularyError: the path does not exist or cannot be read (directory, permissions), holds bytes that are not
            UTF-8 (reports the line of the first bad byte), or fails :func:`parse_vocabulary`.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise VocabularyError(f"vocabulary file not found: {source}") from None
    except OSError as exc:
        raise VocabularyError(f"{source}: cannot read vocabulary file: {exc.strerror or exc}") from exc
    return parse_vocabulary(decode_utf8(data, str(source), VocabularyError), source, check_term)
