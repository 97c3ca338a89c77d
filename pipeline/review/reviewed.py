"""The reviewed labels of a FiftyOne dataset made by :func:`pipeline.review.dataset.load_run` (possibly edited
since), image by image, in the labeling job's form: what the exports (:mod:`pipeline.exports.reviewed`) and
training (:mod:`pipeline.review.source`) read.

Unedited segments keep the run's score, edited or added ones get 1.0; the rules: ``docs/review.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fiftyone as fo

from ..label.inputs import image_id as path_image_id
from ..segments import label_map_segments
from ..sources.base import FIFTYONE_PREFIX
from .dataset import default_dataset_name, rle_digest
from .errors import ReviewError
from .labels import SAMPLE_FIELDS, dataset_vocabulary, sample_label_map
from .mask_values import PREDICTIONS

__all__ = ["REVIEWED_SCORE", "iter_reviewed_images", "resolve_dataset"]

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
            # (datasets made before run_segments kept only the digest hold the RLE itself)
            digest = None if before is None else before.get("rle_sha1") or rle_digest(before["rle"])
            if digest == rle_digest(segment["rle"]):
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
