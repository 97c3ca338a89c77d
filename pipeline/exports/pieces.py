"""A parallel export's rows: the pieces Ray tasks take (:class:`FilePiece`, one prediction file of the run;
:class:`RowsPiece`, a batch of a reviewed dataset's images, read on the driver), what a first pass learns of each
piece (:class:`Survey`: small arrays), the plan made from all of them (:func:`plan_rows`), and the rows a task
exports of its piece, each with its file name (:func:`piece_rows`).

The run's row rules are those of :meth:`pipeline.outputs.RunOutput.iter_predictions`: an image's rows of its newest
job only (its prediction or error rows: an image a later job failed on is left out), then each image once (its
first row in the files' order). A reviewed dataset's images come first and replace the run's rows of the same
image (``run+fiftyone:``). An image is its ``image_id`` (a hash of its path; the run refuses two paths with one id).
File names are :func:`pipeline.exports.files.file_name`'s: the image's path below the folders all images share; the
first image of a name (case-insensitively) keeps it, a later one gets ``.<image_id>``, as
:func:`~pipeline.exports.files.mask_file_names` names them. Names are compared by a 64-bit hash
(:func:`~pipeline.exports.files.clash_key`): two names that differ but hash alike (about one chance in 10**7 at a
million images) would only add an id to the second.

Memory: the plan is made (in a Ray task, :mod:`pipeline.exports.parallel`, not on the driver) in NumPy from 16 bytes
per image (id and name key) and about 23 bytes per image more while it is made (repeats are found on a sorted copy,
never with a sort index) and holds afterwards only the indices of rows left out or renamed (usually none).
"""

from __future__ import annotations

import array
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import reduce

import numpy as np
import pyarrow.compute as pc

from ..label.inputs import image_id as path_image_id
from ..output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA, read_shard, shard_batches
from ..row_rules import contains
from ..sources.base import LabeledImage
from .files import clash_key, common_parents, file_name, name_parents

__all__ = [
    "REVIEWED",
    "FilePiece",
    "RowPlan",
    "RowsPiece",
    "Survey",
    "piece_rows",
    "plan_rows",
    "survey_file",
    "survey_keys",
]

#: The generation of a reviewed dataset's images: newer than any of the run's rows of the same image.
REVIEWED = np.iinfo(np.int64).max
_BATCH_ROWS = 64  # rows of a prediction file read into a task's memory at once


@dataclass(frozen=True)
class FilePiece:
    """One prediction file of the run, ``rows`` rows long."""

    file: str
    rows: int


