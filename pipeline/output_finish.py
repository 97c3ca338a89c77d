"""The end of a labeling run (``RunOutput.finalize``) in constant driver memory, file by file.

1. The prediction and error files are scanned for each row's 8-byte image id and its job's ``generation``.
2. Rows of an image that a later job labeled again, or failed on, are removed from their files.
3. Each image is kept once: its first row in file order (a second row is left by an interrupted write, or by
   two input rows with one path); the repeats are counted and a few of their paths named.
4. COCO is written as a stream (:func:`pipeline.exports.coco.write_coco`): one ``coco.json``, one file per
   prediction file in ``coco/``, or none (``COCO_CHOICES``). The annotations come as text from each prediction
   file's ``coco_annotations`` column (``ANNOTATIONS_COLUMN``), which the write tasks fill, and are numbered
   here; a file of an older version, without it, gets the text built from its ``segments``.
5. ``errors.parquet`` is written file by file: each input's newest reason, unless the image was labeled since.

Steps 1 to 3 are the run's row rules (:mod:`pipeline.row_rules`). What grows with the run are NumPy arrays of
ids (8 bytes per row) and generations (4 bytes per row), and while each image's first row is found a sorted copy
of the ids (8 bytes per row); where generations differ, a sort of ids and generations too. Everything else is one
prediction file at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from san.atomic import write_atomic

from .exports.coco import (
    annotation_texts,
    coco_categories,
    image_texts,
    numbered_annotations,
    write_coco,
)
from .output_shards import (
    ANNOTATIONS_COLUMN,
    ERROR_SCHEMA,
    error_files_newest_first,
    read_shard,
    shard_files,
)
from .row_rules import RowKeys, contains, first_rows, newest_rows, read_columns, scan_keys
from .vocabulary import Vocabulary

__all__ = ["COCO_CHOICES", "COCO_FILE", "COCO_FOLDER", "finish_run"]

#: ``--coco``: one ``coco.json``; one COCO file per prediction file (``coco/part-<hash>.json`` beside
#: ``predictions/part-<hash>.parquet``); no COCO.
COCO_CHOICES = ("single", "shards", "none")
COCO_FILE = "coco.json"
COCO_FOLDER = "coco"
# The columns of errors.parquet.
_ERROR_COLUMNS = ["image_path", "error"]


def _remove(rows: RowKeys, drop: np.ndarray) -> RowKeys:
    """Rewrite (each atomically) the files that hold rows marked in ``drop``, without them (a file left without
    rows is deleted); returns the rows that remain."""
    files, sizes = [], []
    for file, dropped in rows.per_file(drop):
        if dropped.any():
            if dropped.all():
                file.unlink()
                continue
            kept = read_shard(file).filter(pa.array(~dropped))
            write_atomic(file, lambda tmp, rows=kept: pq.write_table(rows, tmp))
        files.append(file)
        sizes.append(int((~dropped).sum()))
    return RowKeys(files, sizes, rows.ids[~drop], rows.generations[~drop])


def _path_digest(path: str) -> int:
    """A second 63-bit hash of a path, independent of its :func:`image_id`: rows with one id and different
    digests are two images whose ids collide."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[8:16], "big") >> 1


def _first_rows(rows: RowKeys, reported: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The sorted image ids of the run, which of ``rows`` is each image's first (in file order,
    :func:`pipeline.row_rules.first_rows`), and up to ``reported`` paths that have more than one row, in order of
    first appearance.

    Raises:
        RuntimeError: two different paths have one image id (2**-53 per pair).
    """
    labeled, keep, repeated = first_rows(rows.ids)
    if not len(repeated):
        return labeled, keep, []
    firsts = np.flatnonzero(keep & contains(repeated, rows.ids))  # the first row of each repeated id, in order
    named = rows.ids[firsts[:reported]].tolist()
    wanted = set(named)
    paths: dict[int, str] = {}
    pairs: set[tuple[int, int]] = set()  # (id, path digest) of the rows of repeated ids
    for (file, ids), (_, kept) in zip(rows.per_file(rows.ids), rows.per_file(keep), strict=True):
        twice = np.flatnonzero(contains(repeated, ids))
        if not len(twice):
            continue
        table = read_columns(file, ["image_path"]).take(pa.array(twice))
        for row, path in zip(twice.tolist(), table.column(0).to_pylist(), strict=True):
            pairs.add((int(ids[row]), _path_digest(path)))
            if kept[row] and int(ids[row]) in wanted:
                paths[int(ids[row])] = path
    if len(pairs) != len(repeated):
        raise RuntimeError("two different image paths hash to the same image_id; please report this")
    return labeled, keep, [paths[i] for i in named]


def _kept(file: Path, kept: np.ndarray, columns: list[str]) -> pa.Table:
    """The ``kept`` rows of a prediction file, ``columns`` only."""
    table = read_columns(file, columns)
    return table if kept.all() else table.filter(pa.array(kept))


def _images_text(file: Path, kept: np.ndarray) -> str:
    """The COCO ``images`` entries of a file's ``kept`` rows, comma-separated."""
    return image_texts(_kept(file, kept, ["image_id", "image_path", "width", "height"]))


