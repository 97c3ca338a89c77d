"""The Ray tasks of :func:`pipeline.evaluate.evaluate_run`: what reads label maps and ground truth runs on the
cluster, and the driver receives only confusion matrices and small counts.

- :func:`open_ground_truth_remote` opens the ground truth on a worker: the reader (its list of images can hold a
  million paths) stays in the object store, and the driver gets its :class:`GroundTruthInfo`.
- :func:`score_file`, one task per prediction file: the rows that count (:mod:`pipeline.current_rows`), each
  matched to its ground truth (:meth:`pipeline.ground_truth.base.GroundTruth.match`), decoded and counted
  (:class:`PixelCounter`: one ``np.bincount`` per image) into the file's confusion matrix. The driver gets a
  :class:`FileScore`; the :class:`FileMatches` (which ground-truth image each image matched, and per-image counts
  for a sample estimate) stay in the object store for :func:`summarise`.
- :func:`merge_matches` joins the :class:`FileMatches` of consecutive files into one, in their order, so that the
  driver holds a few references however many files there are.
- :func:`summarise` turns the matches into ``metrics.json``'s ``matching`` summary (as
  :meth:`pipeline.ground_truth.base.Matching.summary`) and, asked for, the sample estimate
  (:func:`san.sample_estimate.sample_estimate`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from san.errors import UserError
from san.metrics import ConfusionMatrix
from san.sample_estimate import image_counts, sample_estimate

from .current_rows import kept_rows, ordinals, split_ordinal
from .ground_truth import open_ground_truth
from .ground_truth.base import IGNORE, GroundTruth, GroundTruthError, lookup_values
from .output_shards import read_shard, shard_batches
from .segments import decode_label_map_png

__all__ = [
    "EXAMPLES",
    "EvaluationError",
    "FileMatches",
    "FileScore",
    "GroundTruthInfo",
    "PixelCounter",
    "Scoring",
    "merge_matches",
    "open_ground_truth_remote",
    "score_file",
    "summarise",
]

# Examples that metrics.json names of each kind of unmatched image (as Matching.summary).
EXAMPLES = 5
# Label maps read into memory at once by a task.
_BATCH_ROWS = 16


class EvaluationError(UserError):
    """The run output and the ground truth cannot be compared; the message says why."""


@dataclass(frozen=True)
class GroundTruthInfo:
    """What the driver needs of the ground truth: its classes, how it is described and ignored, its size."""

    class_names: tuple[str, ...]
    description: str
    ignore_value: int
    raw_ignore: list[int] | None
    images: int


@dataclass(frozen=True)
class Scoring:
    """What every :func:`score_file` task shares (one object in the object store)."""

    lookup: np.ndarray  # vocabulary class index -> ground-truth class index, num_classes for "wrong"
    num_classes: int
    ignore_value: int
    per_image: bool  # keep each image's counts, for a sample estimate


@dataclass
class FileScore:
    """What the driver receives of one prediction file."""

    matrix: np.ndarray  # [K, K + 1] int64
    rows: int  # prediction rows that count
    images: int  # of those, the ones with ground truth (scored)
    missing: int  # of those, the ones without
    missing_examples: list[tuple[int, str]] = field(default_factory=list)  # (ordinal, path), first ones


@dataclass
class FileMatches:
    """Which ground-truth image each scored image of a file matched (index in ``keys()``), by ordinal, and with a
    sample estimate each image's :func:`san.sample_estimate.image_counts` (``[images, 3, K]``)."""

    keys: np.ndarray
    ordinals: np.ndarray
    counts: np.ndarray | None

    @staticmethod
    def joined(parts: Sequence[FileMatches]) -> FileMatches:
        """The images of ``parts`` (those of consecutive files, in file order) as one, in the same order: the
        sample estimate's bootstrap draws images by their position."""
        counts = None if parts[0].counts is None else np.concatenate([p.counts for p in parts])
        return FileMatches(np.concatenate([p.keys for p in parts]), np.concatenate([p.ordinals for p in parts]), counts)


# This worker process's ground truth, with each key's index: unpickling a reader of a million images takes
# seconds, so each worker does it once for all its tasks, not once per task. One entry: the last one used.
_OPENED: dict[str, tuple[GroundTruth, dict[Hashable, int]]] = {}


def _ground_truth(holder: Sequence[ray.ObjectRef]) -> tuple[GroundTruth, dict[Hashable, int]]:
    """The reader in ``holder[0]`` (a list, so that Ray does not resolve it for each task) and its key index."""
    name = holder[0].hex()
    if name not in _OPENED:
        _OPENED.clear()
        gt: GroundTruth = ray.get(holder[0])
        _OPENED[name] = (gt, {key: i for i, key in enumerate(gt.keys())})
    return _OPENED[name]


