"""The run's row rules on fixed-width NumPy arrays: which prediction row of an image is current.

An image is one ``image_id`` (a hash of its ``image_path``, :func:`pipeline.output_shards.image_id`). Of its
prediction and error rows, only those of its newest ``generation`` (0 when a file of an older version recorded
none) count: a later job labeled the image again, or failed on it. Of its prediction rows that count, the first in
file order is the image's (a second row is left by an interrupted write, or by two input rows with one path).

What grows with the run is 8 bytes of id and 4 of generation per row (:class:`RowKeys`), and while the first rows
are found a sorted copy of the ids (8 bytes per row) and a flag per row: never a Python object per row, nor a sort
index (``np.unique(..., return_index=True)`` would hold three 8-byte arrays per row more). Used by the finish
(:mod:`pipeline.output_finish`) and the review's selection (:mod:`pipeline.review.selection`); the evaluation
decides the same rule in Ray tasks instead (:mod:`pipeline.current_rows`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .output_shards import image_id, reading_shard

__all__ = [
    "RowKeys",
    "contains",
    "current_rows",
    "first_rows",
    "generations_of",
    "newest_rows",
    "read_columns",
    "scan_keys",
]

# Rows compared at once against a small sorted array (bounds the temporary arrays of a membership test).
_CHUNK = 1 << 16


@dataclass
class RowKeys:
    """The rows of a run's prediction or error files in reading order: the files, each one's number of rows, and
    per row its image id (int64) and generation (int32)."""

    files: list[Path]
    sizes: list[int]
    ids: np.ndarray
    generations: np.ndarray

    def per_file(self, values: np.ndarray) -> Iterator[tuple[Path, np.ndarray]]:
        """Each file with its rows' part of ``values`` (aligned with :attr:`ids`)."""
        start = 0
        for file, size in zip(self.files, self.sizes, strict=True):
            yield file, values[start : start + size]
            start += size


def read_columns(file: Path, columns: list[str]) -> pa.Table:
    """The ``columns`` of a prediction or error file that it has (a file of an older version may lack some, such
    as ``generation``); a damaged file is named (:func:`reading_shard`). Read with ``ParquetFile``:
    ``pyarrow.parquet.read_table`` sets up a dataset per call, which costs more than reading a small file's column,
    and a run has thousands of files."""
    with reading_shard(file):
        parquet = pq.ParquetFile(file)
        return parquet.read(columns=[c for c in columns if c in parquet.schema_arrow.names])


def generations_of(table: pa.Table) -> np.ndarray:
    """The ``generation`` column of ``table`` as int32, 0 where not recorded (or when the file has no such
    column)."""
    if "generation" not in table.column_names:
        return np.zeros(table.num_rows, np.int32)
    return pc.fill_null(table.column("generation"), 0).to_numpy().astype(np.int32)


def scan_keys(files: list[Path], key: str) -> RowKeys:
    """The ids and generations of ``files``' rows: ``key`` is ``image_id``, or ``image_path`` (error files, whose
    rows have no id) whose :func:`image_id` is taken."""
    ids, generations, sizes = [], [], []
    for file in files:
        table = read_columns(file, [key, "generation"])
        if key == "image_path":
            paths = table.column(key).to_pylist()
            ids.append(np.fromiter(map(image_id, paths), np.int64, len(paths)))
        else:
            ids.append(table.column(key).to_numpy().astype(np.int64))  # a copy: the file's Arrow buffers go
        generations.append(generations_of(table))
        sizes.append(table.num_rows)
    return RowKeys(
        files,
        sizes,
        np.concatenate([np.zeros(0, np.int64), *ids]),
        np.concatenate([np.zeros(0, np.int32), *generations]),
    )


def contains(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per item of ``values``: whether it is in ``sorted_values`` (ascending). A binary search, chunk by chunk:
    ``np.isin`` would sort a concatenation of both arrays, three 8-byte arrays per row of the larger one."""
    found = np.zeros(len(values), bool)
    if not len(sorted_values):
        return found
    for start in range(0, len(values), _CHUNK):
        part = values[start : start + _CHUNK]
        position = np.minimum(np.searchsorted(sorted_values, part), len(sorted_values) - 1)
        found[start : start + len(part)] = sorted_values[position] == part
    return found


def newest_rows(rows: RowKeys, others: RowKeys) -> np.ndarray:
    """Per row of ``rows``: whether its generation is its image's newest among ``rows`` and ``others`` (the
    prediction and the error rows)."""
    generations = np.concatenate([rows.generations, others.generations])
    if not len(rows.ids) or generations.min() == generations.max():  # one job wrote every row: all are newest
        return np.ones(len(rows.ids), bool)
    ids = np.concatenate([rows.ids, others.ids])
    order = np.lexsort((generations, ids))
    ids, generations = ids[order], generations[order]
    del order
    last = np.append(ids[1:] != ids[:-1], True)  # an id's last row, in order of generation: its newest
    newest_ids, newest = ids[last], generations[last]
    return rows.generations == newest[np.searchsorted(newest_ids, rows.ids)]


def first_rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted distinct ``ids``, whether each row is its id's first (in order), and the sorted ids that have
    more than one row."""
    ordered = np.sort(ids)
    repeat = ordered[1:] != ordered[:-1]  # False where a row repeats the id before it
    keep = np.ones(len(ids), bool)
    if repeat.all():
        return ordered, keep, np.zeros(0, np.int64)
    repeated = np.unique(ordered[1:][~repeat])
    distinct = ordered[np.append(True, repeat)]
    del ordered, repeat
    rows = np.flatnonzero(contains(repeated, ids))  # the rows of repeated ids: few
    _, first = np.unique(ids[rows], return_index=True)  # a stable sort: each id's first of them
    keep[rows] = False
    keep[rows[first]] = True
    return distinct, keep, repeated


def current_rows(rows: RowKeys, errors: RowKeys) -> np.ndarray:
    """Per prediction row of ``rows``: whether it is its image's current row (module docstring), given the run's
    ``errors`` rows."""
    newest = newest_rows(rows, errors)
    if newest.all():
        return first_rows(rows.ids)[1]
    kept = np.flatnonzero(newest)
    current = np.zeros(len(rows.ids), bool)
    current[kept[first_rows(rows.ids[kept])[1]]] = True
    return current
