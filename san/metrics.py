"""Streaming semantic-segmentation metrics (pure numpy), as detectron2's ``SemSegEvaluator`` reports them.

:class:`ConfusionMatrix` accumulates a ``[K, K + 1]`` confusion matrix (last column: unlabeled
predictions), :func:`compute_metrics` turns it into mIoU, fwIoU, mACC, pACC and per-class IoU/ACC under
the ``"detectron2"`` or ``"mmseg"`` protocol, :func:`format_table` renders them. The matrix layout, both
protocols and why they differ: ``docs/evaluation.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["PROTOCOLS", "ConfusionMatrix", "compute_metrics", "format_table"]

PROTOCOLS = ("detectron2", "mmseg")
_SUMMARY_KEYS = ("mIoU", "fwIoU", "mACC", "pACC")


class ConfusionMatrix:
    """Streaming confusion matrix over a dataset.

    Args:
        num_classes: number of classes ``K``; valid labels are ``0..K-1``.
        ignore_index: ground-truth value whose pixels are left out of every metric. Must lie
            outside ``[0, K)``: the default 255 only works for ``K <= 255``; large
            vocabularies (ADE-847, Pascal Context-459) use 65535 in detectron2.

    The accumulated :attr:`matrix` has shape ``[K, K + 1]`` and dtype int64: rows are
    ground truth, columns are prediction, and the last column counts pixels whose prediction
    is outside ``[0, K)`` (unlabeled), which are thereby counted as wrong for their
    ground-truth class.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        if 0 <= int(ignore_index) < self.num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} lies inside the class range [0, {self.num_classes}); "
                "it must be outside it (e.g. -1, or 65535 as detectron2 uses for ADE-847 and "
                "Pascal Context-459)"
            )
        self.ignore_index = int(ignore_index)
        self._matrix = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """Read-only view of the accumulated ``[K, K + 1]`` int64 matrix (rows = ground truth)."""
        view = self._matrix.view()
        view.flags.writeable = False
        return view

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> ConfusionMatrix:
        """Add one image.

        Args:
            prediction: integer label map ``[H, W]``. Values outside ``[0, K)`` (e.g. 255)
                are "unlabeled" and go to the extra column.
            ground_truth: integer label map ``[H, W]``, same shape; values in ``[0, K)`` or
                ``ignore_index``.

        Any equal shapes are accepted (e.g. ``[N, H, W]`` or flattened ``[P]``).

        Raises:
            ValueError: if the shapes differ or the ground truth holds a value outside
                ``[0, K)`` that is not ``ignore_index``.
            TypeError: if either array is not of an integer dtype.
        """
        pred = np.asarray(prediction)
        gt = np.asarray(ground_truth)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} != ground_truth shape {gt.shape}; they must be equal")
        for name, arr in (("prediction", pred), ("ground_truth", gt)):
            if not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"{name} must have an integer dtype, got {arr.dtype}")
        k = self.num_classes
        gt = gt.reshape(-1).astype(np.int64, copy=False)
        pred = pred.reshape(-1).astype(np.int64, copy=False)
        keep = gt != self.ignore_index
        if not keep.all():
            gt = gt[keep]
            pred = pred[keep]
        bad = (gt < 0) | (gt >= k)
        if bad.any():
            values = np.unique(gt[bad])
            shown = ", ".join(str(v) for v in values[:10]) + (", ..." if values.size > 10 else "")
            raise ValueError(
                f"ground_truth has values outside [0, {k}) that are not ignore_index={self.ignore_index}: {shown}"
            )
        pred = np.where((pred < 0) | (pred >= k), k, pred)
        counts = np.bincount(gt * (k + 1) + pred, minlength=k * (k + 1))
        self._matrix += counts.reshape(k, k + 1)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. from another worker); returns self."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge ConfusionMatrix(num_classes={other.num_classes}, ignore_index="
                f"{other.ignore_index}) into ConfusionMatrix(num_classes={self.num_classes}, "
                f"ignore_index={self.ignore_index})"
            )
        self._matrix += other._matrix
        return self

    def compute(self, class_names: Sequence[str], protocol: str = "detectron2") -> dict[str, float]:
        """Shortcut for ``compute_metrics(self.matrix, class_names, protocol)``."""
        return compute_metrics(self._matrix, class_names, protocol)


def _ratio(num: np.ndarray, den: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=valid)
    return out


