"""How good a run's labels are, estimated from a random sample of its images that has ground truth (for example
labels corrected in review): mIoU and pixel accuracy, each with a bootstrap confidence interval over images.

Each image of the sample is kept as three count vectors over the ``K`` ground-truth classes, taken from its
confusion matrix (:class:`san.metrics.ConfusionMatrix`'s ``[K, K + 1]`` layout): ``tp`` (the diagonal), ``pos_gt``
(the row sums, unlabeled column included) and ``pos_pred`` (the column sums over the ``K`` classes). The mIoU and
pACC of a set of images depend only on the sums of these over the set (:func:`san.metrics.compute_metrics`), so a
resample (images drawn with replacement) is a weighted sum, weights being how often each image was drawn, and all
resamples are one matrix product. The interval is the percentile bootstrap's: the resampled values' 2.5th and
97.5th percentiles for 95%. Pure numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import PROTOCOLS

__all__ = ["image_counts", "sample_estimate", "summary_metrics"]


def image_counts(matrix: np.ndarray) -> np.ndarray:
    """``tp``, ``pos_gt`` and ``pos_pred`` (int64 ``[3, K]``) of one image's ``[K, K + 1]`` confusion matrix."""
    k = matrix.shape[0]
    return np.stack([np.diagonal(matrix[:, :k]), matrix.sum(axis=1), matrix[:, :k].sum(axis=0)]).astype(np.int64)


def summary_metrics(counts: np.ndarray, protocol: str = "detectron2") -> tuple[np.ndarray, np.ndarray]:
    """mIoU and pACC in percent (NaN where no class or no pixel counts) of summed counts ``[..., 3, K]``, by the
    rules of :func:`san.metrics.compute_metrics`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    counts = np.asarray(counts, dtype=np.float64)
    tp, pos_gt, pos_pred = counts[..., 0, :], counts[..., 1, :], counts[..., 2, :]
    union = pos_gt + pos_pred - tp
    iou_valid = union > 0 if protocol == "mmseg" else (pos_gt > 0) & (union > 0)
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=iou_valid)
    classes = iou_valid.sum(axis=-1)
    total = pos_gt.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        miou = np.where(classes > 0, 100 * iou.sum(axis=-1) / classes, np.nan)
        pacc = np.where(total > 0, 100 * tp.sum(axis=-1) / total, np.nan)
    return miou, pacc


def sample_estimate(
    counts: np.ndarray,
    protocol: str = "detectron2",
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """mIoU and pACC of a sample of images with their bootstrap confidence intervals.

    Args:
        counts: int64 ``[n, 3, K]``, :func:`image_counts` of each image of the sample (``n >= 2``).
        protocol: as :func:`san.metrics.compute_metrics`.
        resamples: bootstrap resamples of ``n`` images drawn with replacement.
        seed: the resampling's seed (the same seed gives the same interval).
        confidence: the interval's coverage (0.95: the 2.5th to the 97.5th percentile).

    Returns:
        ``{"mIoU": {"estimate", "low", "high"}, "pACC": {...}, "resamples", "seed", "confidence"}``, in percent;
        the estimate is the sample's own value.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.shape[0]
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 images, got {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, np.full(n, 1.0 / n), size=int(resamples))  # [B, n]: times each image is drawn
    # float64 sums of integer counts are exact below 2**53 pixels.
    sums = (draws.astype(np.float64) @ counts.reshape(n, -1).astype(np.float64)).reshape(-1, *counts.shape[1:])
    point = summary_metrics(counts.sum(axis=0), protocol)
    resampled = summary_metrics(sums, protocol)
    tail = 100 * (1 - confidence) / 2
    result: dict[str, Any] = {}
    for name, estimate, values in zip(("mIoU", "pACC"), point, resampled, strict=True):
        low, high = np.nanpercentile(values, [tail, 100 - tail]) if np.isfinite(values).any() else (np.nan,) * 2
        result[name] = {"estimate": float(estimate), "low": float(low), "high": float(high)}
    result.update({"resamples": int(resamples), "seed": int(seed), "confidence": float(confidence)})
    return result
