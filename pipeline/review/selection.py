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

The choice is made from a scan of the prediction files that reads only the columns it needs (``image_path``,
``image_id``, ``generation`` and the segments' ``score`` and ``category_id``, never a label map or an RLE),
batch by batch in Arrow and NumPy, with the run's row rules (:class:`pipeline.outputs.RunOutput`: each image's
newest job, a path once); only the chosen rows are then read in full (:meth:`Selection.iter_rows`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from san.errors import OptionError

from ..output_shards import (
    ERROR_SCHEMA,
    PREDICTION_SCHEMA,
    read_shard,
    reading_shard,
    shard_files,
    with_prediction_columns,
)
from ..outputs import RunOutput
from .errors import ReviewError

__all__ = ["INFO_KEY", "KINDS", "Select", "Selection", "parse_select", "random_keys", "select_images"]

KINDS = ("least-confident", "random", "per-class", "lowest-miou")
SEEDED = ("random", "per-class")
SYNTAX = "KIND:N or KIND:N:seed=S, KIND one of least-confident, random, per-class (seeded), lowest-miou"
INFO_KEY = "selection"
"""``dataset.info`` key of a dataset loaded from a selection (a partial dataset): :meth:`Selection.info`."""

# The segments' fields the scan reads, as Parquet leaf columns (a nested column read alone: no RLE is read).
_SEGMENT_FIELDS = ("score", "category_id")
_KEY_COLUMNS = ["image_path", "image_id", "generation"]
_THREADS = min(4, os.cpu_count() or 1)  # Parquet decoding releases the GIL
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


def _scan_shard(index: int, shard: Path, segments: bool) -> tuple[pa.Table, pa.Table | None]:
    """One prediction file's keys: ``image_path``, ``image_id``, ``generation`` (0 when not recorded),
    ``order`` (file index << 32 | row) and ``mean_score`` (NaN without segments); with ``segments`` also the
    ``(order, category_id)`` of each segment."""
    with reading_shard(shard):
        file = pq.ParquetFile(shard)
        present = file.schema_arrow.names
        # Leaf paths as the file names them ("segments.list.element.score"; older writers said "item").
        leaves = [file.schema.column(i).path for i in range(file.metadata.num_columns)]
        wanted = [p for p in leaves if p.startswith("segments.") and p.rsplit(".", 1)[1] in _SEGMENT_FIELDS]
        table = file.read(columns=[c for c in _KEY_COLUMNS if c in present] + wanted)
    n = table.num_rows
    order = (np.int64(index) << np.int64(32)) + np.arange(n, dtype=np.int64)
    lists = table.column("segments").combine_chunks()
    parents = pc.list_parent_indices(lists).to_numpy()
    flat = lists.flatten()
    scores = pc.fill_null(flat.field("score"), np.nan).to_numpy()
    counts = np.bincount(parents, minlength=n)
    sums = np.bincount(parents, weights=scores, minlength=n)
    mean = np.full(n, np.nan)
    np.divide(sums, counts, out=mean, where=counts > 0)
    keys = with_prediction_columns(table.drop_columns(["segments"]), _KEY_COLUMNS)
    keys = keys.set_column(2, "generation", pc.fill_null(keys.column("generation"), 0))
    keys = keys.append_column("order", pa.array(order)).append_column("mean_score", pa.array(mean))
    if not segments:
        return keys, None
    pairs = pa.table({"order": pa.array(order[parents]), "category_id": flat.field("category_id")})
    return keys, pairs


def _current(keys: pa.Table, output: RunOutput) -> pa.Table:
    """The rows of ``keys`` that :meth:`RunOutput.read_predictions` keeps, sorted by ``order``: of each path,
    its newest job's rows (over predictions and errors), and of those the first in file order."""
    errors = [
        read_shard(shard, columns=["image_path", "generation"], schema=ERROR_SCHEMA)
        for shard in shard_files(output.errors_dir)
    ]
    generations = [keys.select(["image_path", "generation"])]
    generations += [e.set_column(1, "generation", pc.fill_null(e.column("generation"), 0)) for e in errors]
    newest = pa.concat_tables(generations).group_by("image_path").aggregate([("generation", "max")])
    joined = keys.join(newest, "image_path")
    newest_rows = joined.filter(pc.equal(joined.column("generation"), joined.column("generation_max")))
    first = newest_rows.group_by("image_path").aggregate([("order", "min")])
    kept = newest_rows.filter(pc.is_in(newest_rows.column("order"), value_set=first.column("order_min")))
    return kept.drop_columns(["generation_max"]).sort_by("order")


def _smallest(count: int, *sort_keys: np.ndarray) -> np.ndarray:
    """Positions of the ``count`` smallest by ``sort_keys`` (the first the primary key; ties by the next)."""
    return np.lexsort(tuple(reversed(sort_keys)))[:count]


def _per_class(select: Select, ids: np.ndarray, orders: np.ndarray, pairs: pa.Table) -> np.ndarray:
    """Positions (in ``ids``) of ``select.count`` images per class, the smallest :func:`random_keys` among the
    current images whose segments hold the class."""
    pair_orders = pairs.column("order").to_numpy()
    position = np.minimum(np.searchsorted(orders, pair_orders), len(orders) - 1)
    current = orders[position] == pair_orders  # a superseded or repeated row's segments do not count
    position, classes = position[current], pairs.column("category_id").to_numpy()[current]
    chosen_ids = ids[position]
    by_class = np.lexsort((chosen_ids, random_keys(chosen_ids, select.seed), classes))
    classes = classes[by_class]
    starts = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])
    rank = np.arange(len(classes)) - np.repeat(starts, np.diff(np.r_[starts, len(classes)]))
    return np.unique(position[by_class][rank < select.count])


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
    per_class = any(s.kind == "per-class" for s in selects)
    with ThreadPoolExecutor(_THREADS) as pool:
        scanned = list(pool.map(lambda item: _scan_shard(*item, per_class), enumerate(shards)))
    if not scanned or not sum(keys.num_rows for keys, _ in scanned):
        raise ReviewError(f"{output.root} has no predictions (no rows in predictions/part-*.parquet)")
    current = _current(pa.concat_tables(keys for keys, _ in scanned), output)
    ids, orders = current.column("image_id").to_numpy(), current.column("order").to_numpy()
    chosen: dict[int, list[str]] = {}
    for select in selects:
        if select.kind == "least-confident":
            mean = current.column("mean_score").to_numpy()
            scored = np.flatnonzero(~np.isnan(mean))
            positions = scored[_smallest(select.count, mean[scored], ids[scored])]
        elif select.kind == "random":
            positions = _smallest(select.count, random_keys(ids, select.seed), ids)
        elif select.kind == "per-class":
            positions = _per_class(select, ids, orders, pa.concat_tables(pairs for _, pairs in scanned))
        else:
            from .selection_miou import image_mious  # Ray: only for this kind

            mious = image_mious(output, shards, current.select(["order", "image_path"]), **gt)
            scored = np.flatnonzero(~np.isnan(mious))
            positions = scored[_smallest(select.count, mious[scored], ids[scored])]
        for position in positions.tolist():  # the chosen images only
            chosen.setdefault(position, []).append(str(select))
    if not chosen:
        shown = " ".join(str(s) for s in selects)
        raise ReviewError(f"`select` {shown} chose none of the {current.num_rows} images of {output.root}")
    picked = np.array(sorted(chosen))
    paths = current.column("image_path").take(picked).to_pylist()
    picked_ids = ids[picked].tolist()
    rows: dict[Path, np.ndarray] = {}
    for order in orders[picked].tolist():
        rows.setdefault(shards[order >> 32], []).append(order & 0xFFFFFFFF)
    return Selection(
        output,
        list(selects),
        current.num_rows,
        dict(zip(paths, picked_ids, strict=True)),
        {i: chosen[p] for i, p in zip(picked_ids, picked.tolist(), strict=True)},
        {shard: np.array(r, dtype=np.int64) for shard, r in rows.items()},
    )