@dataclass(frozen=True)
class RowsPiece:
    """A batch of a reviewed dataset's images."""

    images: tuple[LabeledImage, ...]

    @property
    def rows(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Survey:
    """What the plan needs of a piece's rows (or of an error file's): per row its image id, its generation (one
    value when all rows share it) and its name's :func:`clash_key` (none for error rows); the folders its images
    share (``None``: no rows) and their common folder (for Label Studio's image root)."""

    ids: np.ndarray
    generations: np.ndarray
    keys: np.ndarray
    parents: tuple[str, ...] | None
    folder: str | None

    def generation(self, rows: np.ndarray) -> np.ndarray:
        return np.full(len(rows), self.generations[0]) if len(self.generations) == 1 else self.generations[rows]


@dataclass(frozen=True)
class RowPlan:
    """What every task applies to its rows: the global indices (sorted) of the rows left out and of those whose
    name gets ``.<image_id>``, how many leading folders all images share, and their common folder."""

    drop: np.ndarray
    with_id: np.ndarray
    common: int
    folder: str


def _survey(pairs: Iterable[tuple[str, int]], generations: np.ndarray | None) -> Survey:
    """The :class:`Survey` of rows ``(image_path, image_id)`` (one pass: 16 bytes per row are kept, as arrays) of
    ``generations`` (``None``: a reviewed dataset's rows, :data:`REVIEWED`)."""
    ids, keys = array.array("q"), array.array("q")
    parents: tuple[str, ...] | None = None
    folder: str | None = None
    for path, image_id in pairs:
        ids.append(image_id)
        keys.append(clash_key(path, image_id))
        parents = common_parents(parents, name_parents(path))
        parent = os.path.dirname(os.path.abspath(path))
        folder = parent if folder is None else os.path.commonpath([folder, parent])
    if generations is None:
        generations = np.full(1 if ids else 0, REVIEWED, np.int64)
    single = len(generations) and (generations == generations[0]).all()
    return Survey(
        ids=np.frombuffer(ids, np.int64).copy(),
        generations=generations[:1] if single else generations,
        keys=np.frombuffer(keys, np.int64).copy(),
        parents=parents,
        folder=folder,
    )


def survey_file(file: str, errors: bool = False) -> Survey:
    """The :class:`Survey` of a prediction file (``errors``: of an error file, ids and generations only)."""
    schema = ERROR_SCHEMA if errors else PREDICTION_SCHEMA
    columns = ["image_path", "generation"] if errors else ["image_path", "image_id", "generation"]
    table = read_shard(file, columns=columns, schema=schema)
    paths = table.column("image_path").to_pylist()
    generations = pc.fill_null(table.column("generation"), 0).to_numpy().astype(np.int64)
    if errors:
        ids = np.fromiter(map(path_image_id, paths), np.int64, len(paths))
        single = len(generations) and (generations == generations[0]).all()
        return Survey(ids, generations[:1] if single else generations, np.zeros(0, np.int64), None, None)
    ids = table.column("image_id").to_numpy().astype(np.int64)
    return _survey(zip(paths, ids.tolist(), strict=True), generations)


def survey_keys(keys: Iterable[tuple[str, int]]) -> Survey:
    """The :class:`Survey` of a reviewed dataset's images from their ``(image_path, image_id)``, read once (16 bytes
    per image are kept)."""
    return _survey(keys, None)


def _generations(surveys: list[Survey], offsets: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The generation of each global row ``index`` (rows of ``surveys`` one after the other from ``offsets``)."""
    pieces = np.searchsorted(offsets, index, side="right") - 1
    out = np.empty(len(index), np.int64)
    for piece in np.unique(pieces):
        chosen = pieces == piece
        out[chosen] = surveys[piece].generation(index[chosen] - offsets[piece])
    return out


def _repeated(values: np.ndarray) -> np.ndarray:
    """The sorted values that occur more than once in ``values`` (a sorted copy, 8 bytes per row, while it is
    found: not a sort index as well)."""
    ordered = np.sort(values)
    return np.unique(ordered[1:][ordered[1:] == ordered[:-1]])


def _left_out(surveys: list[Survey], errors: list[Survey]) -> np.ndarray:
    """The global indices of the rows of ``surveys`` that the row rules leave out (sorted): only rows of an id that
    occurs more than once (with the error rows) are looked at. Not :func:`pipeline.row_rules.current_rows`: a
    survey gives a row's generation only on demand (``_generations``: a reviewed image's outranks every job's), so
    no generation per row is held."""
    every = [*surveys, *errors]
    offsets = np.concatenate([[0], np.cumsum([len(s.ids) for s in every])])
    rows = int(offsets[len(surveys)])
    ids = np.concatenate([s.ids for s in every]) if every else np.zeros(0, np.int64)
    index = np.flatnonzero(contains(_repeated(ids), ids))  # the rows of repeated ids: few
    group_ids = ids[index]
    del ids
    if not len(index):
        return np.zeros(0, np.int64)
    order = np.argsort(group_ids, kind="stable")
    index, group_ids = index[order], group_ids[order]  # each id's rows in the files' order
    starts = np.flatnonzero(np.r_[True, group_ids[1:] != group_ids[:-1]])
    lengths = np.diff(np.r_[starts, len(index)])
    generations = _generations(every, offsets, index)
    newest = np.repeat(np.maximum.reduceat(generations, starts), lengths)
    eligible = np.flatnonzero((index < rows) & (generations == newest))
    group = np.repeat(np.arange(len(starts)), lengths)
    _, first = np.unique(group[eligible], return_index=True)
    return np.setdiff1d(index[index < rows], index[eligible[first]])


def _renamed(kept_keys: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """The global indices (sorted) of the exported rows whose name an earlier exported row has, from the name keys
    of the rows exported (those left out, ``drop``, already removed)."""
    rows = np.flatnonzero(contains(_repeated(kept_keys), kept_keys))  # the rows of repeated names: few
    _, first = np.unique(kept_keys[rows], return_index=True)  # each name's first row
    renamed = np.delete(rows, first)
    # an exported row's global index: its position among the exported rows plus the rows left out before it
    return renamed + np.searchsorted(drop - np.arange(len(drop)), renamed, side="right")


def plan_rows(surveys: list[Survey], errors: list[Survey]) -> tuple[RowPlan, np.ndarray]:
    """The :class:`RowPlan` of the pieces ``surveys`` (in the export's order) with the run's ``errors`` files, and
    the sorted ids of the images exported."""
    drop = _left_out(surveys, errors)
    keys = np.concatenate([s.keys for s in surveys]) if surveys else np.zeros(0, np.int64)
    if len(drop):
        keys = np.delete(keys, drop)
    with_id = _renamed(keys, drop)
    del keys
    wanted = np.concatenate([s.ids for s in surveys]) if surveys else np.zeros(0, np.int64)
    if len(drop):
        wanted = np.delete(wanted, drop)
    wanted.sort()  # the exported images' ids are distinct (the rows left out are their repeats)
    parents = reduce(common_parents, [s.parents for s in surveys], None)
    folders = [s.folder for s in surveys if s.folder is not None]
    plan = RowPlan(drop, with_id, len(parents or ()), os.path.commonpath(folders) if folders else "")
    return plan, wanted


def _file_images(piece: FilePiece) -> Iterator[LabeledImage]:
    """A prediction file's rows, ``_BATCH_ROWS`` at a time."""
    columns = ["image_path", "image_id", "label_map_png", "segments"]
    for table in shard_batches(piece.file, columns, _BATCH_ROWS):
        for row in table.to_pylist():
            yield LabeledImage(row["image_path"], int(row["image_id"]), row["label_map_png"], row["segments"])


def _within(indices: np.ndarray, offset: int, rows: int) -> set[int]:
    """The members of the sorted global ``indices`` among a piece's rows, as the piece's own row numbers."""
    low, high = np.searchsorted(indices, [offset, offset + rows])
    return set((indices[low:high] - offset).tolist())


def piece_rows(piece: FilePiece | RowsPiece, offset: int, plan: RowPlan) -> Iterator[tuple[LabeledImage, str]]:
    """The images of ``piece`` (whose first row is global row ``offset``) that ``plan`` exports, in order, each with
    its file name (without suffix)."""
    drop, with_id = _within(plan.drop, offset, piece.rows), _within(plan.with_id, offset, piece.rows)
    images = piece.images if isinstance(piece, RowsPiece) else _file_images(piece)
    for row, image in enumerate(images):
        if row not in drop:
            name = file_name(image.image_path, image.image_id, plan.common, with_id=row in with_id)
            yield image, name
