"""Metrics of a review dataset: per-sample ``classes_present``, ``iou`` and ``miou`` and the dataset's
detectron2 metrics from the current masks, and the same mIoU derived from FiftyOne's
``evaluate_segmentations`` as a cross-check (fields: :mod:`pipeline.review.dataset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fiftyone as fo
import numpy as np

from san.metrics import ConfusionMatrix, compute_metrics

from .errors import ReviewError
from .mask_values import GROUND_TRUTH, PREDICTIONS

__all__ = ["MISSING_LABEL", "SampleMetrics", "compare_with_fiftyone", "compute_sample_metrics"]

MISSING_LABEL = "(unlabeled)"
"""Name of mask value 0 in the mask targets handed to ``evaluate_segmentations``."""


def _masks(sample: fo.Sample) -> tuple[np.ndarray | None, np.ndarray | None]:
    out = []
    for field in (PREDICTIONS, GROUND_TRUTH):
        label = sample[field] if sample.has_field(field) else None
        out.append(label.get_mask() if label is not None and label.has_mask else None)
    return out[0], out[1]


def _image_matrix(pred: np.ndarray, truth: np.ndarray, k: int, what: str) -> ConfusionMatrix:
    if pred.shape != truth.shape:
        raise ReviewError(f"{what}: predictions mask {list(pred.shape)} and ground_truth mask {list(truth.shape)}")
    # Value v -> class index v - 1: prediction 0 (unlabeled) becomes -1, the unlabeled column;
    # ground truth 0 becomes -1, the ignore index.
    pred_index = pred.astype(np.int64) - 1
    pred_index[pred_index >= k] = -1  # a value with no name at all (not reachable from load_run)
    return ConfusionMatrix(k, ignore_index=-1).update(pred_index, truth.astype(np.int64) - 1)


class SampleMetrics:
    """Per-sample ``classes_present``, ``iou`` and ``miou`` of one dataset's mask values (its mask targets)."""

    def __init__(self, mask_targets: dict[str, dict[int, str]]):
        targets = mask_targets or {}
        names: dict[int, str] = {}
        for field in (PREDICTIONS, GROUND_TRUTH):
            for value, name in (targets.get(field) or {}).items():
                names.setdefault(int(value), str(name))
        names.pop(0, None)
        top = max(names, default=0)
        self.value_names = {v: names.get(v, f"value {v}") for v in range(1, top + 1)}
        self.k = top
        self.names = [self.value_names[v] for v in range(1, top + 1)]

    def classes_present(self, pred: np.ndarray | None) -> list[str]:
        """Names of the values in a ``predictions`` mask ``[H, W]``, in value order (0 left out)."""
        if pred is None:
            return []
        counts = np.bincount(pred.ravel(), minlength=1)  # one pass; np.unique sorts every pixel
        return [self.value_names.get(int(v), f"value {v}") for v in np.flatnonzero(counts) if v != 0]

    def image(self, pred: np.ndarray, truth: np.ndarray, what: str) -> tuple[ConfusionMatrix, dict[str, float], float]:
        """The confusion matrix, ``iou`` (class name -> percent, the classes in ``truth``) and ``miou``
        (percent, NaN when every pixel is ignored) of a ``[H, W]`` prediction and ground-truth mask pair.

        Raises:
            ReviewError: the masks differ in size.
        """
        matrix = _image_matrix(pred, truth, self.k, what)
        result = compute_metrics(matrix, self.names)
        ious = {n: result[f"IoU-{n}"] for n in self.names if not np.isnan(result[f"IoU-{n}"])}
        return matrix, ious, result["mIoU"]


