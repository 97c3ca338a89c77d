"""Score a labeling run's label maps against ground truth: mIoU, fwIoU, mACC, pACC and per-class IoU/ACC.

:func:`evaluate_run` aligns the run's vocabulary with the ground truth's classes by name or synonym
(:func:`align_classes`) and streams one image at a time into a :class:`san.metrics.ConfusionMatrix`.
How classes and images are paired, and what counts as wrong: ``docs/evaluation.md``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from san.atomic import write_json_atomic
from san.errors import UserError
from san.metrics import PROTOCOLS, ConfusionMatrix, compute_metrics

from .ground_truth import open_ground_truth
from .ground_truth.base import GroundTruth, GroundTruthError, Matching, match_predictions
from .ground_truth.classes import normalise_class_name
from .outputs import RunOutput
from .segments import decode_label_map_png, unlabeled_value

__all__ = ["EvaluationError", "align_classes", "evaluate_run", "warn_class_alignment", "warn_matching"]

_BATCH_ROWS = 16


class EvaluationError(UserError):
    """The run output and the ground truth cannot be compared; the message says why."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _shown(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def align_classes(
    vocabulary_names: list[str] | tuple[str, ...],
    gt_names: tuple[str, ...],
    synonyms: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Align vocabulary classes to ground-truth classes by normalised name
    (:func:`pipeline.ground_truth.classes.normalise_class_name`): a class's name, else the first of its
    ``synonyms`` (one list per class, as ``Vocabulary.synonyms``) that names a ground-truth class.

    Returns:
        ``{"lookup": int64 [65536] array mapping a predicted class index to its ground-truth index (K =
        len(gt_names), i.e. "wrong", where there is none), "info": JSON-able summary}``.

    Raises:
        EvaluationError: no class matches at all (most likely a wrong --gt-classes file).
    """
    k = len(gt_names)
    gt_index = {normalise_class_name(n): i for i, n in enumerate(gt_names)}
    lookup = np.full(65536, k, dtype=np.int64)
    pairs: list[list[str]] = []
    vocabulary_only: list[str] = []
    for v, name in enumerate(vocabulary_names):
        candidates = [name, *(synonyms[v] if synonyms else ())]
        g = next((gt_index[key] for key in map(normalise_class_name, candidates) if key in gt_index), None)
        if g is None:
            vocabulary_only.append(name)
        else:
            lookup[v] = g
            pairs.append([name, gt_names[g]])
    matched_gt = {normalise_class_name(g) for _, g in pairs}
    gt_only = [n for n in gt_names if normalise_class_name(n) not in matched_gt]
    if not pairs:
        raise EvaluationError(
            f"no vocabulary class matches a ground-truth class by name; vocabulary: {_shown(list(vocabulary_names))}; "
            f"ground truth: {_shown(list(gt_names))}"
        )
    info = {
        "rule": "a class's name or synonym equals a ground-truth name, ignoring case, underscores and extra spaces",
        "vocabulary_classes": len(vocabulary_names),
        "ground_truth_classes": k,
        "matched": len(pairs),
        "pairs": pairs,
        "vocabulary_not_in_ground_truth": vocabulary_only,
        "ground_truth_not_in_vocabulary": gt_only,
    }
    return {"lookup": lookup, "info": info}


def warn_class_alignment(info: dict[str, Any]) -> None:
    """Warn on stderr about the classes that :func:`align_classes` could not pair (its ``info``)."""
    if info["vocabulary_not_in_ground_truth"]:
        names = info["vocabulary_not_in_ground_truth"]
        _warn(f"{len(names)} vocabulary class(es) not in the ground truth, counted as wrong: {_shown(names)}")
    if info["ground_truth_not_in_vocabulary"]:
        names = info["ground_truth_not_in_vocabulary"]
        _warn(f"{len(names)} ground-truth class(es) not in the vocabulary, never predicted: {_shown(names)}")


def warn_matching(matching: Matching, unmatched: str = "are skipped") -> None:
    """Warn on stderr about the images :func:`pipeline.ground_truth.base.match_predictions` could not pair
    one to one; ``unmatched`` says what becomes of a predicted image without ground truth."""
    if matching.predictions_without_ground_truth:
        missing = matching.predictions_without_ground_truth
        _warn(f"{len(missing)} predicted image(s) have no ground truth and {unmatched}, e.g. {_shown(missing, 3)}")
    if matching.ground_truth_without_prediction:
        unused = matching.ground_truth_without_prediction
        _warn(f"{len(unused)} ground-truth image(s) have no prediction, e.g. {_shown(unused, 3)}")
    if matching.shared_ground_truth:
        _warn(f"{len(matching.shared_ground_truth)} ground-truth image(s) match several predicted images")


def _iter_predictions(output: RunOutput, wanted: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    """``(image_path, label_map)`` of the wanted images, one at a time (:meth:`RunOutput.iter_predictions`)."""
    for row in output.iter_predictions(["image_path", "label_map_png"], _BATCH_ROWS):
        if row["image_path"] in wanted:
            try:
                yield row["image_path"], decode_label_map_png(row["label_map_png"])
            except ValueError as exc:
                raise EvaluationError(f"prediction of {row['image_path']!r}: {exc}") from None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def evaluate_run(
    output_dir: str | os.PathLike[str],
    gt_spec: str,
    gt_classes: str | os.PathLike[str] | None = None,
    protocol: str = "detectron2",
    ignore_index: int = 255,
    metrics_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a labeling run against ground truth and write ``metrics.json``.

    Args:
        output_dir: the labeling run's ``--output`` directory.
        gt_spec: ground truth: a folder of label PNGs, a COCO ``.json``, or ``SCHEME:LOCATION`` of a
            registered reader (see :func:`pipeline.ground_truth.open_ground_truth`).
        gt_classes: for a PNG folder, the class-names file (line ``v`` names pixel value ``v``); default:
            the run's vocabulary order.
        protocol: ``"detectron2"`` or ``"mmseg"`` (see :mod:`san.metrics`).
        ignore_index: the ground-truth pixel value to ignore in label images; when it is a class (more
            than 255 classes) 65535 is used instead.
        metrics_path: where to write the JSON (default ``OUT/metrics.json``).

    Returns:
        ``compute_metrics`` keys (``mIoU``, ``fwIoU``, ``mACC``, ``pACC``, ``IoU-<gt class>``,
        ``ACC-<gt class>``; percent, NaN where undefined) plus ``protocol``, ``num_images``, ``pixels``,
        ``ground_truth``, ``ignore_values``, ``class_alignment``, ``matching`` and ``metrics_path``.
        The file holds the same with NaN written as ``null`` (strict JSON).

    Raises:
        EvaluationError, GroundTruthError: ``output_dir`` or the ground truth does not exist, unreadable
            inputs, no matching image or class, or a prediction and its ground truth of different sizes (both
            sizes and the image named).
    """
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    output = RunOutput(output_dir)
    if not output.root.is_dir():
        raise EvaluationError(f"`predictions` {str(output.root)!r} does not exist or is not a directory")
    vocabulary = output.read_vocabulary(EvaluationError)
    paths = output.read_predictions(["image_path"]).column("image_path").to_pylist()
    if not paths:
        raise EvaluationError(f"{output.root} has no predictions (no rows in predictions/part-*.parquet)")
    gt: GroundTruth = open_ground_truth(
        gt_spec, None if gt_classes is None else os.fspath(gt_classes), vocabulary.names, ignore_index
    )

    alignment = align_classes(vocabulary.names, gt.class_names, vocabulary.synonyms)
    info = alignment["info"]
    warn_class_alignment(info)
    matching = match_predictions(gt, paths)
    warn_matching(matching)

    k = len(gt.class_names)
    lookup = alignment["lookup"]
    matrix = ConfusionMatrix(k, ignore_index=gt.ignore_value)
    num_images = 0
    for path, label_map in _iter_predictions(output, set(matching.matched)):
        key = matching.matched[path]
        truth = gt.read(key)
        if truth.shape != label_map.shape:
            raise EvaluationError(
                f"size mismatch for {path!r}: the prediction is {label_map.shape[1]}x{label_map.shape[0]} (WxH) "
                f"but its ground truth {gt.path_of(key)!r} is {truth.shape[1]}x{truth.shape[0]}"
            )
        predicted = lookup[label_map]
        predicted[label_map == unlabeled_value(label_map)] = k
        try:
            matrix.update(predicted, truth)
        except ValueError as exc:
            raise GroundTruthError(f"ground truth {gt.path_of(key)!r}: {exc}") from None
        num_images += 1

    result: dict[str, Any] = dict(compute_metrics(matrix, gt.class_names, protocol))
    target = Path(metrics_path) if metrics_path is not None else output.root / "metrics.json"
    result.update(
        {
            "protocol": protocol,
            "num_images": num_images,
            "pixels": int(matrix.matrix.sum()),
            "predictions": str(output.root),
            "ground_truth": gt.description,
            "ignore_values": gt.raw_ignore,
            "class_alignment": info,
            "matching": matching.summary(),
            "metrics_path": str(target),
        }
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(_json_safe(result), target, indent=2)
    except OSError as error:
        raise EvaluationError(f"cannot write the metrics to {str(target)!r}: {error.strerror or error}") from error
    return result
