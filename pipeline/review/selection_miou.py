"""Per-image mIoU of a run's images against ground truth, in Ray tasks: what ``--select lowest-miou:N`` ranks by.

Each task opens the ground truth once and scores the rows of a run of prediction files, one image at a time,
the way :func:`pipeline.evaluate.evaluate_run` does (classes aligned by :func:`pipeline.evaluate.align_classes`,
an unlabeled pixel counts as wrong, images matched by :meth:`GroundTruth.match`), into a
:class:`san.metrics.ConfusionMatrix` whose detectron2 mIoU (:func:`san.metrics.compute_metrics`: the mean over
the classes present in the image's ground truth) is the image's; only a float per image returns to the driver.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray

from san.metrics import ConfusionMatrix, compute_metrics

from ..evaluate import EvaluationError, align_classes
from ..ground_truth import open_ground_truth
from ..ground_truth.base import GroundTruth
from ..label.resources import init_ray
from ..output_shards import read_shard
from ..outputs import RunOutput
from ..segments import decode_label_map_png, unlabeled_value
from ..vocabulary import Vocabulary
from .errors import ReviewError

__all__ = ["image_mious"]

# Tasks per CPU of the cluster: a few each, so that a slow one does not hold the others up.
_TASKS_PER_CPU = 2


def _image_miou(path: str, png: bytes, gt: GroundTruth, lookup: np.ndarray) -> float:
    """The detectron2 mIoU (percent) of one image's label map; NaN without ground truth or when every pixel is
    ignored.

    Raises:
        EvaluationError: the prediction cannot be decoded, or its ground truth has another size.
    """
    key = gt.match(path)
    if key is None:
        return float("nan")
    try:
        label_map = decode_label_map_png(png)
    except ValueError as exc:
        raise EvaluationError(f"prediction of {path!r}: {exc}") from None
    truth = gt.read(key)
    if truth.shape != label_map.shape:
        raise EvaluationError(
            f"size mismatch for {path!r}: the prediction is {label_map.shape[1]}x{label_map.shape[0]} (WxH) "
            f"but its ground truth {gt.path_of(key)!r} is {truth.shape[1]}x{truth.shape[0]}"
        )
    k = len(gt.class_names)
    predicted = lookup[label_map]
    predicted[label_map == unlabeled_value(label_map)] = k
    matrix = ConfusionMatrix(k, ignore_index=gt.ignore_value).update(predicted, truth)
    return compute_metrics(matrix, gt.class_names)["mIoU"]


@ray.remote(num_cpus=1)
def _mious(
    work: list[tuple[str, np.ndarray]], vocabulary: dict, gt_spec: str, gt_classes: str | None, ignore_index: int
) -> np.ndarray:
    """The mIoU of the given rows of each prediction file, in order."""
    names = Vocabulary.from_json(vocabulary)
    gt = open_ground_truth(gt_spec, gt_classes, names.names, ignore_index)
    lookup = align_classes(names.names, gt.class_names, names.synonyms)["lookup"]
    mious = []
    for shard, rows in work:
        table = read_shard(Path(shard), columns=["image_path", "label_map_png"]).take(rows)
        for path, png in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True):
            mious.append(_image_miou(path, png, gt, lookup))
    return np.array(mious, dtype=np.float64)


def image_mious(
    output: RunOutput,
    shards: list[Path],
    orders: np.ndarray,
    gt_spec: str,
    gt_classes: str | None = None,
    ignore_index: int = 255,
) -> np.ndarray:
    """The mIoU (percent, NaN where undefined) of the rows of ``orders`` (file index in ``shards`` << 32 | row,
    ascending), computed in Ray tasks (:func:`pipeline.label.resources.init_ray`).

    The ground truth is opened on the driver first, so that a wrong ``gt`` fails before any task starts.

    Raises:
        GroundTruthError, EvaluationError: as :func:`pipeline.evaluate.evaluate_run`.
    """
    vocabulary = output.read_vocabulary(ReviewError)
    gt = open_ground_truth(gt_spec, gt_classes, vocabulary.names, ignore_index)
    align_classes(vocabulary.names, gt.class_names, vocabulary.synonyms)
    files = orders >> 32
    groups = np.split(np.arange(len(orders)), np.flatnonzero(np.diff(files)) + 1)
    work = [(str(shards[files[group[0]]]), orders[group] & 0xFFFFFFFF) for group in groups if len(group)]
    init_ray()
    tasks = max(1, min(len(work), _TASKS_PER_CPU * int(ray.cluster_resources().get("CPU", 1))))
    chunks = [c.tolist() for c in np.array_split(np.arange(len(work)), tasks)]
    refs = [
        _mious.remote([work[i] for i in chunk], vocabulary.to_json(), gt_spec, gt_classes, ignore_index)
        for chunk in chunks
    ]
    return np.concatenate(ray.get(refs)) if refs else np.zeros(0)
