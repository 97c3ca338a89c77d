"""Exports in Ray tasks (:func:`export_pieces`): the driver steers and holds records per file or container, never
per image: the arrays of every image (ids, name keys, where each image is read) are made by tasks and stay in the
object store, where the tasks that need them read them.

1. Survey: a task per group of the run's prediction and error files reads their small columns
   (:func:`pipeline.exports.pieces.survey_file`) and returns each file's row count; its surveys stay in the object
   store (a reviewed dataset's images are surveyed on the driver from their paths and ids). A task makes the
   :class:`~pipeline.exports.pieces.RowPlan` (row rules, file names) and the sorted ids of the images exported.
2. Images (formats that export them): the run's input is listed again, a task per container
   (:mod:`pipeline.exports.image_files`); embedded images are staged in the export by those tasks. A task combines
   the listings and finds the images the input no longer lists.
3. Write: a task per piece (a prediction file, or a batch of reviewed images streamed from the driver, a bounded
   number at a time) writes the format's files for its images into the export (:class:`PieceWriter`) and returns
   its counts, summed as they arrive; a progress bar counts finished pieces.

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

from ..label.inputs import InputItem, resolve_inputs
from ..label.resources import init_ray
from ..output_shards import PREDICTION_SCHEMA, read_shard, shard_files
from ..outputs import RunOutput
from ..run_images import RunImage, RunImagesError, missing_images_error, run_input
from ..sources import LabeledImage, LabelSource
from .image_files import ImageLocations, combine_locations, listed_files, scan_container
from .pieces import FilePiece, RowPlan, RowsPiece, Survey, piece_rows, plan_rows, survey_file, survey_keys

__all__ = ["ExportItem", "Layout", "PieceWriter", "export_pieces", "finished_results", "ordered_results", "task_window"]

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


def _fetched(ref: ray.ObjectRef) -> Any:
    """A task's result, its error raised as :func:`_raise_cause` does."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        _raise_cause(error)


def finished_results(refs: Iterable[ray.ObjectRef], total: int, desc: str, window: int) -> Iterator[tuple[int, Any]]:
    """The results of the tasks ``refs`` submits (lazily, at most ``window`` in flight), each with its task's index,
    as each task finishes, with a progress bar over finished tasks. When a task fails, or the caller stops early, the
    tasks still in flight are cancelled and waited for before this returns or raises."""
    pending: dict[ray.ObjectRef, int] = {}
    submitted = iter(enumerate(refs))
    try:
        with tqdm(total=total, desc=desc, unit="task", file=sys.stderr, dynamic_ncols=True) as bar:
            while True:
                for index, ref in itertools.islice(submitted, max(0, window - len(pending))):
                    pending[ref] = index
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayTaskError as error:
                    del pending[done[0]]
                    _raise_cause(error)
                bar.update()
                yield pending.pop(done[0]), result
    finally:
        _cancel_and_wait(list(pending))


def _cancel_and_wait(refs: list[ray.ObjectRef]) -> None:
    """Cancel the tasks ``refs`` and wait until each has ended, so that none still writes into a folder that the
    caller deletes next (a task not yet started never runs; one already running may run to its end)."""
    for ref in refs:
        ray.cancel(ref)
    if refs:
        ray.wait(refs, num_returns=len(refs), fetch_local=False)


def ordered_results(refs: Iterable[ray.ObjectRef], total: int, desc: str, window: int) -> list[Any]:
    """The results of the tasks ``refs`` submits (:func:`finished_results`), in their order."""
    results = dict(finished_results(refs, total, desc, window))
    return [results[i] for i in range(len(results))]


@ray.remote(num_returns=2)
def _survey_files(files: list[str], errors: bool) -> tuple[list[int], list[Survey]]:
    """The row count of each of ``files`` (for the driver) and their surveys (left in the object store)."""
    surveys = [survey_file(file, errors) for file in files]
    return [len(survey.ids) for survey in surveys], surveys


@ray.remote(num_returns=3)
def _plan(reviewed: list[Survey], groups: int, *found: list[Survey]) -> tuple[tuple[int, str], RowPlan, np.ndarray]:
    """:func:`plan_rows` of the ``reviewed`` survey and the surveys of the prediction files (the first ``groups`` of
    ``found``) with those of the error files (the rest): the number of images exported and their common folder (for
    the driver), the plan and the sorted ids of the images exported (left in the object store)."""
    surveys = reviewed + [survey for group in found[:groups] for survey in group]
    plan, wanted = plan_rows(surveys, [survey for group in found[groups:] for survey in group])
    return (len(wanted), plan.folder), plan, wanted


@ray.remote(num_returns=2)
def _scan_container(container, bytes_column: str | None, wanted: np.ndarray, staging: str):
    """How many of ``wanted`` the container lists (for the driver) and :func:`scan_container`'s arrays (left in the
    object store)."""
    found = scan_container(container, bytes_column, wanted, staging)
    return len(found[0]), found


@ray.remote(num_returns=3)
def _combine(
    items: list[InputItem], wanted: np.ndarray, staging: str, *parts: tuple[np.ndarray, np.ndarray]
) -> tuple[tuple[bool, int], ImageLocations, np.ndarray]:
    """The :class:`ImageLocations` of the driver's own ``items`` and the containers' ``parts`` (in the listing's order)
    and the sorted ids of ``wanted`` that none lists: whether any image is embedded and how many are missing (for the
    driver), the locations and the missing ids (left in the object store)."""
    where = combine_locations([listed_files(items, wanted), *parts], staging)
    missing = np.setdiff1d(wanted, where.ids, assume_unique=True)
    return (where.embedded, len(missing)), where, missing


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


