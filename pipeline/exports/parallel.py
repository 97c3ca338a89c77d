"""Exports in Ray tasks (:func:`export_pieces`): the driver steers and holds small records only.

1. Survey: a task per group of the run's prediction and error files reads their small columns
   (:func:`pipeline.exports.pieces.survey_file`); a reviewed dataset's images are surveyed on the driver from their
   paths and ids. The driver makes the :class:`~pipeline.exports.pieces.RowPlan` (row rules, file names).
2. Images (formats that export them): the run's input is listed again, a task per container
   (:mod:`pipeline.exports.image_files`); embedded images are staged in the export by those tasks.
3. Write: a task per piece (a prediction file, or a batch of reviewed images streamed from the driver, a bounded
   number at a time) writes the format's files for its images into the export (:class:`PieceWriter`) and returns
   its counts; a progress bar counts finished pieces.

Ray is joined as the labeling job joins it (:func:`pipeline.label.resources.init_ray`): ``ray job submit``, or a
local Ray. A task's failure that is the user's to fix (a :class:`san.errors.UserError`, a file that cannot be
read or written) is raised on the driver as itself.
"""

from __future__ import annotations

import itertools
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray
from tqdm import tqdm

from san.errors import UserError

from ..label.inputs import resolve_inputs
from ..label.resources import init_ray
from ..output_shards import PREDICTION_SCHEMA, read_shard, shard_files
from ..outputs import RunOutput
from ..run_images import RunImage, RunImagesError, missing_images_error, run_input
from ..sources import LabeledImage, LabelSource
from .image_files import ImageLocations, combine_locations, listed_files, scan_container
from .pieces import FilePiece, RowPlan, RowsPiece, Survey, piece_rows, plan_rows, survey_file, survey_keys

__all__ = ["ExportItem", "Layout", "PieceWriter", "export_pieces", "ordered_results", "task_window"]

_REVIEWED_BATCH = 32  # reviewed images per task
_TASKS_PER_CPU = 2  # tasks in flight per CPU of the cluster
_SURVEY_GROUPS_PER_CPU = 4  # survey tasks per CPU (each reads a group of files' small columns)


@dataclass(frozen=True)
class ExportItem:
    """One image to export: its labels, its file name (relative, without suffix) and, for formats that export the
    images, the image as the run read it."""

    labeled: LabeledImage
    name: str
    image: RunImage | None


class PieceWriter(Protocol):
    """A format's work on one piece, in a task: write the files of ``items`` (piece number ``part`` in the export's
    order) and return counts, summed over the pieces by the driver."""

    def write(self, part: int, items: Iterator[ExportItem]) -> dict[str, int]: ...


@dataclass(frozen=True)
class Layout:
    """What a format learns before its pieces are written: how many images, the folder they share (their absolute
    paths' common folder) and whether the run's input embeds any (then none is a file to point at)."""

    images: int
    folder: str
    embedded: bool


def _raise_cause(error: ray.exceptions.RayTaskError) -> None:
    """Raise a task's own error when it is the user's to fix, else ``error``."""
    cause = error.cause
    if isinstance(cause, (UserError, OSError)):
        raise cause from None
    raise error


def ordered_results(refs: Iterable[ray.ObjectRef], total: int, desc: str, window: int) -> list[Any]:
    """The results of the tasks ``refs`` submits (lazily, at most ``window`` in flight), in their order, with a
    progress bar over finished tasks."""
    results: dict[int, Any] = {}
    pending: dict[ray.ObjectRef, int] = {}
    submitted = iter(enumerate(refs))
    with tqdm(total=total, desc=desc, unit="task", file=sys.stderr, dynamic_ncols=True) as bar:
        while True:
            for index, ref in itertools.islice(submitted, max(0, window - len(pending))):
                pending[ref] = index
            if not pending:
                return [results[i] for i in range(len(results))]
            done, _ = ray.wait(list(pending), num_returns=1)
            try:
                results[pending.pop(done[0])] = ray.get(done[0])
            except ray.exceptions.RayTaskError as error:
                for ref in pending:
                    ray.cancel(ref)
                _raise_cause(error)
            bar.update()


@ray.remote
def _survey_files(files: list[str], errors: bool) -> list[Survey]:
    return [survey_file(file, errors) for file in files]


@ray.remote
def _scan_container(container, bytes_column: str | None, wanted: np.ndarray, staging: str):
    return scan_container(container, bytes_column, wanted, staging)


@ray.remote
def _write_piece(
    writer: PieceWriter,
    part: int,
    piece: FilePiece | RowsPiece,
    offset: int,
    plan: RowPlan,
    where: ImageLocations | None,
) -> dict[str, int]:
    items = (
        ExportItem(image, name, None if where is None else where.image(image.image_path, image.image_id))
        for image, name in piece_rows(piece, offset, plan)
    )
    return writer.write(part, items)


@ray.remote
def _missing_paths(file: str, missing: np.ndarray) -> tuple[int, str | None]:
    """How many rows of a prediction file are images of ``missing`` (sorted ids), and the least of their paths."""
    table = read_shard(file, columns=["image_path", "image_id"], schema=PREDICTION_SCHEMA)
    chosen = np.isin(table.column("image_id").to_numpy(), missing)
    paths = [path for path, keep in zip(table.column("image_path").to_pylist(), chosen, strict=True) if keep]
    return len(paths), min(paths, default=None)


def _member(sorted_ids: np.ndarray, image_id: int) -> bool:
    index = int(np.searchsorted(sorted_ids, image_id))
    return index < len(sorted_ids) and sorted_ids[index] == image_id


