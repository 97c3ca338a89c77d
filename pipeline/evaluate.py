"""Score a labeling run's label maps against ground truth: mIoU, fwIoU, mACC, pACC and per-class IoU/ACC.

:func:`evaluate_run` aligns the run's vocabulary with the ground truth's classes by name or synonym
(:func:`align_classes`) and sums the confusion matrices that Ray tasks compute over the prediction files
(:mod:`pipeline.evaluate_tasks`): the driver holds no per-image data, and a number of references to the files'
matches that grows with the logarithm of the number of files (:class:`_Merged`). How classes and images are
paired, and what counts as wrong: ``docs/evaluation.md``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import ray
from tqdm import tqdm

from san.atomic import write_json_atomic
from san.errors import UserError
from san.metrics import PROTOCOLS, compute_metrics

from .current_rows import dropped_rows
from .evaluate_tasks import (
    EXAMPLES,
    EvaluationError,
    FileScore,
    GroundTruthInfo,
    Scoring,
    merge_matches,
    open_ground_truth_remote,
    score_file,
    summarise,
)
from .ground_truth.base import Matching
from .ground_truth.classes import normalise_class_name
from .label.resources import init_ray
from .output_shards import shard_files
from .outputs import RunOutput

__all__ = [
    "EvaluationError",
    "align_classes",
    "evaluate_run",
    "warn_class_alignment",
    "warn_matching",
    "warn_matching_summary",
]

#: How many references to files' :class:`FileMatches` one :func:`merge_matches` task joins: the driver holds at
#: most ``MERGE_GROUP - 1`` per level of merges (at most 45 for the 3,907 files of a million-image run).
MERGE_GROUP = 16

T = TypeVar("T")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _shown(names: list[str], limit: int = 10, total: int | None = None) -> str:
    """The first ``limit`` of ``names`` (the first of ``total``, when given) and how many more there are."""
    total = len(names) if total is None else total
    return ", ".join(names[:limit]) + (f", ... ({total - limit} more)" if total > limit else "")


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
    warn_matching_summary(matching.summary(), unmatched)


def warn_matching_summary(summary: dict[str, Any], unmatched: str = "are skipped") -> None:
    """:func:`warn_matching` from a :meth:`pipeline.ground_truth.base.Matching.summary` (counts and examples)."""
    missing = summary["predictions_without_ground_truth"]
    if missing:
        shown = _shown(summary["predictions_without_ground_truth_examples"], 3, missing)
        _warn(f"{missing} predicted image(s) have no ground truth and {unmatched}, e.g. {shown}")
    unused = summary["ground_truth_without_prediction"]
    if unused:
        shown = _shown(summary["ground_truth_without_prediction_examples"], 3, unused)
        _warn(f"{unused} ground-truth image(s) have no prediction, e.g. {shown}")
    shared = summary["ground_truth_matched_by_several_predictions"]
    if shared:
        _warn(f"{shared} ground-truth image(s) match several predicted images")


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
    sample_estimate: bool = False,
    resamples: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a labeling run against ground truth in Ray tasks and write ``metrics.json``.

    Joins the Ray cluster of a ``ray job submit`` (or ``RAY_ADDRESS``), else starts a local Ray
    (:func:`pipeline.label.resources.init_ray`); one task per prediction file (:mod:`pipeline.evaluate_tasks`).

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
        sample_estimate: the ground truth is a random sample of the run's images (e.g. corrected in review):
            also estimate the run's mIoU and pACC with bootstrap confidence intervals over images
            (:mod:`san.sample_estimate`).
        resamples, seed: the bootstrap's resamples and seed.
        progress: show a progress bar over the prediction files.

    Returns:
        ``compute_metrics`` keys (``mIoU``, ``fwIoU``, ``mACC``, ``pACC``, ``IoU-<gt class>``,
        ``ACC-<gt class>``; percent, NaN where undefined) plus ``protocol``, ``num_images``, ``pixels``,
        ``ground_truth``, ``ignore_values``, ``class_alignment``, ``matching``, ``sample_estimate`` (only when
        asked for) and ``metrics_path``; and ``confusion_matrix``, the ``[K, K + 1]`` int64 matrix the metrics
        come from. The file holds the same but the matrix, with NaN written as ``null`` (strict JSON).

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
    files = shard_files(output.predictions_dir)
    if not files:
        raise EvaluationError(f"{output.root} has no predictions (no rows in predictions/part-*.parquet)")
    init_ray()
    with _task_errors():
        holder, info_ref = open_ground_truth_remote.remote(
            gt_spec, None if gt_classes is None else os.fspath(gt_classes), vocabulary.names, ignore_index
        )
        gt: GroundTruthInfo = ray.get(info_ref)
        alignment = align_classes(vocabulary.names, gt.class_names, vocabulary.synonyms)
        warn_class_alignment(alignment["info"])
        k = len(gt.class_names)
        scoring = ray.put(Scoring(alignment["lookup"], k, gt.ignore_value, sample_estimate))
        dropped = dropped_rows(files, shard_files(output.errors_dir))
        total, matches = _score_files(files, scoring, [holder], dropped, k, progress)
        if not total.rows:
            raise EvaluationError(f"{output.root} has no predictions (no rows in predictions/part-*.parquet)")
        if sample_estimate and total.images < 2:
            raise EvaluationError(
                f"a sample estimate needs at least 2 images with ground truth; {total.images} of the run's "
                f"{total.rows} have one in {gt.description}"
            )
        estimate = {"protocol": protocol, "resamples": resamples, "seed": seed} if sample_estimate else None
        examples = [path for _, path in total.missing_examples]
        summary = ray.get(summarise.remote([holder], list(map(str, files)), matches, total.missing, examples, estimate))
    warn_matching_summary(summary["matching"])

    result: dict[str, Any] = dict(compute_metrics(total.matrix, gt.class_names, protocol))
    target = Path(metrics_path) if metrics_path is not None else output.root / "metrics.json"
    result.update(
        {
            "protocol": protocol,
            "num_images": total.images,
            "pixels": int(total.matrix.sum()),
            "predictions": str(output.root),
            "ground_truth": gt.description,
            "ignore_values": gt.raw_ignore,
            "class_alignment": alignment["info"],
            "matching": summary["matching"],
        }
    )
    if sample_estimate:
        result["sample_estimate"] = {
            "sample_images": total.images,
            "run_images": total.rows,
            "method": "percentile bootstrap over images: images resampled with replacement, metrics recomputed "
            "from their summed confusion matrices",
            **summary["sample_estimate"],
        }
    result["metrics_path"] = str(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(_json_safe(result), target, indent=2)
    except OSError as error:
        raise EvaluationError(f"cannot write the metrics to {str(target)!r}: {error.strerror or error}") from error
    result["confusion_matrix"] = total.matrix
    return result


def _score_files(
    files: list[Path],
    scoring: ray.ObjectRef,
    holder: list[ray.ObjectRef],
    dropped: list[ray.ObjectRef],
    num_classes: int,
    progress: bool,
) -> tuple[FileScore, list[ray.ObjectRef]]:
    """Run :func:`score_file` over ``files``, a few more tasks in flight than the cluster has CPUs, and sum what
    they return as they finish; returns the sum (its ``missing_examples`` the first ones of the run) and
    references to the files' :class:`FileMatches`, in file order, each of consecutive files (:class:`_Merged`)."""
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    total = FileScore(np.zeros((num_classes, num_classes + 1), np.int64), 0, 0, 0)
    matches: _Merged[ray.ObjectRef] = _Merged(MERGE_GROUP, lambda group: merge_matches.remote(*group))
    pending: list[ray.ObjectRef] = []
    bar = tqdm(total=len(files), unit="file", desc="evaluating", disable=not progress, dynamic_ncols=True)

    def add_one_finished() -> None:
        nonlocal pending
        done, pending = ray.wait(pending, num_returns=1)
        part: FileScore = ray.get(done[0])
        total.matrix += part.matrix
        total.rows += part.rows
        total.images += part.images
        total.missing += part.missing
        total.missing_examples = sorted(total.missing_examples + part.missing_examples)[:EXAMPLES]
        bar.update(1)
        bar.set_postfix(images=total.images)

    try:
        for index, file in enumerate(files):
            if len(pending) >= window:
                add_one_finished()
            score, found = score_file.remote(index, str(file), scoring, holder, *dropped)
            pending.append(score)
            matches.add(found)
        while pending:
            add_one_finished()
    finally:
        bar.close()
    return total, matches.held()


