"""The reviewed labels of a FiftyOne dataset made by :func:`pipeline.review.dataset.load_run` (possibly edited
since), image by image, in the labeling job's form: what the exports (:mod:`pipeline.exports.reviewed`) and
training (:mod:`pipeline.review.source`) read; and, for ``run+fiftyone:DATASET``, the rows of the dataset's run that
it does not hold (:func:`iter_run_outside`), as the run wrote them.

Unedited segments keep the run's score, edited or added ones get 1.0; the rules: ``docs/review.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fiftyone as fo
import numpy as np
import pyarrow as pa

from ..label.inputs import image_id as path_image_id
from ..output_shards import shard_batches, shard_files
from ..outputs import RunOutput
from ..row_rules import RowKeys, contains, current_rows, scan_keys
from ..segments import label_map_segments
from ..sources.base import FIFTYONE_PREFIX, RUN_WITH_REVIEW_PREFIX
from .dataset import default_dataset_name, rle_digest, selection_info
from .errors import ReviewError
from .labels import SAMPLE_FIELDS, dataset_vocabulary, sample_label_map
from .mask_values import PREDICTIONS

__all__ = ["REVIEWED_SCORE", "iter_reviewed_images", "iter_run_outside", "resolve_dataset", "run_outside_count"]

REVIEWED_SCORE = 1.0
_BATCH_ROWS = 64  # rows of a prediction file read into memory at once


def resolve_dataset(spec: str | os.PathLike[str] | fo.Dataset) -> fo.Dataset:
    """A dataset, a dataset name (or ``fiftyone:NAME``), or a labeling run's output folder (its dataset from
    ``jobs/review.py``).

    Raises:
        ReviewError: no such dataset (for a folder: it has not been loaded with ``jobs/review.py`` yet, or its
            dataset is partial, ``review.py --select``: exporting it would leave out the run's other images, so
            the user says which is meant, ``fiftyone:NAME`` or ``run+fiftyone:NAME``).
    """
    if isinstance(spec, fo.Dataset):
        return spec
    text = os.fspath(spec).removeprefix(FIFTYONE_PREFIX)
    if fo.dataset_exists(text):
        return fo.load_dataset(text)
    if (Path(text) / "manifest.json").is_file():
        name = default_dataset_name(text)
        if fo.dataset_exists(name):
            dataset = fo.load_dataset(name)
            selection = selection_info(dataset)
            if selection is not None:
                raise ReviewError(
                    f"{text}'s dataset {name!r} holds {selection['images']} of the run's {selection['run_images']} "
                    f"images (review.py selection {' '.join(selection['select'])}): give {FIFTYONE_PREFIX}{name} "
                    f"for those images alone, or {RUN_WITH_REVIEW_PREFIX}{name} for every image of the run, those "
                    "as reviewed"
                )
            return dataset
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


def _run_of(dataset: fo.Dataset) -> RunOutput:
    """The labeling run a review dataset was made of (``info['labeling_run']``).

    Raises:
        ReviewError: the run's folder is gone (or is no longer a labeling run's).
    """
    run = RunOutput(dataset.info["labeling_run"])
    run.read_vocabulary(ReviewError)
    return run


def _current_outside(run: RunOutput, dataset: fo.Dataset) -> tuple[RowKeys, np.ndarray]:
    """The run's prediction rows (their files, ids and generations) and per row whether it is its image's current
    row (:func:`pipeline.row_rules.current_rows`) and not an image of the dataset: 13 bytes per row, in NumPy."""
    rows = scan_keys(shard_files(run.predictions_dir), "image_id")
    current = current_rows(rows, scan_keys(shard_files(run.errors_dir), "image_path"))
    inside = np.unique(np.array([i for i in dataset.values("image_id") if i is not None], np.int64))
    current &= ~contains(inside, rows.ids)  # the dataset's images: a selection, small beside the run
    return rows, current


def run_outside_count(dataset: fo.Dataset) -> int:
    """How many images of the dataset's run the dataset does not hold (0 for a dataset of the whole run)."""
    return int(_current_outside(_run_of(dataset), dataset)[1].sum())


def iter_run_outside(dataset: fo.Dataset, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The prediction rows of the dataset's run (``image_path`` and ``columns``, default ``image_id``,
    ``label_map_png``, ``segments``) whose image the dataset does not hold, as the run wrote them, in the run's
    order: with the dataset's own images, every image of the run (``run+fiftyone:NAME``). Which rows is decided on
    their ids in NumPy (:func:`_current_outside`); the rows are read a file at a time, ``_BATCH_ROWS`` at once.

    Raises:
        ReviewError: the run's folder is gone.
    """
    rows, outside = _current_outside(_run_of(dataset), dataset)
    wanted = list(dict.fromkeys(["image_path", "image_id", *(columns or ["label_map_png", "segments"])]))
    for file, chosen in rows.per_file(outside):
        if not chosen.any():
            continue
        start = 0
        for table in shard_batches(file, wanted, _BATCH_ROWS):
            yield from table.filter(pa.array(chosen[start : start + table.num_rows])).to_pylist()
            start += table.num_rows