def compute_metrics(
    matrix: np.ndarray | ConfusionMatrix,
    class_names: Sequence[str],
    protocol: str = "detectron2",
) -> dict[str, float]:
    """Semantic-segmentation metrics, in percent, from an accumulated confusion matrix.

    Args:
        matrix: ``[K, K + 1]`` counts (rows = ground truth, columns = prediction, last column
            = unlabeled predictions) as kept by :class:`ConfusionMatrix`, or a square
            ``[K, K]`` matrix without the unlabeled column, or a ConfusionMatrix.
        class_names: ``K`` distinct names, used in the per-class keys.
        protocol: ``"detectron2"`` or ``"mmseg"``; see ``docs/evaluation.md``.

    Returns:
        ``{"mIoU", "fwIoU", "IoU-<name>"..., "mACC", "pACC", "ACC-<name>"...}`` (detectron2's
        key order) mapping to Python floats in percent; NaN for classes the protocol excludes
        and for summaries over no class (e.g. an empty matrix).
    """
    if isinstance(matrix, ConfusionMatrix):
        matrix = matrix.matrix
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    m = np.asarray(matrix, dtype=np.float64)
    names = [str(n) for n in class_names]
    k = len(names)
    if m.ndim != 2 or m.shape[0] != k or m.shape[1] not in (k, k + 1):
        raise ValueError(f"matrix shape {m.shape} does not fit {k} class names; expected ({k}, {k + 1}) or ({k}, {k})")
    if len(set(names)) != k:
        raise ValueError("class_names must be distinct (they become dictionary keys)")
    if (m < 0).any():
        raise ValueError("matrix has negative counts")

    tp = np.diagonal(m[:, :k]).copy()
    pos_gt = m.sum(axis=1)  # includes the unlabeled column: unlabeled pixels are errors
    pos_pred = m[:, :k].sum(axis=0)
    union = pos_gt + pos_pred - tp
    total = pos_gt.sum()

    acc_valid = pos_gt > 0
    acc = _ratio(tp, pos_gt, acc_valid)
    if protocol == "detectron2":
        # detectron2 f3c1bc1..HEAD: iou_valid = acc_valid & (union > 0); miou over iou_valid.
        iou_valid = acc_valid & (union > 0)
    else:
        # mmseg total_area_to_metrics: IoU = intersect / union (NaN iff union == 0); nanmean.
        iou_valid = union > 0
    iou = _ratio(tp, union, iou_valid)

    def _mean(values: np.ndarray, valid: np.ndarray) -> float:
        n = int(valid.sum())
        return float(np.sum(values[valid]) / n) if n else float("nan")

    fw_valid = acc_valid & iou_valid  # classes with weight > 0 (same set for both protocols)
    res: dict[str, float] = {}
    res["mIoU"] = 100 * _mean(iou, iou_valid)
    if total:
        class_weights = pos_gt / total
        res["fwIoU"] = 100 * float(np.sum(iou[fw_valid] * class_weights[fw_valid]))
    else:
        res["fwIoU"] = float("nan")
    for i, name in enumerate(names):
        res[f"IoU-{name}"] = 100 * float(iou[i])
    res["mACC"] = 100 * _mean(acc, acc_valid)
    res["pACC"] = 100 * float(tp.sum() / total) if total else float("nan")
    for i, name in enumerate(names):
        res[f"ACC-{name}"] = 100 * float(acc[i])
    return res


def _fmt(value: float) -> str:
    return "nan" if value != value else f"{value:.2f}"


def format_table(metrics: Mapping[str, float]) -> str:
    """Plain fixed-width text for a :func:`compute_metrics` result.

    First a one-row summary (mIoU, fwIoU, mACC, pACC), then one row per class with its IoU and
    ACC ("nan" where the protocol excludes the class).
    """
    summary = [k for k in _SUMMARY_KEYS if k in metrics]
    lines = []
    if summary:
        width = max(8, *(len(k) for k in summary))
        lines.append("  ".join(k.rjust(width) for k in summary))
        lines.append("  ".join(_fmt(metrics[k]).rjust(width) for k in summary))
    names = [k[4:] for k in metrics if k.startswith("IoU-")]
    names += [k[4:] for k in metrics if k.startswith("ACC-") and f"IoU-{k[4:]}" not in metrics]
    if names:
        name_w = max(5, *(len(n) for n in names))
        if lines:
            lines.append("")
        lines.append(f"{'class'.ljust(name_w)}  {'IoU':>8}  {'ACC':>8}")
        lines.append("-" * (name_w + 20))
        for n in names:
            iou = _fmt(metrics.get(f"IoU-{n}", float("nan")))
            acc = _fmt(metrics.get(f"ACC-{n}", float("nan")))
            lines.append(f"{n.ljust(name_w)}  {iou:>8}  {acc:>8}")
    return "\n".join(lines)
