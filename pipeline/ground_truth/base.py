"""The ground-truth reader interface: :class:`GroundTruth`, its errors, and matching predicted images to it.

A reader's :meth:`GroundTruth.read` gives an ``int32 [H, W]`` label map of class indices ``0..K-1`` or
:data:`IGNORE` (-1); :func:`match_predictions` pairs predicted images with ground-truth images by file
stem and shared trailing folders, never silently (the rule: ``docs/evaluation.md``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import cv2
import numpy as np

from san.errors import UserError

__all__ = [
    "IGNORE",
    "GroundTruth",
    "GroundTruthError",
    "LabelValues",
    "Matching",
    "lookup_values",
    "match_predictions",
]

IGNORE = -1
"""Value of ignored pixels in the label maps every reader returns."""

_EXAMPLES = 5
_MAX_VALUE = 65535  # label files and masks are at most 16-bit
_NO_CLASS = -2
_LUT_TYPES = (np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.int32))  # cv2.LUT's


class GroundTruthError(UserError):
    """The ground truth cannot be read or does not fit the predictions; the message says why."""


def lookup_values(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``table[values]`` for ``uint8`` or ``uint16`` ``values`` (of any shape) and a 1-D ``table`` of at least 256
    or 65536 entries: a 2-D ``uint8`` array of an ``int32`` or smaller ``table`` goes through OpenCV's
    ``cv2.LUT`` (a vectorised 256-entry lookup, several times faster than NumPy's indexing), the rest through
    ``np.take`` (faster than ``table[values]``, which first widens the indices to ``intp``)."""
    if values.dtype == np.uint8 and values.ndim == 2 and values.size and table.dtype in _LUT_TYPES:
        return cv2.LUT(values, np.ascontiguousarray(table[:256]))
    return np.take(table, values)


class LabelValues:
    """Raw label values (``0..65535``, as stored in label files and masks) -> class indices.

    Args:
        class_values: the raw value of each class, in class order (value ``class_values[i]`` is class ``i``).
        ignored_values: raw values whose pixels are ignored (:data:`IGNORE`); a class value wins over them, and
            values outside ``0..65535`` (which no label holds) are left out.
    """

    def __init__(self, class_values: Sequence[int], ignored_values: Iterable[int] = ()):
        self._table = np.full(_MAX_VALUE + 1, _NO_CLASS, dtype=np.int32)
        self._table[[int(v) for v in ignored_values if 0 <= int(v) <= _MAX_VALUE]] = IGNORE
        self._table[[int(v) for v in class_values]] = np.arange(len(class_values), dtype=np.int32)

    def classes(self, raw: np.ndarray, what: str, hint: str) -> np.ndarray:
        """The class indices of ``raw`` (integer ``[H, W]``) as int32 ``[H, W]``, :data:`IGNORE` where ignored.

        Raises:
            GroundTruthError: a value outside ``0..65535`` or that names no class (``what`` names the
                file or sample, ``hint`` says which values are classes).
        """
        if raw.dtype not in (np.uint8, np.uint16):  # only these cannot hold a value outside 0..65535
            if raw.size and (raw.min() < 0 or raw.max() > _MAX_VALUE):
                raise GroundTruthError(f"{what} has values outside 0..{_MAX_VALUE}")
            raw = raw.astype(np.uint16)
        labels = lookup_values(self._table, raw)
        if labels.size and labels.min() == _NO_CLASS:  # the smallest value of the table
            shown = ", ".join(str(v) for v in np.unique(raw[labels == _NO_CLASS])[:10])
            raise GroundTruthError(f"{what} has values that name no class: {shown} ({hint})")
        return labels


def _parts(path: str) -> tuple[str, ...]:
    """Path components, '/' or '\\' separated, without a URI scheme and without '.' or empty parts."""
    text = str(path).replace("\\", "/")
    if "://" in text:
        text = text.split("://", 1)[1]
    return tuple(p for p in text.split("/") if p not in ("", "."))


def _stem(path: str) -> str:
    parts = _parts(path)
    return PurePosixPath(parts[-1]).stem if parts else ""


