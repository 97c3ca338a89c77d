"""A review dataset as a :class:`pipeline.sources.LabelSource` (``fiftyone:DATASET`` for training and the
exports): its ``predictions`` masks as they are after editing, with segments scored as the COCO export
scores them (the run's score when unedited, 1.0 when edited)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo

from ..segments import encode_label_map_png
from ..sources.base import LabeledImage, LabelSource
from .errors import ReviewError
from .labels import dataset_vocabulary
from .reviewed import iter_reviewed_images

__all__ = ["dataset_label_source"]


def dataset_label_source(name: str) -> LabelSource:
    """The review dataset ``name`` as a label source (its masks as they are when a pass reads them).

    Raises:
        ReviewError: no dataset of that name, or one that ``jobs/review.py`` did not make.
    """
    if not fo.dataset_exists(name):
        raise ReviewError(
            f"there is no FiftyOne dataset named {name!r} (jobs/review.py makes one per labeling run and prints "
            "its name; `fiftyone datasets list` lists them)"
        )
    dataset = fo.load_dataset(name)
    vocabulary = dataset_vocabulary(dataset)

    def images() -> Iterator[LabeledImage]:
        for item in iter_reviewed_images(dataset):
            png = encode_label_map_png(item["label_map"], ignore_value=-1)
            yield LabeledImage(item["image_path"], item["image_id"], png, item["segments"])

    run = Path(dataset.info["labeling_run"])
    return LabelSource(f"FiftyOne dataset {name}", run, vocabulary, len(dataset), images)
