"""Each class's mean score over its pixels, taken where the label map and the scores are (the model's device), so
that a labeling worker's CPUs never pass over a full-size score map for it."""

from __future__ import annotations

import torch

# Pixels of a label map counted at once (bounds the float64 copy of their scores to 32 MiB).
BAND_PIXELS = 1 << 22


@torch.inference_mode()
def class_mean_scores(label: torch.Tensor, score: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The mean of ``score`` ``[H, W]`` over each class's pixels of ``label`` ``[H, W]`` (non-negative integers;
    a value of ``num_classes`` or more, e.g. the unlabeled value, counts for no class), summed in float64.

    Returns:
        ``[num_classes]`` float64 on the tensors' device; 0 for a class without pixels.
    """
    if label.shape != score.shape or label.ndim != 2:
        raise ValueError(f"label {tuple(label.shape)} and score {tuple(score.shape)} must be one [H, W] shape")
    sums = torch.zeros(num_classes, dtype=torch.float64, device=label.device)
    counts = torch.zeros(num_classes, dtype=torch.int64, device=label.device)
    rows = max(1, BAND_PIXELS // max(1, label.shape[1]))
    for start in range(0, label.shape[0], rows):
        band = label[start : start + rows].flatten()
        weights = score[start : start + rows].flatten().double()
        sums += torch.bincount(band, weights=weights, minlength=num_classes)[:num_classes]
        counts += torch.bincount(band, minlength=num_classes)[:num_classes]
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