def _survey_groups(files: list[Path], errors: bool) -> tuple[list[int], list[ray.ObjectRef]]:
    """The row count of each of ``files`` in their order, and references to their surveys (a list per group of
    consecutive files, read by a task each, in the files' order)."""
    groups = max(1, min(len(files), _SURVEY_GROUPS_PER_CPU * int(ray.cluster_resources().get("CPU", 1))))
    chunks = [[str(files[i]) for i in chunk] for chunk in np.array_split(np.arange(len(files)), groups) if len(chunk)]
    surveys: list[ray.ObjectRef] = []

    def submitted() -> Iterator[ray.ObjectRef]:
        for chunk in chunks:
            rows, found = _survey_files.remote(chunk, errors)
            surveys.append(found)
            yield rows

    what = "surveying errors" if errors else "surveying"
    rows = [n for group in ordered_results(submitted(), len(chunks), what, task_window()) for n in group]
    return rows, surveys


@dataclass(frozen=True)
class _Planned:
    """What the driver holds of a plan: the number of images exported and their common folder, the run's prediction
    files as pieces, the number of reviewed images (the first rows), and references to the plan and to the sorted ids
    of the images exported."""

    images: int
    folder: str
    files: list[FilePiece]
    reviewed: int
    plan: ray.ObjectRef
    wanted: ray.ObjectRef


def _planned(source: LabelSource) -> _Planned:
    """Survey the source's pieces (the reviewed images as one, then the run's prediction files) and the run's error
    files, and plan the export in a task."""
    reviewed = [survey_keys(source.reviewed_keys())] if source.reviewed_keys is not None else []
    files: list[FilePiece] = []
    groups: list[ray.ObjectRef] = []
    errors: list[ray.ObjectRef] = []
    if source.from_run:
        run = RunOutput(source.run.absolute())  # read by Ray tasks, whatever their working folder
        paths = shard_files(run.predictions_dir)
        rows, groups = _survey_groups(paths, errors=False)
        files = [FilePiece(str(path), count) for path, count in zip(paths, rows, strict=True)]
        errors = _survey_groups(shard_files(run.errors_dir), errors=True)[1]
    meta, plan, wanted = _plan.remote(reviewed, len(groups), *groups, *errors)
    images, folder = _fetched(meta)
    return _Planned(images, folder, files, len(reviewed[0].ids) if reviewed else 0, plan, wanted)


def _locate(
    source: LabelSource, wanted: ray.ObjectRef, staging: Path
) -> tuple[ray.ObjectRef, bool, int, ray.ObjectRef]:
    """Where each of the ``wanted`` images is read (see :mod:`pipeline.exports.image_files`), located in tasks:
    references to the :class:`ImageLocations` and to the sorted ids the input no longer lists, whether any image is
    embedded and how many are missing.

    Raises:
        RunImagesError: the manifest names no input.
    """
    spec, bytes_column = run_input(source.run)
    if spec is None:
        raise RunImagesError(f"{source.run / 'manifest.json'} names no input; the run's images cannot be read again")
    resolved = resolve_inputs(spec, exclude=str(source.run), bytes_column=bytes_column)
    parts: list[ray.ObjectRef] = []

    def submitted() -> Iterator[ray.ObjectRef]:
        for k, container in enumerate(resolved.containers):
            count, found = _scan_container.remote(container, bytes_column, wanted, str(staging / str(k)))
            parts.append(found)
            yield count

    ordered_results(submitted(), len(resolved.containers), "listing input", task_window())
    meta, where, missing = _combine.remote(resolved.items, wanted, str(staging), *parts)
    embedded, count = _fetched(meta)
    return where, embedded, count, missing


def _check_listed(source: LabelSource, count: int, missing_ref: ray.ObjectRef, pieces: list[FilePiece]) -> None:
    """Refuse the export when ``count`` images (the sorted ids ``missing_ref``) are not in the input (named with the
    least of their paths)."""
    if not count:
        return
    found: list[tuple[int, str | None]] = []
    if source.reviewed_keys is not None:
        missing = ray.get(missing_ref)
        paths = [path for path, image_id in source.reviewed_keys() if _member(missing, image_id)]
        found.append((len(paths), min(paths, default=None)))
    found += ordered_results(
        (_missing_paths.remote(p.file, missing_ref) for p in pieces), len(pieces), "finding", task_window()
    )
    example = min(path for count, path in found if count)
    spec, _ = run_input(source.run)
    raise missing_images_error(source.run, spec, count, example)


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
    planned = _planned(source)
    try:
        where, embedded = None, False
        if staging is not None:
            where, embedded, missing, missing_ids = _locate(source, planned.wanted, staging)
            _check_listed(source, missing, missing_ids, planned.files)
            del missing_ids
        layout = Layout(planned.images, planned.folder, embedded)
        writer = writer_for(layout)
        parts = -(-planned.reviewed // _REVIEWED_BATCH) + len(planned.files)
        refs = (
            _write_piece.remote(writer, part, piece, offset, planned.plan, where)
            for part, (piece, offset) in enumerate(_pieces(source, planned.reviewed, planned.files))
        )
        counts: Counter[str] = Counter()
        for _, result in finished_results(refs, parts, desc, task_window()):  # summed as they arrive
            counts.update(result)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return dict(counts), layout, parts