def task_window() -> int:
    return max(2, _TASKS_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))


def _survey_groups(files: list[Path], errors: bool) -> list[Survey]:
    """The surveys of ``files`` in their order, read by a few tasks of consecutive files each."""
    groups = max(1, min(len(files), _SURVEY_GROUPS_PER_CPU * int(ray.cluster_resources().get("CPU", 1))))
    chunks = [[str(files[i]) for i in chunk] for chunk in np.array_split(np.arange(len(files)), groups) if len(chunk)]
    refs = (_survey_files.remote(chunk, errors) for chunk in chunks)
    what = "surveying errors" if errors else "surveying"
    return [survey for group in ordered_results(refs, len(chunks), what, task_window()) for survey in group]


def _survey(source: LabelSource) -> tuple[list[Survey], list[FilePiece], list[Survey]]:
    """The surveys of the source's pieces in order (the reviewed images as one), the run's prediction files as
    pieces, and the surveys of its error files."""
    surveys = [survey_keys(source.reviewed_keys())] if source.reviewed_keys is not None else []
    if not source.from_run:
        return surveys, [], []
    run = RunOutput(source.run.absolute())  # read by Ray tasks, whatever their working folder
    files = shard_files(run.predictions_dir)
    found = _survey_groups(files, errors=False)
    pieces = [FilePiece(str(file), len(survey.ids)) for file, survey in zip(files, found, strict=True)]
    return surveys + found, pieces, _survey_groups(shard_files(run.errors_dir), errors=True)


def _locate(source: LabelSource, wanted: np.ndarray, staging: Path) -> ImageLocations:
    """Where each of the ``wanted`` images is read (see :mod:`pipeline.exports.image_files`).

    Raises:
        RunImagesError: the manifest names no input, or an image is no longer in it.
    """
    spec, bytes_column = run_input(source.run)
    if spec is None:
        raise RunImagesError(f"{source.run / 'manifest.json'} names no input; the run's images cannot be read again")
    resolved = resolve_inputs(spec, exclude=str(source.run), bytes_column=bytes_column)
    wanted_ref = ray.put(wanted)
    refs = (
        _scan_container.remote(c, bytes_column, wanted_ref, str(staging / str(k)))
        for k, c in enumerate(resolved.containers)
    )
    parts = [
        listed_files(resolved.items, wanted),
        *ordered_results(refs, len(resolved.containers), "listing input", task_window()),
    ]
    return combine_locations(parts, str(staging))


def _check_listed(source: LabelSource, where: ImageLocations, wanted: np.ndarray, pieces: list[FilePiece]) -> None:
    """Refuse the export when an image of ``wanted`` is not in the input (named with the least of their paths)."""
    missing = np.setdiff1d(wanted, where.ids, assume_unique=True)
    if not len(missing):
        return
    found: list[tuple[int, str | None]] = []
    if source.reviewed_keys is not None:
        paths = [path for path, image_id in source.reviewed_keys() if _member(missing, image_id)]
        found.append((len(paths), min(paths, default=None)))
    missing_ref = ray.put(missing)
    found += ordered_results(
        (_missing_paths.remote(p.file, missing_ref) for p in pieces), len(pieces), "finding", task_window()
    )
    example = min(path for count, path in found if count)
    spec, _ = run_input(source.run)
    raise missing_images_error(source.run, spec, len(missing), example)


def _pieces(source: LabelSource, reviewed: int, files: list[FilePiece]) -> Iterator[tuple[FilePiece | RowsPiece, int]]:
    """Each piece in the export's order with its first row's global index: the ``reviewed`` images in batches (read
    here, one batch at a time), then the run's files."""
    if source.reviewed is not None:
        images = source.reviewed()
        for offset in range(0, reviewed, _REVIEWED_BATCH):
            yield RowsPiece(tuple(itertools.islice(images, _REVIEWED_BATCH))), offset
    offset = reviewed
    for piece in files:
        yield piece, offset
        offset += piece.rows


def export_pieces(
    source: LabelSource,
    writer_for: Callable[[Layout], PieceWriter],
    staging: Path | None = None,
    desc: str = "exporting",
) -> tuple[dict[str, int], Layout, int]:
    """Export ``source`` in Ray tasks: plan its rows, locate its images when ``staging`` (an empty folder inside
    the export, removed after) is given, and write each piece with the writer ``writer_for`` makes. Returns the
    summed counts, the :class:`Layout` and the number of pieces (parts ``0 .. n - 1``).

    Raises:
        RunImagesError: with ``staging``, an image the run's input no longer lists (nothing is written then).
    """
    init_ray()
    surveys, files, errors = _survey(source)
    plan, wanted = plan_rows(surveys, errors)
    reviewed = len(surveys[0].ids) if source.reviewed_keys is not None else 0
    del surveys, errors
    try:
        where = None
        if staging is not None:
            where = _locate(source, wanted, staging)
            _check_listed(source, where, wanted, files)
        layout = Layout(len(wanted), plan.folder, where is not None and where.embedded)
        writer, plan_ref, where_ref = writer_for(layout), ray.put(plan), ray.put(where)
        del wanted, where  # the tasks read the object store's copy
        parts = -(-reviewed // _REVIEWED_BATCH) + len(files)
        refs = (
            _write_piece.remote(writer, part, piece, offset, plan_ref, where_ref)
            for part, (piece, offset) in enumerate(_pieces(source, reviewed, files))
        )
        counts: Counter[str] = Counter()
        for result in ordered_results(refs, parts, desc, task_window()):
            counts.update(result)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return dict(counts), layout, parts
