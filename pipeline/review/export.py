"""Export reviewed labels from a FiftyOne dataset made by :func:`pipeline.review.dataset.load_run` (possibly
edited since) to COCO JSON in the labeling job's form, and to a folder of label-map PNGs.

Unedited segments keep the run's score, edited or added ones get 1.0; the rules: ``docs/review.md``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fiftyone as fo

from ..coco import build_coco, write_json_atomic
from ..export_files import mask_file_names, new_folder
from ..label.inputs import image_id as path_image_id
from ..label_sources import FIFTYONE_PREFIX
from ..segments import encode_label_map_png, label_map_segments
from ..vocabulary import Vocabulary
from .dataset import default_dataset_name
from .labels import SAMPLE_FIELDS, dataset_vocabulary, sample_label_map
from .masks import PREDICTIONS, ReviewError

__all__ = ["export_dataset", "iter_reviewed_images", "mask_file_names", "resolve_dataset"]

REVIEWED_SCORE = 1.0


def resolve_dataset(spec: str | os.PathLike[str] | fo.Dataset) -> fo.Dataset:
    """A dataset, a dataset name (or ``fiftyone:NAME``), or a labeling run's output folder (its dataset from
    ``jobs/review.py``).

    Raises:
        ReviewError: no such dataset (for a folder: it has not been loaded with ``jobs/review.py`` yet).
    """
    if isinstance(spec, fo.Dataset):
        return spec
    text = os.fspath(spec).removeprefix(FIFTYONE_PREFIX)
    if fo.dataset_exists(text):
        return fo.load_dataset(text)
    if (Path(text) / "manifest.json").is_file():
        name = default_dataset_name(text)
        if fo.dataset_exists(name):
            return fo.load_dataset(name)
        raise ReviewError(
            f"{text} is a labeling run, but its dataset {name!r} does not exist; run jobs/review.py first"
        )
    raise ReviewError(f"{text!r} is neither a FiftyOne dataset nor a labeling run's output folder")


def iter_reviewed_images(dataset: fo.Dataset) -> Iterator[dict[str, Any]]:
    """Per sample: ``image_path``, ``image_id``, ``width``, ``height``, ``label_map`` (int64, -1 = unlabeled),
    ``segments`` (as the run writes them; scores per ``docs/review.md``) and ``edited`` (class names
    whose pixels differ from the run's).

    Raises:
        ReviewError: a mask with a value that is no vocabulary class, or whose size differs from the image's.
    """
    vocabulary = dataset_vocabulary(dataset)
    fields = [f for f in SAMPLE_FIELDS if dataset.has_sample_field(f)]
    for sample in dataset.select_fields([PREDICTIONS, *fields]).iter_samples(progress=False):
        path, label_map = sample_label_map(sample, fields, len(vocabulary))
        run = {int(s["category_id"]): s for s in (sample["run_segments"] if "run_segments" in fields else None) or []}
        segments = label_map_segments(label_map, None, vocabulary.names, vocabulary.category_ids, ignore_value=-1)
        edited = []
        for segment in segments:
            before = run.get(segment["category_id"])
            if before is not None and before["rle"] == segment["rle"]:
                segment["score"] = float(before["score"])
            else:
                segment["score"] = REVIEWED_SCORE
                edited.append(segment["category_name"])
        present = {s["category_id"] for s in segments}
        edited += [s["category_name"] for cid, s in run.items() if cid not in present]  # removed classes
        image_id = sample["image_id"] if "image_id" in fields and sample["image_id"] is not None else None
        yield {
            "image_path": path,
            "image_id": int(image_id) if image_id is not None else path_image_id(path),
            "width": int(label_map.shape[1]),
            "height": int(label_map.shape[0]),
            "label_map": label_map,
            "segments": segments,
            "edited": edited,
        }


def _check_coco_target(ds: fo.Dataset, coco_path: Path) -> None:
    """Refuse a folder, and the labeling run's own ``coco.json`` (the unreviewed labels stay as they were)."""
    if coco_path.is_dir():
        raise ReviewError(f"--coco {str(coco_path)!r} is a folder; give the path of a .json file")
    run = ds.info.get("labeling_run")
    if run and coco_path.resolve() == (Path(run) / "coco.json").resolve():
        raise ReviewError(
            f"--coco {str(coco_path)!r} is the labeling run's own coco.json; write the reviewed labels to another file"
        )


def _mask_names(ds: fo.Dataset) -> dict[str, str]:
    """Each sample's image path -> the relative file name of its mask PNG (see :func:`mask_file_names`)."""
    paths = ds.values("image_path") if ds.has_sample_field("image_path") else ds.values("filepath")
    filepaths = ds.values("filepath")
    paths = [p or f for p, f in zip(paths, filepaths, strict=True)]
    ids = ds.values("image_id") if ds.has_sample_field("image_id") else [None] * len(paths)
    return mask_file_names([(p, i if i is not None else path_image_id(p)) for p, i in zip(paths, ids, strict=True)])


def export_dataset(
    dataset: str | os.PathLike[str] | fo.Dataset,
    coco_path: str | os.PathLike[str] | None,
    masks_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the dataset's current ``predictions`` as COCO JSON (atomically) and/or a new folder of PNG masks
    (written whole or not at all).

    Returns:
        ``{"dataset", "images", "annotations", "edited_images", "edited_segments", "coco", "masks"}``.
    """
    ds = resolve_dataset(dataset)
    if coco_path is None and masks_dir is None:
        raise ReviewError("nothing to export: give --coco, --masks or both (or --format with --output)")
    if coco_path is not None:
        _check_coco_target(ds, Path(coco_path))
    vocabulary = dataset_vocabulary(ds)
    masks = Path(masks_dir) if masks_dir is not None else None
    try:
        return _export(ds, vocabulary, coco_path, masks)
    except OSError as error:  # a full disk, a folder without write permission: the user's to fix
        where = " and ".join(repr(str(p)) for p in (coco_path, masks) if p is not None)
        raise ReviewError(f"cannot write the export to {where}: {error.strerror or error}") from error


def _export(
    ds: fo.Dataset, vocabulary: Vocabulary, coco_path: str | os.PathLike[str] | None, masks: Path | None
) -> dict[str, Any]:
    """:func:`export_dataset` after its checks."""
    names = _mask_names(ds) if masks is not None else {}
    with new_folder(masks, "--masks", ReviewError) if masks is not None else contextlib.nullcontext() as folder:
        if folder is not None:
            (folder / "classes.txt").write_text("".join(f"{n}\n" for n in vocabulary.names), encoding="utf-8")
        rows = []
        edited_images = edited_segments = 0
        for item in iter_reviewed_images(ds):
            if folder is not None:
                target = folder / names[item["image_path"]]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(encode_label_map_png(item["label_map"], ignore_value=-1))
            edited_images += bool(item["edited"])
            edited_segments += len(item["edited"])
            del item["label_map"], item["edited"]
            rows.append(item)
        info = {"description": f"reviewed in FiftyOne dataset {ds.name}"}
        coco = build_coco(rows, vocabulary.names, vocabulary.category_ids, info=info)
        if coco_path is not None:
            Path(coco_path).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(coco, coco_path)
    return {
        "dataset": ds.name,
        "images": len(rows),
        "annotations": len(coco["annotations"]),
        "edited_images": edited_images,
        "edited_segments": edited_segments,
        "coco": None if coco_path is None else str(coco_path),
        "masks": None if masks is None else str(masks),
    }