@ray.remote(num_returns=2)
def open_ground_truth_remote(
    spec: str, gt_classes: str | None, vocabulary_names: Sequence[str], ignore_index: int
) -> tuple[GroundTruth, GroundTruthInfo]:
    """:func:`pipeline.ground_truth.open_ground_truth` on a worker: the reader and its :class:`GroundTruthInfo`."""
    gt = open_ground_truth(spec, gt_classes, vocabulary_names, ignore_index)
    info = GroundTruthInfo(gt.class_names, gt.description, gt.ignore_value, gt.raw_ignore, len(gt.keys()))
    return gt, info


@ray.remote(num_returns=2)
def score_file(
    file_index: int, file: str, scoring: Scoring, holder: list[ray.ObjectRef], *dropped: np.ndarray
) -> tuple[FileScore, FileMatches]:
    """Score the rows of prediction file ``file`` that count (``dropped``: :func:`pipeline.current_rows.dropped_rows`
    resolved) against their ground truth.

    Raises:
        EvaluationError, GroundTruthError: as :func:`pipeline.evaluate.evaluate_run`.
    """
    gt, key_index = _ground_truth(holder)
    path = Path(file)
    paths = read_shard(path, columns=["image_path"]).column("image_path").to_pylist()
    row_ordinals = ordinals(file_index, len(paths))
    kept = np.flatnonzero(kept_rows(file_index, len(paths), list(dropped)))
    score = FileScore(np.zeros((scoring.num_classes, scoring.num_classes + 1), np.int64), len(kept), 0, 0)
    matched: dict[int, Hashable] = {}  # row -> ground-truth key
    for row in kept:
        key = gt.match(paths[row])
        if key is None:
            score.missing += 1
            if len(score.missing_examples) < EXAMPLES:
                score.missing_examples.append((int(row_ordinals[row]), paths[row]))
        else:
            matched[int(row)] = key
    counts = []
    if matched:
        pixels = PixelCounter(scoring)
        matrix = np.zeros(pixels.bins, np.int64)
        for row, label_map in _label_maps(path, paths, matched):
            image = pixels.count(gt, matched[row], paths[row], label_map)
            matrix += image
            if scoring.per_image:
                counts.append(image_counts(pixels.matrix(image)))
        score.matrix = pixels.matrix(matrix)
    score.images = len(matched)
    rows = np.fromiter(matched, np.int64, len(matched))
    keys = np.fromiter((key_index[matched[r]] for r in rows), np.int64, len(rows))
    per_image = np.stack(counts) if counts else np.zeros((0, 3, scoring.num_classes), np.int64)
    return score, FileMatches(keys, row_ordinals[rows], per_image if scoring.per_image else None)


def _label_maps(path: Path, paths: list[str], rows: dict[int, Hashable]) -> Iterator[tuple[int, np.ndarray]]:
    """``(row, label map)`` of the wanted ``rows`` of the file, at most :data:`_BATCH_ROWS` label maps read at once."""
    start = 0
    for table in shard_batches(path, ["label_map_png"], _BATCH_ROWS):
        column = table.column(0)
        for row in range(start, start + table.num_rows):
            if row in rows:
                try:
                    yield row, decode_label_map_png(column[row - start].as_py())
                except ValueError as exc:
                    raise EvaluationError(f"prediction of {paths[row]!r}: {exc}") from None
        start += table.num_rows


