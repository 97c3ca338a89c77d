"""Review a labeling run in FiftyOne: load it (and its ground truth) into one persistent dataset per run.

:func:`load_run` writes one sample per labeled image with ``predictions`` (and ``ground_truth``)
``Segmentation`` masks of category ids (0 = no class), per-image scores and mIoU, and saved views for
triage; it replaces only a dataset it made, and only with ``overwrite``. The dataset's layout: ``docs/review.md``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou
import numpy as np

from ..evaluate import EvaluationError, align_classes, warn_class_alignment, warn_matching
from ..ground_truth import open_ground_truth
from ..ground_truth.base import GroundTruth, match_predictions
from ..outputs import RunOutput
from ..segments import decode_label_map_png
from ..vocabulary import Vocabulary
from .masks import GROUND_TRUTH, PREDICTIONS, ReviewError, label_map_to_mask, mask_dtype
from .metrics import compute_sample_metrics
from .views import MAX_CLASS_VIEWS, save_review_views

__all__ = ["check_dataset_name", "default_dataset_name", "is_review_dataset", "load_run"]

_BATCH = 64


def default_dataset_name(output_dir: str | os.PathLike[str]) -> str:
    """``san-<folder name>-<8 hex of the absolute path>``: stable for a run, distinct between runs."""
    path = Path(output_dir).resolve()
    return f"san-{path.name}-{hashlib.sha1(str(path).encode('utf-8')).hexdigest()[:8]}"


def _gt_values(vocabulary: Vocabulary, gt: GroundTruth) -> tuple[np.ndarray, dict[int, str], dict[str, Any]]:
    """Ground-truth class index -> mask value, the ground-truth mask targets, and the alignment summary."""
    alignment = align_classes(vocabulary.names, gt.class_names, vocabulary.synonyms)
    k, n = len(gt.class_names), len(vocabulary)
    values = np.zeros(k, dtype=np.int64)
    for v in range(n):
        g = int(alignment["lookup"][v])
        if g < k:
            values[g] = v + 1
    targets: dict[int, str] = {}
    extra = n
    for g in range(k):
        if values[g] == 0:
            extra += 1
            values[g] = extra
            targets[extra] = gt.class_names[g]
        else:
            targets[int(values[g])] = vocabulary.names[int(values[g]) - 1]
    return values, dict(sorted(targets.items())), alignment["info"]


@dataclass
class _RunGroundTruth:
    """A run's ground truth, ready to become ``ground_truth`` masks."""

    gt: GroundTruth
    values: np.ndarray  # ground-truth class index -> mask value
    targets: dict[int, str]  # the ground-truth field's mask targets
    matched: dict[str, Hashable]  # image_path -> ground-truth key
    info: dict[str, Any]  # for dataset.info

    def segmentation(self, path: str, label_map: np.ndarray, dtype: type[np.unsignedinteger]) -> fo.Segmentation:
        """The ``ground_truth`` label of a matched image.

        Raises:
            EvaluationError: the ground truth's size differs from the prediction's.
        """
        key = self.matched[path]
        truth = self.gt.read(key)
        if truth.shape != label_map.shape:
            raise EvaluationError(
                f"size mismatch for {path!r}: the prediction is {label_map.shape[1]}x{label_map.shape[0]} "
                f"(WxH) but its ground truth {self.gt.path_of(key)!r} is {truth.shape[1]}x{truth.shape[0]}"
            )
        mask = np.zeros(truth.shape, dtype=dtype)
        labeled = truth != self.gt.ignore_value
        mask[labeled] = self.values[truth[labeled]]
        return fo.Segmentation(mask=mask)


def _open_run_ground_truth(
    gt_spec: str,
    gt_classes: str | os.PathLike[str] | None,
    vocabulary: Vocabulary,
    ignore_index: int,
    paths: list[str],
) -> _RunGroundTruth:
    """Open the ground truth, align its classes and match its images, with :mod:`pipeline.evaluate`'s
    warnings on stderr (unmatched classes, images without ground truth or prediction)."""
    classes = None if gt_classes is None else os.fspath(gt_classes)
    gt = open_ground_truth(gt_spec, classes, vocabulary.names, ignore_index)
    values, targets, alignment = _gt_values(vocabulary, gt)
    warn_class_alignment(alignment)
    matching = match_predictions(gt, paths)
    warn_matching(matching, unmatched="get no ground_truth mask or miou")
    info = {
        "class_alignment": alignment,
        "ground_truth": gt.description,
        "images_with_ground_truth": len(matching.matched),
    }
    return _RunGroundTruth(gt, values, targets, matching.matched, info)


