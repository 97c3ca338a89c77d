"""``jobs/export.py --coco/--masks``: a reviewed dataset's labels (:mod:`pipeline.review.reviewed`) as COCO JSON in
the labeling job's form, and as a folder of label-map PNGs; ``run+fiftyone:NAME``: every image of the dataset's
run, the dataset's as reviewed and the others as the run wrote them (a partial dataset, ``review.py --select``).

The masks are written by Ray tasks (:func:`_write_masks`): the driver reads the dataset (tasks cannot reach its
database under ``ray job submit``) and hands its label maps over in chunks of :data:`MASKS_PER_TASK`, a few chunks
in flight; the tasks encode and write the PNGs. Without ``--coco`` the driver keeps no row of the dataset."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fiftyone as fo
import numpy as np
import ray

from san.atomic import write_json_atomic

from ..label.inputs import image_id as path_image_id
from ..label.resources import init_ray
from ..review.dataset import selection_info
from ..review.errors import ReviewError
from ..review.labels import dataset_vocabulary
from ..review.reviewed import iter_reviewed_images, iter_run_outside, resolve_dataset
from ..row_rules import contains
from ..segments import encode_label_map_png
from ..sources.base import FIFTYONE_PREFIX, RUN_WITH_REVIEW_PREFIX, LabeledImage
from ..vocabulary import Vocabulary
from .coco import build_coco
from .files import file_name, new_folder
from .parallel import ordered_results, task_window
from .pieces import plan_rows, survey_keys

__all__ = ["MASKS_PER_TASK", "export_dataset"]

MASKS_PER_TASK = 32  # label maps a write task encodes: what the driver holds per task in flight


def _check_coco_target(ds: fo.Dataset, coco_path: Path) -> None:
    """Refuse a folder, and the labeling run's own ``coco.json`` (the unreviewed labels stay as they were)."""
    if coco_path.is_dir():
        raise ReviewError(f"`coco` {str(coco_path)!r} is a folder; give the path of a .json file")
    run = ds.info.get("labeling_run")
    if run and coco_path.resolve() == (Path(run) / "coco.json").resolve():
        raise ReviewError(
            f"`coco` {str(coco_path)!r} is the labeling run's own coco.json; write the reviewed labels to another file"
        )


def _image_keys(ds: fo.Dataset, with_run: bool) -> Iterator[tuple[str, int]]:
    """``(image_path, image_id)`` of each sample (``with_run``: then of each of the run's others), in the order
    :func:`_items` yields them."""
    paths = ds.values("image_path") if ds.has_sample_field("image_path") else ds.values("filepath")
    filepaths = ds.values("filepath")
    paths = [p or f for p, f in zip(paths, filepaths, strict=True)]
    ids = ds.values("image_id") if ds.has_sample_field("image_id") else [None] * len(paths)
    yield from ((p, i if i is not None else path_image_id(p)) for p, i in zip(paths, ids, strict=True))
    if with_run:
        yield from ((row["image_path"], int(row["image_id"])) for row in iter_run_outside(ds, ["image_id"]))


class _MaskNames(Mapping[str, str]):
    """Each image's path (:func:`_image_keys`) -> the relative file name of its mask PNG, made when asked rather than
    held: the images' path below their common folder, and for a name that clashes with an earlier one's
    ``.<image_id>`` before the suffix, as :func:`~pipeline.exports.files.mask_file_names` names them (compared as
    :mod:`pipeline.exports.pieces` compares names). The driver keeps the sorted ids of the renamed images, not a
    name per image. An image is its path's id (:func:`pipeline.label.inputs.image_id`), as the run's rows are."""

    def __init__(self, ds: fo.Dataset, with_run: bool) -> None:
        self._keys = lambda: _image_keys(ds, with_run)
        survey = survey_keys(self._keys())
        plan, _ = plan_rows([survey], [])
        self._common = plan.common
        self._renamed = np.sort(survey.ids[plan.with_id])
        self._count = len(survey.ids)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        return (path for path, _ in self._keys())

    def __getitem__(self, path: str) -> str:
        image_id = path_image_id(path)
        renamed = bool(contains(self._renamed, np.array([image_id], np.int64))[0])
        return file_name(path, image_id, self._common, ".png", with_id=renamed)


def _mask_names(ds: fo.Dataset, with_run: bool) -> Mapping[str, str]:
    """Each sample's image path (``with_run``: and each of the run's others) -> the relative file name of its mask
    PNG (:class:`_MaskNames`)."""
    return _MaskNames(ds, with_run)


def _items(ds: fo.Dataset, with_run: bool) -> Iterator[dict[str, Any]]:
    """:func:`iter_reviewed_images` of the dataset, then (``with_run``) the run's other images in that form, as
    the run wrote them (not edited)."""
    yield from iter_reviewed_images(ds)
    if not with_run:
        return
    for row in iter_run_outside(ds):
        image = LabeledImage(row["image_path"], int(row["image_id"]), row["label_map_png"], row["segments"])
        label_map = image.label_map()
        yield {
            "image_path": image.image_path,
            "image_id": image.image_id,
            "width": int(label_map.shape[1]),
            "height": int(label_map.shape[0]),
            "label_map": label_map,
            "segments": image.segments,
            "edited": [],
        }