class PixelCounter:
    """One image's pixels counted into a confusion matrix, with one ``np.bincount`` over ``row * (K + 1) +
    column``: the row is the ground-truth class + 1 (0 for an ignored pixel, so that no mask is needed), the column
    the predicted class mapped to the ground truth's (K: wrong or unlabeled). Counts come flat, ``[(K + 1) ** 2]``;
    :meth:`matrix` drops the ignored row. The same counts as :meth:`san.metrics.ConfusionMatrix.update`, which
    still gives the message of a ground-truth value outside the classes."""

    def __init__(self, scoring: Scoring):
        k = scoring.num_classes
        self._k = k
        self._scoring = scoring
        self.bins = (k + 1) * (k + 1)
        self._code_type = np.int32 if self.bins <= np.iinfo(np.int32).max else np.int64
        self._columns: dict[np.dtype, np.ndarray] = {}
        for dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):  # a label map's class -> column, by its type
            columns = scoring.lookup[: np.iinfo(dtype).max + 1].astype(np.int32)
            columns[np.iinfo(dtype).max] = k  # the "unlabeled" value (segments.unlabeled_value)
            self._columns[dtype] = columns

    def count(self, gt: GroundTruth, key: Hashable, image_path: str, label_map: np.ndarray) -> np.ndarray:
        """The flat counts of one image (``label_map``: a decoded prediction) against its ground truth ``key``.

        Raises:
            EvaluationError: the two differ in size.
            GroundTruthError: the ground truth holds a value that is neither a class nor ignored.
        """
        truth = gt.read(key)
        if truth.shape != label_map.shape:
            raise EvaluationError(
                f"size mismatch for {image_path!r}: the prediction is {label_map.shape[1]}x{label_map.shape[0]} "
                f"(WxH) but its ground truth {gt.path_of(key)!r} is {truth.shape[1]}x{truth.shape[0]}"
            )
        columns = lookup_values(self._columns[label_map.dtype], label_map)
        if self._scoring.ignore_value == IGNORE and np.issubdtype(truth.dtype, np.integer):
            code = truth.astype(self._code_type)
            code += 1
            code *= self._k + 1
            code += columns
            try:
                counts = np.bincount(code.reshape(-1), minlength=self.bins)
            except ValueError:  # a value below IGNORE: ConfusionMatrix says which
                counts = None
            if counts is not None and len(counts) == self.bins:  # longer: a value of K or more
                return counts
        matrix = ConfusionMatrix(self._k, self._scoring.ignore_value)
        try:
            matrix.update(columns, truth)
        except ValueError as exc:
            raise GroundTruthError(f"ground truth {gt.path_of(key)!r}: {exc}") from None
        return np.concatenate([np.zeros(self._k + 1, np.int64), matrix.matrix.reshape(-1)])

    def matrix(self, counts: np.ndarray) -> np.ndarray:
        """The ``[K, K + 1]`` int64 confusion matrix of flat counts (the ignored row dropped)."""
        return counts.reshape(self._k + 1, self._k + 1)[1:].astype(np.int64, copy=True)


@ray.remote
def merge_matches(*parts: FileMatches) -> FileMatches:
    """:meth:`FileMatches.joined` in a task: ``parts``, the matches of consecutive files in file order, as one."""
    return FileMatches.joined(parts)


@ray.remote
def summarise(
    holder: list[ray.ObjectRef],
    files: list[str],
    matches: list[ray.ObjectRef],
    missing: int,
    missing_examples: list[str],
    estimate: dict[str, Any] | None,
) -> dict[str, Any]:
    """``{"matching": Matching.summary()'s dict, "sample_estimate": sample_estimate(**estimate) or None}`` from
    the :class:`FileMatches` of every file (``matches``: each of consecutive files, :func:`merge_matches`, in file
    order), and the driver's count and first examples of images without ground truth.

    Raises:
        GroundTruthError: no image matched (as :func:`pipeline.ground_truth.base.match_predictions`).
    """
    gt, key_index = _ground_truth(holder)
    found = FileMatches.joined(ray.get(matches))
    keys, rows = found.keys, found.ordinals
    all_keys = list(key_index)
    uses = np.bincount(keys, minlength=len(all_keys))
    unused = np.flatnonzero(uses == 0)
    if not len(keys):
        pred_examples = ", ".join(repr(p) for p in missing_examples[:3]) or "none"
        gt_examples = ", ".join(repr(gt.path_of(all_keys[k])) for k in unused[:3]) or "none"
        raise GroundTruthError(
            f"no predicted image matches any ground-truth image of {gt.description} (images are matched by "
            f"file name without extension); predicted images, e.g.: {pred_examples}; ground truth, e.g.: "
            f"{gt_examples}"
        )
    shared = np.flatnonzero(uses > 1)
    first_use = np.full(len(all_keys), np.iinfo(np.int64).max)
    np.minimum.at(first_use, keys, rows)
    shown = shared[np.argsort(first_use[shared], kind="stable")][:EXAMPLES]
    names = _PathsByOrdinal(files)
    matching = {
        "matched": len(keys),
        "predictions_without_ground_truth": missing,
        "predictions_without_ground_truth_examples": missing_examples[:EXAMPLES],
        "ground_truth_without_prediction": len(unused),
        "ground_truth_without_prediction_examples": [gt.path_of(all_keys[k]) for k in unused[:EXAMPLES]],
        "ground_truth_matched_by_several_predictions": len(shared),
        "ground_truth_matched_by_several_predictions_examples": {
            gt.path_of(all_keys[k]): [names[o] for o in np.sort(rows[keys == k])] for k in shown
        },
    }
    result: dict[str, Any] = {"matching": matching, "sample_estimate": None}
    if estimate is not None:
        result["sample_estimate"] = sample_estimate(found.counts, **estimate)
    return result


class _PathsByOrdinal:
    """The ``image_path`` of a prediction row by its ordinal, each file read once."""

    def __init__(self, files: list[str]):
        self._files = files
        self._paths: dict[int, list[str]] = {}

    def __getitem__(self, ordinal: int) -> str:
        index, row = split_ordinal(int(ordinal))
        if index not in self._paths:
            table = read_shard(Path(self._files[index]), columns=["image_path"])
            self._paths[index] = table.column("image_path").to_pylist()
        return self._paths[index][row]