def is_review_dataset(dataset: fo.Dataset) -> bool:
    """Whether :func:`load_run` made ``dataset``: its ``info`` names the labeling run and its vocabulary."""
    info = dataset.info or {}
    return "labeling_run" in info and "vocabulary" in info


def _clashing_dataset(name: str) -> str | None:
    """The existing dataset that a new one named ``name`` would collide with: same name, or same URL slug."""
    names = fo.list_datasets()
    if name in names:
        return name
    slug = fou.to_slug(name)
    return next((other for other in names if fou.to_slug(other) == slug), None)


def check_dataset_name(name: str, overwrite: bool = False) -> bool:
    """Whether a dataset named ``name`` exists and may be replaced; refuse when it must not be.

    Only a dataset that :func:`load_run` made (:func:`is_review_dataset`) is ever replaced, and only with
    ``overwrite``: it may hold edits made in the App.

    Raises:
        ReviewError: the name is taken by a dataset that is not a review dataset (or by another dataset's
            URL slug), or by a review dataset and ``overwrite`` is False.
    """
    existing = _clashing_dataset(name)
    if existing is None:
        return False
    if existing != name:
        raise ReviewError(
            f"dataset name {name!r} is not available: its URL slug {fou.to_slug(name)!r} is that of the existing "
            f"FiftyOne dataset {existing!r}; choose another name with --dataset OTHER"
        )
    dataset = fo.load_dataset(name)
    if not is_review_dataset(dataset):
        raise ReviewError(
            f"a FiftyOne dataset named {name!r} already exists and was not made by jobs/review.py (its info names "
            "no labeling run); it is never deleted or replaced: choose another name with --dataset OTHER"
        )
    if not overwrite:
        raise ReviewError(
            f"FiftyOne dataset {name!r} already exists (loaded from {dataset.info['labeling_run']}) and may hold "
            "review edits; add --overwrite to replace it, or load into a new dataset with --dataset NEW"
        )
    return True


def _sample(row: dict[str, Any], dtype: type[np.unsignedinteger], truth: _RunGroundTruth | None) -> fo.Sample:
    """The sample of one prediction row (fields: ``docs/review.md``)."""
    path = row["image_path"]
    try:
        label_map = decode_label_map_png(row["label_map_png"])
    except ValueError as exc:
        raise ReviewError(f"prediction of {path!r}: {exc}") from None
    segments = [{k: s[k] for k in ("category_id", "category_name", "rle", "area", "score")} for s in row["segments"]]
    scores = [float(s["score"]) for s in segments]
    fields: dict[str, Any] = {
        "image_path": path,
        "image_id": int(row["image_id"]),
        "width": int(row["width"]),
        "height": int(row["height"]),
        "metadata": fo.ImageMetadata(width=int(row["width"]), height=int(row["height"])),
        PREDICTIONS: fo.Segmentation(mask=label_map_to_mask(label_map, dtype)),
        "run_segments": segments,
        "mean_score": float(np.mean(scores)) if scores else None,
    }
    if truth is not None and path in truth.matched:
        fields[GROUND_TRUTH] = truth.segmentation(path, label_map, dtype)
    return fo.Sample(filepath=path, **fields)