def compute_sample_metrics(dataset: fo.Dataset) -> dict[str, float]:
    """(Re)compute ``classes_present``, ``iou`` and ``miou`` of every sample from its current masks.

    Run it again after editing masks. Returns the dataset-level detectron2 metrics
    (:func:`san.metrics.compute_metrics`, percent) over every sample that has both masks, plus
    ``num_images`` and ``pixels``; ``{}`` when no sample has ground truth.
    """
    metrics = SampleMetrics(dataset.mask_targets)
    total = ConfusionMatrix(max(metrics.k, 1), ignore_index=-1)
    images = 0
    for field in ("iou", "miou"):
        if not dataset.has_sample_field(field) and dataset.has_sample_field(GROUND_TRUTH):
            dataset.add_sample_field(field, fo.DictField if field == "iou" else fo.FloatField)
    for sample in dataset.iter_samples(autosave=True, progress=False):
        pred, truth = _masks(sample)
        sample["classes_present"] = metrics.classes_present(pred)
        if pred is None or truth is None or metrics.k == 0:
            if sample.has_field("miou"):
                sample["miou"], sample["iou"] = None, None
            continue
        matrix, ious, miou = metrics.image(pred, truth, f"sample {sample.id} ({sample.filepath})")
        sample["iou"] = ious
        sample["miou"] = None if np.isnan(miou) else miou
        total.merge(matrix)
        images += 1
    if not images:
        return {}
    return {**compute_metrics(total, metrics.names), "num_images": images, "pixels": int(total.matrix.sum())}


def _fiftyone_miou(matrix: np.ndarray, classes: Sequence[str], missing: str) -> float:
    """detectron2 mIoU (percent) from FiftyOne's pixel confusion matrix (rows = ground truth, columns =
    prediction, both in ``classes`` order). The ``missing`` row (ignored ground truth) is dropped; its
    column (unlabeled predictions) stays: those pixels count against their ground-truth class."""
    m = np.asarray(matrix, dtype=np.float64)
    keep = np.array([c != missing for c in classes])
    rows = m[keep]  # ground-truth classes only
    tp = np.diagonal(m)[keep]
    pos_gt = rows.sum(axis=1)
    pos_pred = rows[:, keep].sum(axis=0)
    valid = pos_gt > 0
    iou = tp[valid] / (pos_gt + pos_pred - tp)[valid]
    return float(100 * iou.mean()) if iou.size else float("nan")


def compare_with_fiftyone(dataset: fo.Dataset, eval_key: str = "eval") -> dict[str, Any]:
    """Our mIoU and the one derived from FiftyOne's ``evaluate_segmentations`` over the same pixels.

    Runs ``evaluate_segmentations(PREDICTIONS, gt_field=GROUND_TRUTH, eval_key=eval_key, mask_targets=...)``
    on the samples with both masks (replacing an earlier evaluation of that key; per-sample
    ``<eval_key>_accuracy/_precision/_recall`` appear as usual). The mask targets handed to it are
    both fields' targets plus ``0 -> MISSING_LABEL``: FiftyOne drops every pixel whose value is not
    a target, so without 0 an unlabeled prediction would vanish instead of counting as wrong.

    Returns:
        ``{"ours": mIoU, "fiftyone": mIoU, "num_images", "pixels", "fiftyone_pixels", "eval_key"}``
        (percent; ``pixels`` = non-ignored pixels we counted, ``fiftyone_pixels`` = the same from
        FiftyOne's matrix without its ignored row).

    Raises:
        ReviewError: no sample has both masks.
    """
    ours = compute_sample_metrics(dataset)
    if not ours:
        raise ReviewError(f"dataset {dataset.name!r} has no sample with both {PREDICTIONS} and {GROUND_TRUTH} masks")
    value_names = SampleMetrics(dataset.mask_targets).value_names
    missing = MISSING_LABEL
    while missing in value_names.values():
        missing += "_"
    targets = {0: missing, **value_names}
    if eval_key in dataset.list_evaluations():
        dataset.delete_evaluation(eval_key)
    view = dataset.exists(PREDICTIONS).exists(GROUND_TRUTH)
    results = view.evaluate_segmentations(
        PREDICTIONS, gt_field=GROUND_TRUTH, eval_key=eval_key, mask_targets=targets, progress=False
    )
    classes = [targets[v] for v in sorted(targets)]
    matrix = results.confusion_matrix(classes=classes)
    keep = np.array([c != missing for c in classes])
    return {
        "ours": ours["mIoU"],
        "fiftyone": _fiftyone_miou(matrix, classes, missing),
        "num_images": ours["num_images"],
        "pixels": ours["pixels"],
        "fiftyone_pixels": int(np.asarray(matrix)[keep].sum()),
        "eval_key": eval_key,
    }
