"""Evaluation during training: :func:`evaluate`, the mIoU of a model on validation data.

Images are resized to a short side of ``short_side`` like SAN's test mapper, scored with
``model.predict_scores`` (argmax), the scores mapped back to the label's size; metrics are ``san.metrics``'
(detectron2 protocol, percent). :data:`EVAL_KEYS` are the metrics a run reports and logs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ..metrics import ConfusionMatrix, compute_metrics
from ..modeling.model import SAN
from ..precision import autocast_context
from ..transforms import resize_shortest_edge
from .data import LabeledImages

__all__ = ["EVAL_KEYS", "evaluate"]

EVAL_KEYS = ("mIoU", "fwIoU", "mACC", "pACC")


def evaluate(
    model: SAN,
    dataset: LabeledImages,
    short_side: int = 640,
    max_size: int = 2560,
    limit: int | None = None,
    dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """Semantic-segmentation metrics (percent, ``san.metrics`` detectron2 protocol) of ``model`` on
    ``dataset`` with its own class names. Each worker takes images ``rank::world_size``; confusion matrices
    are summed over workers."""
    matrix = ConfusionMatrix(len(dataset.classes), ignore_index=dataset.ignore_index)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    device = model.device
    for index in range(rank, count, world_size):
        image, label = dataset[index]
        resized = resize_shortest_edge(image, short_side, max_size) if short_side > 0 else image
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with autocast_context(device, dtype):
            scores = model.predict_scores([tensor], dataset.classes, output_sizes=[label.shape])[0]
        matrix.update(scores.argmax(0).cpu().numpy(), label)
    counts = torch.from_numpy(matrix.matrix.copy())
    if world_size > 1:
        counts = counts.to(device)
        dist.all_reduce(counts)
    return compute_metrics(counts.cpu().numpy(), dataset.classes)