class _Merged(Generic[T]):
    """The items of a sequence (references to files' matches), joined ``group`` at a time as they come by
    ``merge`` (a group of consecutive items, in order, as one), as the digits of a counter in base ``group``
    carry: the ``i``-th level holds items of ``group ** i`` of the sequence's items each, at most ``group - 1``
    of them, so about ``(group - 1) * log_group(n)`` items are held at once. Written here: Ray has no
    reduction of object references that keeps their order."""

    def __init__(self, group: int, merge: Callable[[list[T]], T]):
        self._group = group
        self._merge = merge
        self._levels: list[list[T]] = []

    def add(self, item: T) -> None:
        """Append ``item`` to the sequence, merging each level that it fills into the next."""
        for index, level in enumerate(self._levels):
            level.append(item)
            if len(level) < self._group:
                return
            self._levels[index] = []
            item = self._merge(level)
        self._levels.append([item])

    def held(self) -> list[T]:
        """The items held, which together are the sequence, in its order (a higher level's come first)."""
        return [item for level in reversed(self._levels) for item in level]


@contextlib.contextmanager
def _task_errors() -> Iterator[None]:
    """Raise a :class:`UserError` raised in a Ray task as itself (one line), not wrapped in Ray's traceback."""
    try:
        yield
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, UserError):
            raise error.cause from None
        raise
