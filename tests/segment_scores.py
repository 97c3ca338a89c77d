"""Test helper shared by the segment and COCO tests."""

from __future__ import annotations

import numpy as np


def own_scores(label_map: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each pixel's score for its own class (clipped index where unlabeled): ``[H, W]`` from ``[N, H, W]``."""
    index = np.clip(label_map, 0, scores.shape[0] - 1)[None]
    return np.take_along_axis(scores, index, axis=0)[0]
