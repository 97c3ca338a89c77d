"""The result of labeling one image (numpy only, so that a process can hold results without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prediction:
    """One image's result at its original size.

    ``label_map`` ``[H, W]``: 0-based class index, or ``unlabeled`` (255 for uint8, 65535 for uint16)
    where the best score is below the class's minimum score or the best class is an added ("other") name.
    ``scores`` ``[H, W]`` float32: the best class score at each pixel (SAN's semantic score,
    ``sum_q P(class | mask q) * sigmoid(mask q)``, usually 0..1).
    """

    label_map: np.ndarray
    scores: np.ndarray
    unlabeled: int
