"""Review what matters: ``jobs/review.py --select KIND:N[:seed=S]`` chooses the images of a run to load.

Kinds (:data:`KINDS`), combinable (the dataset holds their union; each sample is tagged with every selection
that chose it, e.g. ``least-confident:1000``):

- ``least-confident:N``: the N images with the lowest mean score of their segments (the unweighted mean over
  the image's classes, the dataset's ``mean_score``); an image without segments has no score and is never
  chosen; ties go to the lower ``image_id``.
- ``random:N[:seed=S]``: N images uniformly at random, a function of the seed and the images alone (not of
  the run's files): the N smallest of a seeded hash of each ``image_id``. So ``random:500:seed=0`` lies in
  ``random:1000:seed=0``: a sample grows without changing. Default seed 0.
- ``per-class:N[:seed=S]``: for each vocabulary class, N images whose predictions hold it (fewer if fewer
  do), at random as ``random`` with that seed.
- ``lowest-miou:N``: the N images with the lowest mIoU against the ground truth (needs ``gt``; the images
  without ground truth, or whose every pixel is ignored, are never chosen): :mod:`.selection_miou`.

The choice is made from a scan of the prediction files that reads only the columns it needs (``image_id``,
``generation`` and the segments' ``score``, never a path, a label map or an RLE), file by file in Arrow and
NumPy, with the run's row rules (:mod:`pipeline.row_rules`: each image's newest job, its first row). It holds 20
bytes per row (id, generation, mean score) and then 24 per current image, never a Python object per row;
``per-class`` scans the segments' ``category_id`` again, keeping N candidates per class. Only the chosen rows are
then read in full (:meth:`Selection.iter_rows`), and only their paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from san.errors import OptionError

from ..output_shards import (
    PREDICTION_SCHEMA,
    reading_shard,
    shard_files,
    with_prediction_columns,
)
from ..outputs import RunOutput
from ..row_rules import RowKeys, current_rows, generations_of, read_columns, scan_keys
from .errors import ReviewError

__all__ = ["INFO_KEY", "KINDS", "Select", "Selection", "parse_select", "random_keys", "select_images"]

KINDS = ("least-confident", "random", "per-class", "lowest-miou")
SEEDED = ("random", "per-class")
SYNTAX = "KIND:N or KIND:N:seed=S, KIND one of least-confident, random, per-class (seeded), lowest-miou"
INFO_KEY = "selection"
"""``dataset.info`` key of a dataset loaded from a selection (a partial dataset): :meth:`Selection.info`."""

# Files whose scans the threads run ahead of their consumer; segments of the per-class scan waiting to be pruned.
_GROUP = 64
_PENDING = 1 << 18
_THREADS = min(4, os.cpu_count() or 1)  # Parquet decoding releases the GIL
T = TypeVar("T")
# splitmix64's constants (Steele, Lea, Flood 2014).
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class Select:
    """One ``--select`` item: ``kind`` (of :data:`KINDS`), ``count`` N and ``seed`` (the seeded kinds)."""

    kind: str
    count: int
    seed: int = 0

    def __str__(self) -> str:
        """The canonical spelling, which is also the tag of the samples it chose (``random:500:seed=0``)."""
        return f"{self.kind}:{self.count}" + (f":seed={self.seed}" if self.kind in SEEDED else "")


def parse_select(text: str) -> Select:
    """A ``--select`` item, ``KIND:N[:seed=S]``.

    Raises:
        OptionError: anything else, in one line naming `select`.
    """
    kind, _, rest = text.partition(":")
    count, _, seed = rest.partition(":")
    if kind not in KINDS:
        raise OptionError(f"`select` {text!r}: unknown kind {kind!r}; write {SYNTAX}")
    if not count.isdigit() or int(count) < 1:
        raise OptionError(f"`select` {text!r}: N must be a whole number of images, at least 1; write {SYNTAX}")
    if not seed:
        return Select(kind, int(count))
    name, _, value = seed.partition("=")
    if kind not in SEEDED:
        raise OptionError(f"`select` {text!r}: {kind} takes no seed; write {SYNTAX}")
    if name != "seed" or not value.isdigit() or int(value) >= 2**64:
        raise OptionError(f"`select` {text!r}: expected seed=S after N, S a whole number below 2**64; write {SYNTAX}")
    return Select(kind, int(count), int(value))


def random_keys(image_ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random ``uint64`` per image id: splitmix64 of ``id + (seed + 1) * golden``.

    Hand-written because pyarrow.compute has no seeded hash, and a NumPy generator's draws would follow the
    order the rows are read in: a hash of the id makes ``random`` a function of the seed and the images only.
    """
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as splitmix64 means it to
        z = image_ids.astype(np.uint64) + (np.uint64(seed) + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


@dataclass
class Selection:
    """The images chosen from a run: which rows of which prediction file, and which ``Select`` chose each."""

    output: RunOutput
    selects: list[Select]
    run_images: int  # the run's images (one per path, each its newest job's row)
    images: dict[str, int]  # image_path -> image_id of the chosen images
    tags: dict[int, list[str]]  # image_id -> the selects that chose it (their str)
    rows: dict[Path, np.ndarray]  # prediction file -> the chosen row numbers in it, ascending

    def info(self) -> dict[str, Any]:
        """What ``dataset.info[INFO_KEY]`` records: the selects, how many images they chose, the run's count."""
        return {"select": [str(s) for s in self.selects], "images": len(self.images), "run_images": self.run_images}

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """The chosen prediction rows in full (every column), file by file: a file is read only when it holds a
        chosen row, and only one file's rows are in memory at once."""
        for shard, rows in self.rows.items():
            with reading_shard(shard):
                file = pq.ParquetFile(shard)
                table = file.read(columns=[c for c in PREDICTION_SCHEMA.names if c in file.schema_arrow.names])
            yield from with_prediction_columns(table.take(rows), PREDICTION_SCHEMA.names).to_pylist()


def _scan_shard(shard: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One prediction file's rows: ``image_id`` (int64), ``generation`` (int32, 0 when not recorded) and the mean
    of the segments' scores (NaN without segments)."""
    with reading_shard(shard):
        file = pq.ParquetFile(shard)
        keys = [c for c in ("image_id", "generation") if c in file.schema_arrow.names]
        table = file.read(columns=keys + _segment_leaves(file, "score"))
    n = table.num_rows
    lists = table.column("segments").combine_chunks()
    parents = pc.list_parent_indices(lists).to_numpy()
    scores = pc.fill_null(lists.flatten().field("score"), np.nan).to_numpy()
    counts = np.bincount(parents, minlength=n)
    sums = np.bincount(parents, weights=scores, minlength=n)
    mean = np.full(n, np.nan)
    np.divide(sums, counts, out=mean, where=counts > 0)
    return table.column("image_id").to_numpy().astype(np.int64), generations_of(table), mean


def _segment_leaves(file: pq.ParquetFile, field: str) -> list[str]:
    """The Parquet leaf column of the segments' ``field`` (``segments.list.element.score``; older writers said
    ``item``): a nested column read alone, so no RLE is read."""
    leaves = [file.schema.column(i).path for i in range(file.metadata.num_columns)]
    return [p for p in leaves if p.startswith("segments.") and p.rsplit(".", 1)[1] == field]


def _segment_classes(shard: Path) -> tuple[np.ndarray, np.ndarray]:
    """The row (in the file) and ``category_id`` of each segment of a prediction file."""
    with reading_shard(shard):
        file = pq.ParquetFile(shard)
        lists = file.read(columns=_segment_leaves(file, "category_id")).column(0).combine_chunks()
    return pc.list_parent_indices(lists).to_numpy(), lists.flatten().field("category_id").to_numpy()


def _in_groups(pool: ThreadPoolExecutor, function: Callable[[Path], T], shards: list[Path]) -> Iterator[T]:
    """``function`` of each shard, in order, computed by ``pool`` a group at a time: at most a group's results
    wait to be consumed (``pool.map`` of every shard would hold every result of a slow consumer)."""
    for start in range(0, len(shards), _GROUP):
        yield from pool.map(function, shards[start : start + _GROUP])


def _smallest(count: int, *sort_keys: np.ndarray) -> np.ndarray:
    """Positions of the ``count`` smallest by ``sort_keys`` (the first the primary key; ties by the next)."""
    return np.lexsort(tuple(reversed(sort_keys)))[:count]


def _first_per_class(
    count: int, classes: np.ndarray, positions: np.ndarray, keys: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Of ``(classes, positions)`` pairs, the ``count`` of each class with the smallest ``keys`` (ties: ``ids``)
    of their position, sorted by class."""
    by_class = np.lexsort((ids[positions], keys[positions], classes))
    classes, positions = classes[by_class], positions[by_class]
    starts = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])
    rank = np.arange(len(classes)) - np.repeat(starts, np.diff(np.r_[starts, len(classes)]))
    return classes[rank < count], positions[rank < count]


def _per_class(select: Select, shards: list[Path], rows: np.ndarray, starts: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions (in ``ids``, the current images, whose rows in the run are ``rows``) of ``select.count`` images
    per class: the smallest :func:`random_keys` among the images whose segments hold the class. A second scan of
    the files (only the segments' ``category_id``) that keeps ``select.count`` candidates per class: a segment of
    a superseded or repeated row does not count."""
    keys = random_keys(ids, select.seed)
    classes, positions = np.zeros(0, np.int64), np.zeros(0, np.int64)
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    with ThreadPoolExecutor(_THREADS) as pool:
        for index, (parents, categories) in enumerate(_in_groups(pool, _segment_classes, shards)):
            where = starts[index] + parents
            position = np.minimum(np.searchsorted(rows, where), len(rows) - 1)
            current = rows[position] == where
            pending.append((categories[current].astype(np.int64), position[current]))
            if sum(len(c) for c, _ in pending) > _PENDING:
                classes, positions = _first_per_class(
                    select.count,
                    np.concatenate([classes, *(c for c, _ in pending)]),
                    np.concatenate([positions, *(p for _, p in pending)]),
                    keys,
                    ids,
                )
                pending = []
    classes = np.concatenate([classes, *(c for c, _ in pending)])
    positions = np.concatenate([positions, *(p for _, p in pending)])
    return np.unique(_first_per_class(select.count, classes, positions, keys, ids)[1])


def select_images(
    output_dir: str | os.PathLike[str],
    selects: list[Select],
    gt: dict[str, Any] | None = None,
) -> Selection:
    """Choose the images of the run in ``output_dir`` that ``selects`` name (their union).

    Args:
        gt: for ``lowest-miou``, the ground truth as :func:`pipeline.review.selection_miou.image_mious` takes it
            (``gt_spec``, ``gt_classes``, ``ignore_index``).

    Raises:
        ReviewError: ``lowest-miou`` without ``gt``, a run without predictions, or a selection that chose
            no image.
        DamagedFileError: a prediction file cannot be read.
    """
    output = RunOutput(output_dir)
    if any(s.kind == "lowest-miou" for s in selects) and gt is None:
        raise ReviewError("`select` lowest-miou needs ground truth to score against: give `gt`")
    shards = shard_files(output.predictions_dir)
    with ThreadPoolExecutor(_THREADS) as pool:
        scanned = list(_in_groups(pool, _scan_shard, shards))
    sizes = [len(ids) for ids, _, _ in scanned]
    if not sum(sizes):
        raise ReviewError(f"{output.root} has no predictions (no rows in predictions/part-*.parquet)")
    keys = RowKeys(shards, sizes, *(np.concatenate([part[i] for part in scanned]) for i in range(2)))
    mean = np.concatenate([part[2] for part in scanned])
    del scanned
    rows = np.flatnonzero(current_rows(keys, scan_keys(shard_files(output.errors_dir), "image_path")))
    ids, mean = keys.ids[rows], mean[rows]  # the current images, in file order
    del keys
    starts = np.cumsum([0, *sizes])
    chosen: dict[int, list[str]] = {}
    for select in selects:
        if select.kind == "least-confident":
            scored = np.flatnonzero(~np.isnan(mean))
            positions = scored[_smallest(select.count, mean[scored], ids[scored])]
        elif select.kind == "random":
            positions = _smallest(select.count, random_keys(ids, select.seed), ids)
        elif select.kind == "per-class":
            positions = _per_class(select, shards, rows, starts, ids)
        else:
            from .selection_miou import image_mious  # Ray: only for this kind

            mious = image_mious(output, shards, _orders(rows, starts), **gt)
            scored = np.flatnonzero(~np.isnan(mious))
            positions = scored[_smallest(select.count, mious[scored], ids[scored])]
        for position in positions.tolist():  # the chosen images only
            chosen.setdefault(position, []).append(str(select))
    if not chosen:
        shown = " ".join(str(s) for s in selects)
        raise ReviewError(f"`select` {shown} chose none of the {len(ids)} images of {output.root}")
    picked = np.array(sorted(chosen))
    files = np.searchsorted(starts, rows[picked], side="right") - 1
    chosen_rows: dict[Path, np.ndarray] = {}
    paths: list[str] = []
    for index in np.unique(files).tolist():
        in_file = rows[picked[files == index]] - starts[index]
        chosen_rows[shards[index]] = in_file
        paths += read_columns(shards[index], ["image_path"]).column(0).take(pa.array(in_file)).to_pylist()
    picked_ids = ids[picked].tolist()
    return Selection(
        output,
        list(selects),
        len(ids),
        dict(zip(paths, picked_ids, strict=True)),
        {i: chosen[p] for i, p in zip(picked_ids, picked.tolist(), strict=True)},
        chosen_rows,
    )


def _orders(rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The orders (file index << 32 | row in the file) of ``rows`` (indices into the run's rows in file order;
    ``starts``: each file's first)."""
    files = np.searchsorted(starts, rows, side="right") - 1
    return (files.astype(np.int64) << np.int64(32)) | (rows - starts[files])
