"""The Parquet files of a labeling run's output folder: their schemas (docs/labeling.md), how a file is written
(whole or absent, named by its rows) and read (a damaged file named in one line), and the row filters that keep
each image once."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from san.atomic import write_atomic
from san.errors import UserError

__all__ = [
    "ERROR_SCHEMA",
    "PREDICTION_SCHEMA",
    "SEGMENT_TYPE",
    "ANNOTATIONS_COLUMN",
    "DamagedFileError",
    "error_files_newest_first",
    "fingerprint_key",
    "first_per_path",
    "image_id",
    "newest_only",
    "read_shard",
    "reading_shard",
    "set_aside_name",
    "shard_batches",
    "shard_files",
    "with_prediction_columns",
    "write_shard_file",
]

SEGMENT_TYPE = pa.struct(
    [
        ("category_id", pa.int64()),
        ("category_name", pa.string()),
        ("rle", pa.string()),
        ("area", pa.int64()),
        ("bbox", pa.list_(pa.float64())),
        ("score", pa.float64()),
    ]
)
PREDICTION_SCHEMA = pa.schema(
    [
        ("image_path", pa.string()),
        ("image_id", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("label_map_png", pa.binary()),
        ("segments", pa.list_(SEGMENT_TYPE)),
        ("image_fingerprint", pa.string()),
        ("generation", pa.int64()),
    ]
)
ERROR_SCHEMA = pa.schema([("image_path", pa.string()), ("error", pa.string()), ("generation", pa.int64())])
#: The column that a prediction file holds beside ``PREDICTION_SCHEMA``'s: each image's COCO annotations as text
#: (:func:`pipeline.exports.coco.annotation_lines`), written with the file so that both are whole or absent
#: together, and stitched into ``coco.json`` at the end of the run; absent in files of older versions.
ANNOTATIONS_COLUMN = "coco_annotations"


class DamagedFileError(UserError):
    """A prediction or error file of the run that cannot be read; the message names it and the way forward."""

    reason = ""  # why it cannot be read, as pyarrow says


def write_shard_file(table: pa.Table, folder: Path, row_group_size: int | None = None) -> Path:
    """Write ``table`` as ``part-<hash of its image paths>.parquet`` (in row groups of ``row_group_size`` rows;
    ``None``: pyarrow's default): a Ray task retried after it wrote (its worker died before reporting) writes the
    same rows under the same name, replacing the file instead of adding a copy of its rows."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256("\0".join(table.column("image_path").to_pylist()).encode("utf-8")).hexdigest()[:32]
    path = folder / f"part-{digest}.parquet"
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size))


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet")) if folder.exists() else []


def error_files_newest_first(folder: Path) -> list[Path]:
    """The error files of ``folder``, the most recently written first (a path's newest reason is its first row)."""
    return sorted(shard_files(folder), key=lambda shard: shard.stat().st_mtime_ns, reverse=True)


def set_aside_name(shard: Path) -> Path:
    """Where a damaged ``part-*.parquet`` is set aside: ``_part-*.parquet.corrupt`` beside it, a name that this
    project's readers, pyarrow's and pandas' folder readers (``_`` prefix) all leave out."""
    return shard.with_name(f"_{shard.name}.corrupt")


@contextlib.contextmanager
def reading_shard(shard: Path) -> Iterator[None]:
    """Turn a failure to read ``shard`` (a prediction or error file) into a :class:`DamagedFileError` naming it."""
    try:
        yield
    except (pa.ArrowException, OSError) as error:  # truncated, not Parquet, wrong columns, unreadable
        reason = " ".join(str(error).split())
        damaged = DamagedFileError(
            f"{shard} cannot be read ({reason}); rename it to {set_aside_name(shard).name} and rerun the labeling "
            f"command on {shard.parent.parent} to label its images again"
        )
        damaged.reason = reason
        raise damaged from None


def read_shard(shard: Path, **read: Any) -> pa.Table:
    """``pyarrow.parquet.read_table(shard, **read)``, or a :class:`DamagedFileError` naming ``shard``."""
    with reading_shard(shard):
        return pq.read_table(shard, **read)


def shard_batches(shard: Path, columns: list[str], rows: int) -> Iterator[pa.Table]:
    """The rows of prediction file ``shard``, ``rows`` at a time, as tables of ``columns`` in order (a column the
    file lacks, as :func:`with_prediction_columns` fills it); a damaged file is a :class:`DamagedFileError`, raised
    where it is found, which can be after batches were yielded."""
    with reading_shard(shard):
        file = pq.ParquetFile(shard)
        batches = file.iter_batches(rows, columns=[c for c in columns if c in file.schema_arrow.names])
    while True:
        with reading_shard(shard):
            batch = next(batches, None)
        if batch is None:
            return
        yield with_prediction_columns(pa.Table.from_batches([batch]), columns)


def image_id(image_path: str) -> int:
    """A stable positive id (< 2**53, exact in JSON and JavaScript) derived from the path."""
    return int.from_bytes(hashlib.sha256(image_path.encode("utf-8")).digest()[:8], "big") >> 11


def fingerprint_key(fingerprint: str | None) -> int:
    """An ``image_fingerprint`` as a positive 63-bit number (0 for none recorded), to compare in NumPy arrays."""
    if not fingerprint:
        return 0
    return int.from_bytes(hashlib.sha256(fingerprint.encode("utf-8")).digest()[:8], "big") >> 1 or 1


def with_prediction_columns(table: pa.Table, names: list[str]) -> pa.Table:
    """``table`` with ``names`` in order, a column it lacks (a file of an older version) as nulls of its type."""
    for name in names:
        if name not in table.column_names:
            table = table.append_column(
                PREDICTION_SCHEMA.field(name), pa.nulls(table.num_rows, PREDICTION_SCHEMA.field(name).type)
            )
    return table.select(names)


def newest_only(table: pa.Table, newest: dict[str, int]) -> pa.Table:
    """The rows of ``table`` (``image_path``, ``generation``) that are of their path's newest generation."""
    if not newest:
        return table
    generations = pc.fill_null(table.column("generation"), 0).to_pylist()
    paths = table.column("image_path").to_pylist()
    keep = [newest.get(path, g) == g for path, g in zip(paths, generations, strict=True)]
    return table if all(keep) else table.filter(pa.array(keep, pa.bool_()))


def first_per_path(table: pa.Table, seen: set[str] | None = None) -> pa.Table:
    """The rows of ``table`` whose ``image_path`` is not in ``seen`` and not on an earlier row (a duplicate
    is left by a write interrupted after its shard appeared); ``seen`` gets the table's paths."""
    seen = set() if seen is None else seen
    keep = []
    for path in table.column("image_path").to_pylist():
        keep.append(path not in seen)
        seen.add(path)
    return table if all(keep) else table.filter(pa.array(keep, pa.bool_()))