def _fill(
    dataset: fo.Dataset,
    output: RunOutput,
    vocabulary: Vocabulary,
    truth: _RunGroundTruth | None,
    max_class_views: int | None,
) -> None:
    """Write the info, mask targets, samples, metrics and saved views of a new, empty dataset."""
    dataset.info = {
        "labeling_run": str(output.root.resolve()),
        "vocabulary": vocabulary.to_json(),
        "mask_values": "category id = vocabulary index + 1; 0 = unlabeled prediction / ignored ground truth",
        **(truth.info if truth is not None else {}),
    }
    targets = {PREDICTIONS: {i + 1: name for i, name in enumerate(vocabulary.names)}}
    if truth is not None:
        targets[GROUND_TRUTH] = truth.targets
    dataset.mask_targets = targets
    dataset.save()
    dtype = mask_dtype(max([len(vocabulary), *targets.get(GROUND_TRUTH, {})]))
    batch: list[fo.Sample] = []
    for row in output.iter_predictions(batch_rows=_BATCH):
        batch.append(_sample(row, dtype, truth))
        if len(batch) >= _BATCH:
            dataset.add_samples(batch, progress=False)
            batch = []
    if batch:
        dataset.add_samples(batch, progress=False)
    compute_sample_metrics(dataset)
    save_review_views(dataset, max_class_views)


def _publish(dataset: fo.Dataset, name: str, overwrite: bool) -> None:
    """Give the completely built ``dataset`` its ``name`` and make it persistent; the old dataset of that
    name (checked again: :func:`check_dataset_name`) is deleted only now."""
    if check_dataset_name(name, overwrite):
        fo.delete_dataset(name)
    dataset.name = name
    dataset.persistent = True


def load_run(
    output_dir: str | os.PathLike[str],
    gt_spec: str | None = None,
    gt_classes: str | os.PathLike[str] | None = None,
    name: str | None = None,
    ignore_index: int = 255,
    max_class_views: int | None = MAX_CLASS_VIEWS,
    overwrite: bool = False,
) -> fo.Dataset:
    """Load a labeling run (and its ground truth) into a persistent FiftyOne dataset.

    The dataset is built under a temporary name (not persistent, so that FiftyOne's clean-up of such
    datasets removes it should the process die), with its per-sample metrics
    (:func:`pipeline.review.metrics.compute_sample_metrics`) and saved views
    (:func:`pipeline.review.views.save_review_views`); only when it is complete does it take ``name``.
    An existing dataset of that name is replaced only when :func:`load_run` made it and ``overwrite`` is
    True (it may hold edits made in the App); otherwise this raises before reading anything. On failure
    the new dataset is deleted and the old one is untouched. Class and image matching problems are
    warned about on stderr, as by :func:`pipeline.evaluate.evaluate_run`.
    Layout and representation: ``docs/review.md``.

    Args:
        output_dir: the labeling run's ``--output`` directory.
        gt_spec, gt_classes, ignore_index: ground truth as for :func:`pipeline.evaluate.evaluate_run`
            (a PNG folder, a COCO JSON, or ``SCHEME:LOCATION``); None loads predictions only.
        name: dataset name; default :func:`default_dataset_name`.
        max_class_views: see :func:`pipeline.review.views.save_review_views`.
        overwrite: replace an existing dataset of that name made by :func:`load_run`.

    Raises:
        ReviewError, GroundTruthError, EvaluationError: a missing or unreadable input, no class or
            image matching the ground truth, a ground truth whose size differs from its prediction's, a
            dataset name that is taken (:func:`check_dataset_name`).
    """
    output = RunOutput(output_dir)
    if not output.root.is_dir():
        raise ReviewError(f"labeling output {str(output.root)!r} does not exist or is not a directory")
    name = name or default_dataset_name(output.root)
    check_dataset_name(name, overwrite)
    vocabulary = output.read_vocabulary(ReviewError)
    paths = output.read_predictions(["image_path"]).column("image_path").to_pylist()
    if not paths:
        raise ReviewError(f"{output.root} has no predictions (no rows in predictions/part-*.parquet)")
    truth = None
    if gt_spec is not None:
        truth = _open_run_ground_truth(gt_spec, gt_classes, vocabulary, ignore_index, paths)

    dataset = fo.Dataset(f"{name[:100]}-incomplete-{uuid.uuid4().hex[:12]}")
    try:
        _fill(dataset, output, vocabulary, truth, max_class_views)
        _publish(dataset, name, overwrite)
    except BaseException:
        fo.delete_dataset(dataset.name)
        raise
    return dataset