def export_dataset(
    dataset: str | os.PathLike[str] | fo.Dataset,
    coco_path: str | os.PathLike[str] | None,
    masks_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the dataset's current ``predictions`` as COCO JSON (atomically) and/or a new folder of PNG masks
    (written whole or not at all). ``dataset`` as :func:`resolve_dataset` takes it, or ``run+fiftyone:NAME``: every
    image of the dataset's run, the dataset's as reviewed (first), the others as the run wrote them.

    Returns:
        ``{"dataset", "images", "annotations", "edited_images", "edited_segments", "coco", "masks", "selection"}``
        (``selection``: what a partial dataset records of its selection, None for a dataset of the whole run).
    """
    text = dataset if isinstance(dataset, fo.Dataset) else os.fspath(dataset)
    with_run = isinstance(text, str) and text.startswith(RUN_WITH_REVIEW_PREFIX)
    ds = resolve_dataset(FIFTYONE_PREFIX + text[len(RUN_WITH_REVIEW_PREFIX) :] if with_run else text)
    if coco_path is None and masks_dir is None:
        raise ReviewError("nothing to export: give `coco`, `masks` or both (or `format` with `output`)")
    if coco_path is not None:
        _check_coco_target(ds, Path(coco_path))
    vocabulary = dataset_vocabulary(ds)
    masks = Path(masks_dir) if masks_dir is not None else None
    try:
        return _export(ds, vocabulary, coco_path, masks, with_run)
    except OSError as error:  # a full disk, a folder without write permission: the user's to fix
        where = " and ".join(repr(str(p)) for p in (coco_path, masks) if p is not None)
        raise ReviewError(f"cannot write the export to {where}: {error.strerror or error}") from error


@ray.remote
def _write_masks(folder: str, names: list[str], label_maps: list[np.ndarray]) -> int:
    """Write each label map as the PNG ``folder/name`` (:func:`encode_label_map_png`); returns how many."""
    for name, label_map in zip(names, label_maps, strict=True):
        target = Path(folder, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_label_map_png(label_map, ignore_value=-1))
    return len(names)


def _mask_tasks(folder: Path, chunks: Iterable[list[tuple[str, np.ndarray]]]) -> Iterator[ray.ObjectRef]:
    """A :func:`_write_masks` task per chunk of ``(name, label map)``."""
    for chunk in chunks:
        names, label_maps = zip(*chunk, strict=True)
        yield _write_masks.remote(str(folder), list(names), list(label_maps))


def _export(
    ds: fo.Dataset,
    vocabulary: Vocabulary,
    coco_path: str | os.PathLike[str] | None,
    masks: Path | None,
    with_run: bool,
) -> dict[str, Any]:
    """:func:`export_dataset` after its checks."""
    names = _mask_names(ds, with_run) if masks is not None else {}
    rows: list[dict[str, Any]] = []
    counts = {"images": 0, "annotations": 0, "edited_images": 0, "edited_segments": 0}

    def labels() -> Iterator[tuple[str, np.ndarray]]:
        """Each image's mask name and label map, counted and (with ``coco_path``) kept without its label map."""
        for item in _items(ds, with_run):
            counts["images"] += 1
            counts["annotations"] += len(item["segments"])
            counts["edited_images"] += bool(item["edited"])
            counts["edited_segments"] += len(item["edited"])
            label_map = item.pop("label_map")
            del item["edited"]
            if coco_path is not None:
                rows.append(item)
            yield names.get(item["image_path"], ""), label_map

    with new_folder(masks, "--masks", ReviewError) if masks is not None else contextlib.nullcontext() as folder:
        if folder is None:
            for _ in labels():
                pass
        else:
            (folder / "classes.txt").write_text("".join(f"{n}\n" for n in vocabulary.names), encoding="utf-8")
            init_ray()
            items = labels()
            chunks = iter(lambda: list(itertools.islice(items, MASKS_PER_TASK)), [])
            tasks = -(-len(names) // MASKS_PER_TASK)
            ordered_results(_mask_tasks(folder, chunks), tasks, "masks", task_window())  # raises a task's OSError
        if coco_path is not None:
            run = f"labeling run {ds.info.get('labeling_run')} with " if with_run else ""
            info = {"description": f"{run}reviewed in FiftyOne dataset {ds.name}"}
            coco = build_coco(rows, vocabulary.names, vocabulary.category_ids, info=info)
            counts["annotations"] = len(coco["annotations"])
            Path(coco_path).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(coco, coco_path)
    return {
        "dataset": ds.name,
        **counts,
        "coco": None if coco_path is None else str(coco_path),
        "masks": None if masks is None else str(masks),
        "selection": None if with_run else selection_info(ds),
    }
