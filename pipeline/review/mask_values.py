"""Masks of a review dataset: its two ``Segmentation`` fields and how their values relate to a run's label maps.

A mask holds **COCO category ids** (vocabulary class index + 1) and **0 means "no class"** (an unlabeled
prediction, an ignored ground-truth pixel); uint8 when every value fits, else uint16. The reasons, and
the rest of the dataset's layout, are in :mod:`pipeline.review.dataset`; the files that hold the masks, in
:mod:`pipeline.review.mask_files`.
"""

from __future__ import annotations

import numpy as np

from ..segments import unlabeled_value
from .errors import ReviewError

__all__ = ["GROUND_TRUTH", "PREDICTIONS", "label_map_to_mask", "mask_dtype", "mask_to_label_map"]

PREDICTIONS = "predictions"
GROUND_TRUTH = "ground_truth"


def mask_dtype(max_value: int) -> type[np.unsignedinteger]:
    """uint8 when ``max_value`` fits, else uint16 (the App and ``Segmentation`` handle both)."""
    if max_value <= np.iinfo(np.uint8).max:
        return np.uint8
    if max_value <= np.iinfo(np.uint16).max:
        return np.uint16
    raise ReviewError(f"mask value {max_value} does not fit 16 bits")


def label_map_to_mask(label_map: np.ndarray, dtype: type[np.unsignedinteger] | None = None) -> np.ndarray:
    """A run's label map (0-based class index, unlabeled 255 / 65535) -> mask of category ids (0 = unlabeled)."""
    if dtype is not None and label_map.dtype == dtype:
        return label_map + dtype(1)  # unsigned arithmetic wraps the unlabeled value (the dtype's max) to 0
    unlabeled = label_map == unlabeled_value(label_map)
    values = label_map.astype(np.int64) + 1
    values[unlabeled] = 0
    return values.astype(dtype or mask_dtype(int(values.max(initial=0))))


def mask_to_label_map(mask: np.ndarray, num_classes: int, what: str = "mask") -> np.ndarray:
    """Inverse of :func:`label_map_to_mask`: ``int64 [H, W]`` class indices, ``-1`` = unlabeled.

    Raises:
        ReviewError: not a 2-D integer mask, or a value that is no vocabulary class (``1..num_classes``).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ReviewError(f"{what}: expected a 2-D integer mask, got {mask.dtype} {list(mask.shape)}")
    label_map = mask.astype(np.int64) - 1
    bad = (label_map < -1) | (label_map >= num_classes)
    if bad.any():
        shown = ", ".join(str(v) for v in np.unique(mask[bad])[:10])
        raise ReviewError(f"{what}: values {shown} are no vocabulary class (valid: 0 = unlabeled, 1..{num_classes})")
    return label_map
