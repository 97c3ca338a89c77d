"""Which prediction rows of a run count, decided in Ray tasks: the driver never holds the run's paths.

The rule is :meth:`pipeline.outputs.RunOutput.read_predictions`': of an ``image_path``'s rows (prediction and
error rows together; a row without a generation is of generation 0), those of its newest generation count, and of
those the first prediction row in file order (files sorted by name, then rows in file order). A prediction row is
named by its *ordinal*, ``file index << 32 | row``, where the file index is its position in
:func:`pipeline.output_shards.shard_files` of ``predictions/``: ordinals sort in file order.

:func:`dropped_rows` runs it as a small hash shuffle: tasks read ``image_path`` and ``generation`` of groups of
files and split the rows by a hash of the path; one task per part finds the paths with more than one row and
returns the ordinals of the rows that do not count (none, in a run without repeats). Ray Data's ``groupby`` would
do the same with a sort of every row and seconds of start-up per run; these are plain Arrow group-bys over a part.
The same rule in one process is :mod:`pipeline.row_rules` (the finish, the review's selection); it holds 12 bytes
per row on the driver, where the evaluation keeps the driver's memory constant.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from .output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA, read_shard

__all__ = ["FILES_PER_TASK", "dropped_rows", "kept_rows", "ordinals", "split_ordinal"]

# Files whose paths one task reads and splits.
FILES_PER_TASK = 64
# Parts of the shuffle.
_PARTS = 8
_ROW_BITS = 32
_KEY_SCHEMA = pa.schema([("image_path", pa.string()), ("generation", pa.int64()), ("ordinal", pa.int64())])


def ordinals(file_index: int, rows: int) -> np.ndarray:
    """The ordinals of the first ``rows`` rows of prediction file ``file_index``."""
    return (np.int64(file_index) << _ROW_BITS) | np.arange(rows, dtype=np.int64)


def split_ordinal(ordinal: int) -> tuple[int, int]:
    """The file index and row of an ordinal."""
    return ordinal >> _ROW_BITS, ordinal & ((1 << _ROW_BITS) - 1)


def kept_rows(file_index: int, rows: int, dropped: list[np.ndarray]) -> np.ndarray:
    """Which of the ``rows`` rows of prediction file ``file_index`` count (bool ``[rows]``), given the arrays of
    :func:`dropped_rows` (resolved)."""
    keep = np.ones(rows, dtype=bool)
    for part in dropped:
        mine = part[(part >> _ROW_BITS) == file_index] & ((1 << _ROW_BITS) - 1)
        keep[mine] = False
    return keep


@ray.remote
def _split_paths(files: list[tuple[int, str]], prediction_files: bool) -> list[pa.Table]:
    """``image_path``, ``generation`` (0 for none) and ordinal (-1: an error row) of ``files`` (``(file index,
    path)``), one table per part of the hash of the path."""
    schema = PREDICTION_SCHEMA if prediction_files else ERROR_SCHEMA
    tables = []
    for index, file in files:
        table = read_shard(Path(file), columns=["image_path", "generation"], schema=schema)
        rows = ordinals(index, table.num_rows) if prediction_files else np.full(table.num_rows, -1, np.int64)
        generation = pc.fill_null(table.column("generation"), 0).cast(pa.int64())
        tables.append(pa.table([table.column("image_path"), generation, pa.array(rows)], schema=_KEY_SCHEMA))
    table = pa.concat_tables(tables) if tables else _KEY_SCHEMA.empty_table()
    # A hash every process computes alike (Python's str hash is salted per process).
    part = np.fromiter((zlib.crc32(p.encode("utf-8")) % _PARTS for p in table.column(0).to_pylist()), np.int64)
    return [table.filter(pa.array(part == i)) for i in range(_PARTS)]


@ray.remote
def _dropped_in_part(*tables: pa.Table) -> np.ndarray:
    """The sorted ordinals of the prediction rows of one part that do not count (module docstring)."""
    if not tables:
        return np.empty(0, np.int64)
    table = pa.concat_tables(tables)
    grouped = table.group_by("image_path").aggregate([("generation", "max"), ("image_path", "count")])
    repeated = grouped.filter(pc.greater(grouped.column("image_path_count"), 1)).select(
        ["image_path", "generation_max"]
    )
    if not repeated.num_rows:
        return np.empty(0, np.int64)
    rows = table.join(repeated, "image_path", join_type="inner")
    rows = rows.filter(pc.greater_equal(rows.column("ordinal"), 0))
    newest = rows.filter(pc.equal(rows.column("generation"), rows.column("generation_max")))
    first = newest.group_by("image_path").aggregate([("ordinal", "min")])
    rows = rows.join(first, "image_path", join_type="left outer")
    keep = pc.fill_null(pc.equal(rows.column("ordinal"), rows.column("ordinal_min")), False)
    return np.sort(rows.filter(pc.invert(keep)).column("ordinal").to_numpy())


def dropped_rows(prediction_files: list[Path], error_files: list[Path]) -> list[ray.ObjectRef]:
    """References to sorted int64 arrays of the ordinals of the prediction rows that do not count (a row of an
    image labeled again since, or failed on since, or a repeat of a path): pass them to the tasks that read the
    files, for :func:`kept_rows`."""
    kinds = [(True, list(enumerate(map(str, prediction_files)))), (False, list(enumerate(map(str, error_files))))]
    groups = [
        (kind, files[i : i + FILES_PER_TASK]) for kind, files in kinds for i in range(0, len(files), FILES_PER_TASK)
    ]
    split = [_split_paths.options(num_returns=_PARTS).remote(files, kind) for kind, files in groups]
    return [_dropped_in_part.remote(*(refs[i] for refs in split)) for i in range(_PARTS)]
