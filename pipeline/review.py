"""Review a labeling run in FiftyOne: load it (and its ground truth) into one persistent dataset per run.

The review modules: this one loads a run (:func:`load_run`); :mod:`pipeline.review_masks` converts
label maps to masks and back; :mod:`pipeline.review_metrics` computes per-image mIoU and cross-checks it
with FiftyOne's own segmentation evaluation; :mod:`pipeline.review_views` saves the views for triage;
:mod:`pipeline.review_app` serves the App. The FiftyOne ground-truth reader for
``--gt fiftyone:DATASET[:FIELD]`` is :mod:`pipeline.ground_truth_fiftyone`.

Dataset layout (what :func:`load_run` writes)
---------------------------------------------
One sample per labeled image (``filepath`` = the run's ``image_path``; FiftyOne makes it absolute, so
the path exactly as the run gave it is kept in the ``image_path`` field, which export uses).

Mask values: a ``Segmentation`` mask holds **COCO category ids**, i.e. vocabulary class index + 1, and
**0 means "no class"**: an unlabeled prediction (255 / 65535 in the run's label maps) in ``predictions``,
an ignored pixel in ``ground_truth``. This follows FiftyOne's own convention that mask value 0 is the
background: the App does not draw 0, and ``evaluate_segmentations`` treats value 0 as its "missing"
class. (Keeping the 0-based class index would make the vocabulary's first class invisible in the App
and FiftyOne's "missing" class.) Masks are uint8 when every value fits (up to 255 classes), else uint16.

``dataset.mask_targets``:

- ``predictions``: ``{index + 1: vocabulary name}`` for every vocabulary class.
- ``ground_truth``: a ground-truth class that matches a vocabulary class by name (rule of
  :func:`pipeline.evaluate.align_classes`) gets that class's value and vocabulary name, so one value
  means one class in both fields; a ground-truth class that is not in the vocabulary keeps its own
  name under a value after the vocabulary's (``N + 1, N + 2, ...``). Such classes can never be
  predicted: their IoU is 0 wherever they occur, as in :func:`pipeline.evaluate.evaluate_run`.

Per-sample fields: ``image_path``, ``image_id``, ``width``, ``height``, ``run_segments`` (the run's
segments: ``category_id``, ``category_name``, ``rle``, ``area``, ``score``; export uses them to keep the
run's score of an unedited segment), ``mean_score`` (unweighted mean of the run's segment scores, None
without segments), ``classes_present`` (names of the classes in the ``predictions`` mask), and with
ground truth ``iou`` (dict: class name -> IoU in percent, for the classes present in the image's
ground truth) and ``miou`` (percent, detectron2 rule: mean over the classes present in the image's
ground truth; None when every pixel is ignored).

Saved views: ``worst_miou`` (samples with a ``miou``, ascending; only with ground truth),
``least_confident`` (ascending ``mean_score``), and ``class_<name>`` for each vocabulary class that
is predicted in at least one sample (a name whose slug clashes with another's gets ``_<category id>``),
at most ``max_class_views`` (default 100) of them, for the classes predicted in the most samples: FiftyOne's
``save_view`` is O(number of saved views), so one view per class of a large vocabulary would take minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import fiftyone as fo
import numpy as np
import pyarrow.parquet as pq

from .evaluate import EvaluationError, align_classes
from .ground_truth import open_ground_truth
from .ground_truth_base import GroundTruth, match_predictions
from .outputs import RunOutput
from .review_masks import GROUND_TRUTH, PREDICTIONS, ReviewError, label_map_to_mask, mask_dtype
from .review_metrics import compute_sample_metrics
from .review_views import MAX_CLASS_VIEWS, save_review_views
from .segments import decode_label_map_png
from .vocabulary import Vocabulary, VocabularyError

__all__ = ["default_dataset_name", "load_run"]

_BATCH = 64


def default_dataset_name(output_dir: str | os.PathLike[str]) -> str:
    """``san-<folder name>-<8 hex of the absolute path>``: stable for a run, distinct between runs."""
    path = Path(output_dir).resolve()
    return f"san-{path.name}-{hashlib.sha1(str(path).encode('utf-8')).hexdigest()[:8]}"


def read_run_vocabulary(output_dir: str | os.PathLike[str]) -> Vocabulary:
    manifest = Path(output_dir) / "manifest.json"
    if not manifest.is_file():
        raise ReviewError(f"{output_dir} is not a labeling run's output: it has no manifest.json")
    try:
        return Vocabulary.from_json(json.loads(manifest.read_text(encoding="utf-8"))["vocabulary"])
    except (OSError, ValueError, KeyError, TypeError, VocabularyError) as exc:
        raise ReviewError(f"{manifest}: cannot read the run's vocabulary: {exc!r}") from None


def _iter_run_rows(output: RunOutput) -> Iterator[dict[str, Any]]:
    """Prediction rows one small batch at a time, first row per path (as RunOutput.read_predictions)."""
    seen: set[str] = set()
    for shard in sorted(output.predictions_dir.glob("part-*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches(_BATCH):
            for row in batch.to_pylist():
                if row["image_path"] not in seen:
                    seen.add(row["image_path"])
                    yield row


def _gt_values(vocabulary: Vocabulary, gt: GroundTruth) -> tuple[np.ndarray, dict[int, str], dict[str, Any]]:
    """Ground-truth class index -> mask value, the ground-truth mask targets, and the alignment summary."""
    alignment = align_classes(vocabulary.names, gt.class_names)
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


def load_run(
    output_dir: str | os.PathLike[str],
    gt_spec: str | None = None,
    gt_classes: str | os.PathLike[str] | None = None,
    name: str | None = None,
    ignore_index: int = 255,
    max_class_views: int | None = MAX_CLASS_VIEWS,
) -> fo.Dataset:
    """Load a labeling run (and its ground truth) into a persistent FiftyOne dataset.

    An existing dataset of the same name is deleted first (re-running replaces it). Then per-sample
    metrics are computed (:func:`pipeline.review_metrics.compute_sample_metrics`) and the saved views made
    (:func:`pipeline.review_views.save_review_views`). Layout and representation: module docstring.

    Args:
        output_dir: the labeling run's ``--output`` directory.
        gt_spec, gt_classes, ignore_index: ground truth as for :func:`pipeline.evaluate.evaluate_run`
            (a PNG folder, a COCO JSON, or ``SCHEME:LOCATION``); None loads predictions only.
        name: dataset name; default :func:`default_dataset_name`.
        max_class_views: see :func:`pipeline.review_views.save_review_views`.

    Raises:
        FileNotFoundError, ReviewError, GroundTruthError, EvaluationError: unreadable inputs, no class or
            image matching the ground truth, a ground truth whose size differs from its prediction's.
    """
    output = RunOutput(output_dir)
    if not output.root.is_dir():
        raise FileNotFoundError(f"labeling output {str(output.root)!r} does not exist or is not a directory")
    vocabulary = read_run_vocabulary(output.root)
    n = len(vocabulary)
    paths = output.read_predictions(["image_path"]).column("image_path").to_pylist()
    if not paths:
        raise ReviewError(f"{output.root} has no predictions (no rows in predictions/part-*.parquet)")

    gt: GroundTruth | None = None
    gt_targets: dict[int, str] = {}
    matched: dict[str, Hashable] = {}
    info: dict[str, Any] = {}
    if gt_spec is not None:
        gt = open_ground_truth(
            gt_spec, None if gt_classes is None else os.fspath(gt_classes), vocabulary.names, ignore_index
        )
        gt_value, gt_targets, info["class_alignment"] = _gt_values(vocabulary, gt)
        matched = match_predictions(gt, paths).matched
        info["ground_truth"] = gt.description
        info["images_with_ground_truth"] = len(matched)
    dtype = mask_dtype(max([n, *gt_targets]))

    name = name or default_dataset_name(output.root)
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=True)
    try:
        dataset.info = {
            "labeling_run": str(output.root.resolve()),
            "vocabulary": vocabulary.to_json(),
            "mask_values": "category id = vocabulary index + 1; 0 = unlabeled prediction / ignored ground truth",
            **info,
        }
        targets = {PREDICTIONS: {i + 1: name_ for i, name_ in enumerate(vocabulary.names)}}
        if gt is not None:
            targets[GROUND_TRUTH] = gt_targets
        dataset.mask_targets = targets
        dataset.save()

        batch: list[fo.Sample] = []
        for row in _iter_run_rows(output):
            path = row["image_path"]
            try:
                label_map = decode_label_map_png(row["label_map_png"])
            except ValueError as exc:
                raise ReviewError(f"prediction of {path!r}: {exc}") from None
            segments = [
                {k: s[k] for k in ("category_id", "category_name", "rle", "area", "score")} for s in row["segments"]
            ]
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
            if gt is not None and path in matched:
                key = matched[path]
                truth = gt.read(key)
                if truth.shape != label_map.shape:
                    raise EvaluationError(
                        f"size mismatch for {path!r}: the prediction is {label_map.shape[1]}x{label_map.shape[0]} "
                        f"(WxH) but its ground truth {gt.path_of(key)!r} is {truth.shape[1]}x{truth.shape[0]}"
                    )
                mask = np.zeros(truth.shape, dtype=dtype)
                labeled = truth != gt.ignore_value
                mask[labeled] = gt_value[truth[labeled]]
                fields[GROUND_TRUTH] = fo.Segmentation(mask=mask)
            batch.append(fo.Sample(filepath=path, **fields))
            if len(batch) >= _BATCH:
                dataset.add_samples(batch, progress=False)
                batch = []
        if batch:
            dataset.add_samples(batch, progress=False)
        compute_sample_metrics(dataset)
        save_review_views(dataset, max_class_views)
    except BaseException:
        fo.delete_dataset(name)
        raise
    return dataset