def _annotations_text(file: Path, kept: np.ndarray, first_id: int) -> tuple[str, int]:
    """The COCO annotations of a file's ``kept`` rows, comma-separated and numbered from ``first_id``, and the next
    id: from its ``coco_annotations`` column, or built from its ``segments`` (a file of an older version)."""
    stored = _kept(file, kept, [ANNOTATIONS_COLUMN])
    if stored.num_columns:
        lines = stored.column(0)
    else:
        lines = annotation_texts(_kept(file, kept, ["image_id", "width", "height", "segments"]))
    return numbered_annotations(lines, first_id)


def _write_coco(root: Path, parts: list[tuple[Path, np.ndarray]], vocabulary: Vocabulary, coco: str) -> None:
    """Write the run's COCO as ``coco`` says (:data:`COCO_CHOICES`) from ``parts``, each prediction file that
    holds a kept row with which of its rows are kept, and remove what another choice wrote before (it would no
    longer match the predictions)."""
    categories = coco_categories(vocabulary.names, vocabulary.category_ids)
    written: set[Path] = set()
    if coco == "single":

        def annotations() -> Iterator[str]:
            next_id = 1
            for file, kept in parts:
                text, next_id = _annotations_text(file, kept, next_id)
                yield text

        images = (_images_text(file, kept) for file, kept in parts)
        _write_json(root / COCO_FILE, lambda handle: write_coco(handle, categories, images, annotations()))
    elif coco == "shards":
        next_id = 1
        for file, kept in parts:
            text, next_id = _annotations_text(file, kept, next_id)
            target = root / COCO_FOLDER / f"{file.stem}.json"
            target.parent.mkdir(exist_ok=True)
            images = _images_text(file, kept)
            _write_json(target, lambda handle, i=images, t=text: write_coco(handle, categories, [i], [t]))
            written.add(target)
    if coco != "single":
        (root / COCO_FILE).unlink(missing_ok=True)
    folder = root / COCO_FOLDER
    if folder.is_dir():
        for stale in set(folder.glob("part-*.json")) - written:
            stale.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()


def _write_json(target: Path, write: Callable[[TextIO], None]) -> None:
    """Write a JSON file atomically with ``write(handle)`` (a text handle, UTF-8)."""

    def dump(tmp: Path) -> None:
        with open(tmp, "x", encoding="utf-8") as handle:
            write(handle)

    write_atomic(target, dump, kind=".json file")


def _errors_kept(errors: RowKeys, labeled: np.ndarray) -> np.ndarray:
    """Which ``errors`` rows go into ``errors.parquet``: each input's first (``errors`` come newest file first),
    unless its image is among the ``labeled`` ids (sorted)."""
    _, first = np.unique(errors.ids, return_index=True)  # the errors are few
    keep = np.zeros(len(errors.ids), bool)
    keep[first] = True
    return keep & ~contains(labeled, errors.ids)


def _write_errors(target: Path, errors: RowKeys, keep: np.ndarray) -> None:
    """Write ``errors.parquet`` from the ``keep`` rows of ``errors``."""
    schema = ERROR_SCHEMA.empty_table().select(_ERROR_COLUMNS).schema

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for file, kept in errors.per_file(keep):
                if kept.any():
                    rows = read_columns(file, _ERROR_COLUMNS).filter(pa.array(kept))
                    writer.write_table(rows)

    write_atomic(target, write)


def finish_run(
    root: Path, predictions: Path, errors: Path, vocabulary: Vocabulary, coco: str, reported: int
) -> tuple[dict[str, int], list[str]]:
    """Finish the run in ``root`` (its ``predictions`` and ``errors`` folders) as the module docstring says;
    returns the counts (``labeled``, ``failed``, ``duplicates``) and up to ``reported`` paths with more than one
    row."""
    rows = scan_keys(shard_files(predictions), "image_id")
    failures = scan_keys(error_files_newest_first(errors), "image_path")
    superseded = ~newest_rows(rows, failures)
    if superseded.any():
        rows = _remove(rows, superseded)
    labeled, keep, repeated_paths = _first_rows(rows, reported)
    failed = _errors_kept(failures, labeled)
    counts = {"labeled": len(labeled), "failed": int(failed.sum()), "duplicates": len(rows.ids) - len(labeled)}
    parts = [(file, kept) for file, kept in rows.per_file(keep) if kept.any()]
    del rows, labeled, superseded  # COCO needs only `keep` (a byte per row), not the ids (16 bytes per image)
    _write_coco(root, parts, vocabulary, coco)
    _write_errors(root / "errors.parquet", failures, failed)
    return counts, repeated_paths
