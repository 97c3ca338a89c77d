"""A review dataset as a :class:`pipeline.sources.LabelSource` for training and the exports: ``fiftyone:DATASET``,
its images with their ``predictions`` masks as they are after editing, with segments scored as the COCO export
scores them (the run's score when unedited, 1.0 when edited); ``run+fiftyone:DATASET``, every image of its run,
the dataset's so and the others as the run wrote them (for a partial dataset, ``review.py --select``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo

from ..label.inputs import image_id as path_image_id
from ..segments import encode_label_map_png
from ..sources.base import LabeledImage, LabelSource
from .dataset import selection_info
from .errors import ReviewError
from .labels import dataset_vocabulary
from .reviewed import iter_reviewed_images, iter_run_outside, run_outside_count

__all__ = ["dataset_label_source", "run_with_review_label_source"]


def _load(name: str) -> fo.Dataset:
    """The review dataset ``name``.

    Raises:
        ReviewError: no dataset of that name.
    """
    if not fo.dataset_exists(name):
        raise ReviewError(
            f"there is no FiftyOne dataset named {name!r} (jobs/review.py makes one per labeling run and prints "
            "its name; `fiftyone datasets list` lists them)"
        )
    return fo.load_dataset(name)


def _reviewed(dataset: fo.Dataset) -> Iterator[LabeledImage]:
    for item in iter_reviewed_images(dataset):
        png = encode_label_map_png(item["label_map"], ignore_value=-1)
        yield LabeledImage(item["image_path"], item["image_id"], png, item["segments"])


def _reviewed_keys(dataset: fo.Dataset) -> Iterator[tuple[str, int]]:
    """``(image_path, image_id)`` of each image :func:`_reviewed` yields, in its order, from the samples' small
    fields alone (no mask is read)."""
    filepaths = dataset.values("filepath")
    paths = dataset.values("image_path") if dataset.has_sample_field("image_path") else [None] * len(filepaths)
    ids = dataset.values("image_id") if dataset.has_sample_field("image_id") else [None] * len(filepaths)
    for path, filepath, image_id in zip(paths, filepaths, ids, strict=True):
        path = path or filepath
        yield path, int(image_id) if image_id is not None else path_image_id(path)


def dataset_label_source(name: str) -> LabelSource:
    """The review dataset ``name`` as a label source: its images (a partial dataset's chosen images alone, as
    its description says), their masks as they are when a pass reads them.

    Raises:
        ReviewError: no dataset of that name, or one that ``jobs/review.py`` did not make.
    """
    dataset = _load(name)
    vocabulary = dataset_vocabulary(dataset)
    selection = selection_info(dataset)
    description = f"FiftyOne dataset {name}"
    if selection is not None:
        description += f" ({selection['images']} of its run's {selection['run_images']} images, review.py --select)"
    run = Path(dataset.info["labeling_run"])
    return LabelSource(
        description,
        run,
        vocabulary,
        len(dataset),
        lambda: _reviewed(dataset),
        reviewed=lambda: _reviewed(dataset),
        reviewed_keys=lambda: _reviewed_keys(dataset),
        from_run=False,
    )


def run_with_review_label_source(name: str) -> LabelSource:
    """``run+fiftyone:NAME``: every image of the review dataset's run, the dataset's own first (masks as they are
    when a pass reads them), then the run's others in its order, as the run wrote them.

    Raises:
        ReviewError: no dataset of that name, one that ``jobs/review.py`` did not make, or its run is gone.
    """
    dataset = _load(name)
    vocabulary = dataset_vocabulary(dataset)
    outside = run_outside_count(dataset)

    def images() -> Iterator[LabeledImage]:
        yield from _reviewed(dataset)
        for row in iter_run_outside(dataset):
            yield LabeledImage(row["image_path"], int(row["image_id"]), row["label_map_png"], row["segments"])

    run = Path(dataset.info["labeling_run"])
    description = f"labeling run {run} with FiftyOne dataset {name}'s {len(dataset)} reviewed images"
    return LabelSource(
        description,
        run,
        vocabulary,
        len(dataset) + outside,
        images,
        reviewed=lambda: _reviewed(dataset),
        reviewed_keys=lambda: _reviewed_keys(dataset),
    )
