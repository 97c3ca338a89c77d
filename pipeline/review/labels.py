"""The ``predictions`` label maps of a review dataset as they are now (edits included): one sample's
(:func:`sample_label_map`), and the dataset as a :class:`pipeline.label_sources.LabelSource`
(``fiftyone:DATASET`` for training and the exports)."""

from __future__ import annotations

from collections.abc import Iterator

import fiftyone as fo
import numpy as np

from ..label.inputs import image_id as path_image_id
from ..label_sources import LabeledImage, LabelSource
from ..segments import encode_label_map_png
from ..vocabulary import Vocabulary
from .masks import PREDICTIONS, ReviewError, mask_to_label_map

__all__ = ["SAMPLE_FIELDS", "dataset_label_source", "dataset_vocabulary", "sample_label_map"]

# The fields besides `predictions` that the readers use, where the dataset has them.
SAMPLE_FIELDS = ("image_path", "image_id", "width", "height", "run_segments")


def dataset_vocabulary(dataset: fo.Dataset) -> Vocabulary:
    """The vocabulary of the run a review dataset was made of (``info['vocabulary']``)."""
    obj = (dataset.info or {}).get("vocabulary")
    if obj is None:
        raise ReviewError(f"dataset {dataset.name!r} has no info['vocabulary'] (it was not made by jobs/review.py)")
    return Vocabulary.from_json(obj)


def sample_label_map(sample: fo.Sample, fields: list[str], num_classes: int) -> tuple[str, np.ndarray]:
    """``(image path, label map [H, W] int64, -1 = unlabeled)`` of a sample's current ``predictions``
    mask (``get_mask()``: a mask in the database or a ``mask_path`` file); a sample without a mask is all
    unlabeled. ``fields``: the :data:`SAMPLE_FIELDS` the dataset has.

    Raises:
        ReviewError: a mask value that is no vocabulary class, a mask whose size differs from the image's,
            or neither a mask nor width and height.
    """
    path = sample["image_path"] if "image_path" in fields and sample["image_path"] else sample.filepath
    what = f"sample {sample.id} ({path})"
    label = sample[PREDICTIONS]
    mask = label.get_mask() if label is not None and label.has_mask else None
    width = sample["width"] if "width" in fields else None
    height = sample["height"] if "height" in fields else None
    if mask is None:
        if not width or not height:
            raise ReviewError(f"{what}: no predictions mask and no width/height")
        return path, np.full((int(height), int(width)), -1, dtype=np.int64)
    label_map = mask_to_label_map(mask, num_classes, what)
    if (width and int(width) != label_map.shape[1]) or (height and int(height) != label_map.shape[0]):
        raise ReviewError(f"{what}: mask is {label_map.shape[1]}x{label_map.shape[0]}, image {width}x{height}")
    return path, label_map


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
    fields = [f for f in SAMPLE_FIELDS if dataset.has_sample_field(f)]

    def images() -> Iterator[LabeledImage]:
        for sample in dataset.select_fields([PREDICTIONS, *fields]).iter_samples(progress=False):
            path, label_map = sample_label_map(sample, fields, len(vocabulary))
            image_id = sample["image_id"] if "image_id" in fields and sample["image_id"] is not None else None
            image_id = int(image_id) if image_id is not None else path_image_id(path)
            yield LabeledImage(path, image_id, encode_label_map_png(label_map, ignore_value=-1))

    return LabelSource(f"FiftyOne dataset {name}", vocabulary, len(dataset), images)