class GroundTruth(ABC):
    """One source of ground-truth label maps (``docs/evaluation.md``).

    Subclasses set :attr:`class_names` and :attr:`description` and implement :meth:`keys`,
    :meth:`path_of` and :meth:`read`; :meth:`match` works from :meth:`path_of` and need only be
    overridden by readers that match images another way.
    """

    #: ground-truth class names; label-map value ``i`` is ``class_names[i]``.
    class_names: tuple[str, ...]
    #: what was read, for messages and metrics.json (e.g. "PNG folder /data/gt (150 classes)").
    description: str
    #: value of ignored pixels in :meth:`read`'s arrays.
    ignore_value: int = IGNORE
    #: raw ground-truth value(s) this reader ignored, for metrics.json; None where not value-based.
    raw_ignore: list[int] | None = None

    @abstractmethod
    def keys(self) -> list[Hashable]:
        """Every ground-truth image's key."""

    @abstractmethod
    def path_of(self, key: Hashable) -> str:
        """The path (or file name) a key stands for; used for matching and in messages."""

    @abstractmethod
    def read(self, key: Hashable) -> np.ndarray:
        """The label map of one image: ``int32 [H, W]``, values ``0..K-1`` or :attr:`ignore_value`.

        Raises:
            GroundTruthError: the file is unreadable or holds a value that names no class.
        """

    def match(self, image_path: str) -> Hashable | None:
        """The key of the ground truth for a predicted ``image_path``, or None (rule: ``docs/evaluation.md``).

        Raises:
            GroundTruthError: two or more ground-truth images fit equally well.
        """
        index = self._stem_index()
        candidates = index.get(_stem(image_path), [])
        if not candidates:
            return None
        pred = _parts(image_path)
        pred_text = str(image_path).replace("\\", "/")

        def score(key: Hashable) -> tuple[int, int, int]:
            gt_path = self.path_of(key)
            gt = _parts(gt_path)
            shared = 0
            while shared + 1 < min(len(pred), len(gt)) and pred[-2 - shared] == gt[-2 - shared]:
                shared += 1
            return (int(gt_path.replace("\\", "/") == pred_text), shared, int(gt[-1] == pred[-1]))

        scored = sorted(((score(k), k) for k in candidates), key=lambda item: item[0], reverse=True)
        best = [k for s, k in scored if s == scored[0][0]]
        if len(best) > 1:
            shown = ", ".join(repr(self.path_of(k)) for k in best[:_EXAMPLES])
            raise GroundTruthError(f"ambiguous ground truth for {image_path!r}: it fits {shown} equally well")
        return best[0]

    def _stem_index(self) -> dict[str, list[Hashable]]:
        index = getattr(self, "_index_cache", None)
        if index is None:
            index = {}
            for key in self.keys():
                index.setdefault(_stem(self.path_of(key)), []).append(key)
            self._index_cache = index
        return index


@dataclass
class Matching:
    """Which predicted images have ground truth (from :func:`match_predictions`)."""

    matched: dict[str, Hashable]
    predictions_without_ground_truth: list[str]
    ground_truth_without_prediction: list[str]
    shared_ground_truth: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts and a few examples, JSON-serialisable."""
        return {
            "matched": len(self.matched),
            "predictions_without_ground_truth": len(self.predictions_without_ground_truth),
            "predictions_without_ground_truth_examples": self.predictions_without_ground_truth[:_EXAMPLES],
            "ground_truth_without_prediction": len(self.ground_truth_without_prediction),
            "ground_truth_without_prediction_examples": self.ground_truth_without_prediction[:_EXAMPLES],
            "ground_truth_matched_by_several_predictions": len(self.shared_ground_truth),
            "ground_truth_matched_by_several_predictions_examples": {
                k: v for k, v in list(self.shared_ground_truth.items())[:_EXAMPLES]
            },
        }


def match_predictions(gt: GroundTruth, image_paths: Iterable[str]) -> Matching:
    """Match every predicted image to its ground truth.

    Raises:
        GroundTruthError: nothing matches at all (the message shows examples of both sides), or a
            match is ambiguous.
    """
    matched: dict[str, Hashable] = {}
    missing: list[str] = []
    users: dict[Hashable, list[str]] = {}
    paths = list(image_paths)
    for path in paths:
        key = gt.match(path)
        if key is None:
            missing.append(path)
        else:
            matched[path] = key
            users.setdefault(key, []).append(path)
    unused = [gt.path_of(k) for k in gt.keys() if k not in users]
    shared = {gt.path_of(k): v for k, v in users.items() if len(v) > 1}
    if not matched:
        pred_examples = ", ".join(repr(p) for p in paths[:3]) or "none"
        gt_examples = ", ".join(repr(p) for p in unused[:3]) or "none"
        raise GroundTruthError(
            f"no predicted image matches any ground-truth image of {gt.description} (images are matched by "
            f"file name without extension); predicted images, e.g.: {pred_examples}; ground truth, e.g.: "
            f"{gt_examples}"
        )
    return Matching(matched, missing, unused, shared)
