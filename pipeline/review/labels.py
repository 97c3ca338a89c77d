"""The ``predictions`` label map of a review dataset's sample as it is now, edits included
(:func:`sample_label_map`), and the vocabulary of the run the dataset was made of."""

from __future__ import annotations

import fiftyone as fo
import numpy as np

from ..vocabulary import Vocabulary
from .errors import ReviewError
from .mask_values import PREDICTIONS, mask_to_label_map

__all__ = ["SAMPLE_FIELDS", "dataset_vocabulary", "sample_label_map"]

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
