"""The result of labeling one image (numpy only, so that a process can hold results without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The unlabeled value of a uint8 label map (classes 0..254) and of a uint16 one (classes 0..65534).
UNLABELED_U8 = 255
UNLABELED_U16 = 65535


def label_encoding(num_classes: int) -> tuple[int, type[np.unsignedinteger]]:
    """The unlabeled value and the label map dtype for ``num_classes`` classes: ``(255, uint8)`` up to 255
    classes, else ``(65535, uint16)``. The one place this rule is written (label maps and their PNGs).

    Raises:
        ValueError: more classes than a uint16 map holds (65535).
    """
    if num_classes <= UNLABELED_U8:
        return UNLABELED_U8, np.uint8
    if num_classes <= UNLABELED_U16:
        return UNLABELED_U16, np.uint16
    raise ValueError(f"{num_classes} classes do not fit a 16-bit label map (at most {UNLABELED_U16})")


@dataclass
class ImageLabels:
    """One image's result at its original size.

    ``label_map`` ``[H, W]``: 0-based class index, or ``unlabeled`` (255 for uint8, 65535 for uint16)
    where the best score is below the class's minimum score or the best class is an added ("other") name.
    ``scores`` ``[H, W]`` float32: the best class score at each pixel (SAN's semantic score,
    ``sum_q P(class | mask q) * sigmoid(mask q)``, usually 0..1).
    ``class_scores`` ``[num_classes]`` float32: the mean of ``scores`` over each class's pixels (0 for a class
    without pixels), taken on the model's device (:func:`~san.class_scores.class_mean_scores`).
    """

    label_map: np.ndarray
    scores: np.ndarray
    unlabeled: int
    class_scores: np.ndarray
