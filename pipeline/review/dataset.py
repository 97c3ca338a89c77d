"""Review a labeling run in FiftyOne: load it (and its ground truth) into one persistent dataset per run.

:func:`load_run` writes one sample per labeled image with ``predictions`` (and ``ground_truth``)
``Segmentation`` masks of category ids (0 = no class), per-image scores and mIoU, and saved views for
triage; it replaces only a dataset it made, and only with ``overwrite``. With ``select`` it loads only the images
that :mod:`pipeline.review.selection` chooses (a partial dataset). The dataset's layout: ``docs/review.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
import uuid
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
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
from ..run_images import iter_run_images, run_input
from ..segments import decode_label_map_png
from ..vocabulary import Vocabulary
from .app_config import configure_app
from .errors import ReviewError
from .mask_files import INFO_KEY as MASK_FOLDER_KEY
from .mask_files import MaskFolder, remove_mask_folder
from .mask_values import GROUND_TRUTH, PREDICTIONS, label_map_to_mask, mask_dtype
from .metrics import SampleMetrics
from .selection import INFO_KEY as SELECTION_KEY
from .selection import Select, Selection, select_images
from .views import MAX_CLASS_VIEWS, save_review_views

__all__ = [
    "check_dataset_name",
    "default_dataset_name",
    "is_review_dataset",
    "load_run",
    "rle_digest",
    "selection_info",
]

_BATCH = 64
_THREADS = min(4, os.cpu_count() or 1)  # PNG decode/encode and numpy release the GIL


def rle_digest(rle: str) -> str:
    """SHA-1 of a segment's compressed RLE counts: what ``run_segments`` keeps of the run's segments to tell an
    edited segment from an untouched one (compressed RLE is canonical; the RLE itself would take more
    room in the database than the mask: 32 KB per 640x480 image of 8 classes, BENCHMARKS.md)."""
    return hashlib.sha1(rle.encode("ascii")).hexdigest()


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

    def mask(self, path: str, label_map: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
        """The ``ground_truth`` mask ``[H, W]`` of a matched image.

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
        return mask


def _open_run_ground_truth(
    gt_spec: str,
    gt_classes: str | os.PathLike[str] | None,
    vocabulary: Vocabulary,
    ignore_index: int,
    paths: list[str],
    partial: bool = False,
) -> _RunGroundTruth:
    """Open the ground truth, align its classes and match its images, with :mod:`pipeline.evaluate`'s
    warnings on stderr (unmatched classes, images without ground truth or prediction; for a ``partial``
    dataset, whose ``paths`` are a selection, not the ground truth left over)."""
    classes = None if gt_classes is None else os.fspath(gt_classes)
    gt = open_ground_truth(gt_spec, classes, vocabulary.names, ignore_index)
    values, targets, alignment = _gt_values(vocabulary, gt)
    warn_class_alignment(alignment)
    matching = match_predictions(gt, paths)
    if partial:
        matching.ground_truth_without_prediction = []
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


def selection_info(dataset: fo.Dataset) -> dict[str, Any] | None:
    """What a partial dataset records of the selection that made it (:meth:`Selection.info`: ``select``,
    ``images``, ``run_images``); None for a dataset of the whole run."""
    return (dataset.info or {}).get(SELECTION_KEY)


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
            f"FiftyOne dataset {existing!r}; choose another name with `dataset` OTHER"
        )
    dataset = fo.load_dataset(name)
    if not is_review_dataset(dataset):
        raise ReviewError(
            f"a FiftyOne dataset named {name!r} already exists and was not made by jobs/review.py (its info names "
            "no labeling run); it is never deleted or replaced: choose another name with `dataset` OTHER"
        )
    if not overwrite:
        raise ReviewError(
            f"FiftyOne dataset {name!r} already exists (loaded from {dataset.info['labeling_run']}) and may hold "
            "review edits; add `overwrite` to replace it, or load into a new dataset with `dataset` NEW"
        )
    return True


@dataclass
class _SampleBuilder:
    """Makes the sample of a prediction row (fields: ``docs/review.md``), its masks in files or in the database."""

    dtype: type[np.unsignedinteger]
    truth: _RunGroundTruth | None
    metrics: SampleMetrics
    masks: MaskFolder | None  # None: masks in the database
    media: dict[str, str]  # image_path -> the file shown when it is not the image's own (_media_files)
    tags: dict[int, list[str]]  # image_id -> the sample's tags: the selections that chose it

    def _label(self, field: str, image_id: int, mask: np.ndarray) -> fo.Segmentation:
        if self.masks is None:
            return fo.Segmentation(mask=mask)
        return self.masks.segmentation(field, image_id, mask)

    def __call__(self, row: dict[str, Any]) -> fo.Sample:
        path, image_id = row["image_path"], int(row["image_id"])
        try:
            label_map = decode_label_map_png(row["label_map_png"])
        except ValueError as exc:
            raise ReviewError(f"prediction of {path!r}: {exc}") from None
        segments = [
            {**{k: s[k] for k in ("category_id", "category_name", "area", "score")}, "rle_sha1": rle_digest(s["rle"])}
            for s in row["segments"]
        ]
        scores = [float(s["score"]) for s in segments]
        sorted_segments = sorted(segments, key=lambda s: int(s["category_id"]))
        pred = label_map_to_mask(label_map, self.dtype)
        fields: dict[str, Any] = {
            "image_path": path,
            "image_id": image_id,
            "width": int(row["width"]),
            "height": int(row["height"]),
            "metadata": fo.ImageMetadata(width=int(row["width"]), height=int(row["height"])),
            PREDICTIONS: self._label(PREDICTIONS, image_id, pred),
            "run_segments": segments,
            "mean_score": float(np.mean(scores)) if scores else None,
            # The run's segments are the classes of its label map, one each: no pass over the pixels.
            "classes_present": [self.metrics.value_names[int(s["category_id"])] for s in sorted_segments],
        }
        if self.truth is not None and path in self.truth.matched:
            truth = self.truth.mask(path, label_map, self.dtype)
            fields[GROUND_TRUTH] = self._label(GROUND_TRUTH, image_id, truth)
            _, ious, miou = self.metrics.image(pred, truth, path)
            fields["iou"], fields["miou"] = ious, None if np.isnan(miou) else miou
        return fo.Sample(filepath=self.media.get(path, path), tags=self.tags.get(image_id, []), **fields)


def _media_files(output: RunOutput, ids: dict[str, int], folder: MaskFolder) -> dict[str, str]:
    """image_path -> the file a sample shows, for the images that are not their own listed file
    (:mod:`pipeline.run_images`): an image the run's input embeds is written into ``folder`` from its bytes;
    one the input no longer lists (or a run whose manifest names no input) gets a file name in ``folder``
    that is never written, with a warning, so a sample never shows a file the listing did not name (a tar
    member's or a Parquet row's path)."""
    files = {}
    listed = set()
    for run_image in iter_run_images(output.root, ids, strict=False):
        listed.add(run_image.image_path)
        if run_image.embedded:
            data = run_image.read()
            files[run_image.image_path] = folder.media_file(ids[run_image.image_path], data, run_image.suffix(data))
    missing = sorted(ids.keys() - listed)
    if missing:
        spec = run_input(output.root)[0]
        where = f"no longer in the run's input {spec!r}" if spec else "of a run whose manifest names no input"
        print(
            f"warning: {len(missing)} labeled image(s) are {where} (e.g. {missing[0]!r}); their samples show no image",
            file=sys.stderr,
        )
        files.update({path: folder.missing_file(ids[path]) for path in missing})
    return files


def _fill(
    dataset: fo.Dataset,
    output: RunOutput,
    vocabulary: Vocabulary,
    truth: _RunGroundTruth | None,
    max_class_views: int | None,
    folder: MaskFolder,
    mask_files: bool,
    selection: Selection | None,
) -> None:
    """Write the info, mask targets, samples (with their metrics), saved views and App config of a new,
    empty dataset; masks as files in ``folder`` (else in the database), and embedded images there too. With a
    ``selection``, only its images, each tagged with the selections that chose it."""
    if selection is None:
        listed = output.read_predictions(["image_path", "image_id"])
        ids = dict(zip(listed.column("image_path").to_pylist(), listed.column("image_id").to_pylist(), strict=True))
        rows, tags = output.iter_predictions(batch_rows=_BATCH), {}
    else:
        ids, rows, tags = selection.images, selection.iter_rows(), selection.tags
    media = _media_files(output, ids, folder)
    dataset.info = {
        "labeling_run": str(output.root.resolve()),
        "vocabulary": vocabulary.to_json(),
        "mask_values": "category id = vocabulary index + 1; 0 = unlabeled prediction / ignored ground truth",
        **({MASK_FOLDER_KEY: str(folder.root)} if mask_files or media else {}),
        **(truth.info if truth is not None else {}),
        **({SELECTION_KEY: selection.info()} if selection is not None else {}),
    }
    targets = {PREDICTIONS: {i + 1: name for i, name in enumerate(vocabulary.names)}}
    if truth is not None:
        targets[GROUND_TRUTH] = truth.targets
    dataset.mask_targets = targets
    dataset.save()
    dataset.add_sample_field("classes_present", fo.ListField, subfield=fo.StringField)
    if truth is not None:
        dataset.add_sample_field("iou", fo.DictField)
        dataset.add_sample_field("miou", fo.FloatField)
    dtype = mask_dtype(max([len(vocabulary), *targets.get(GROUND_TRUTH, {})]))
    build = _SampleBuilder(dtype, truth, SampleMetrics(targets), folder if mask_files else None, media, tags)
    with ThreadPoolExecutor(_THREADS) as pool:  # the next batch is built while this one is inserted
        pending = [pool.submit(build, row) for row in itertools.islice(rows, _BATCH)]
        while pending:
            following = [pool.submit(build, row) for row in itertools.islice(rows, _BATCH)]
            dataset.add_samples([future.result() for future in pending], progress=False)
            pending = following
    save_review_views(dataset, max_class_views)
    configure_app(dataset)


def _publish(dataset: fo.Dataset, name: str, overwrite: bool) -> None:
    """Give the completely built ``dataset`` its ``name`` and make it persistent; the old dataset of that
    name (checked again: :func:`check_dataset_name`) is deleted only now."""
    if check_dataset_name(name, overwrite):
        old_info = fo.load_dataset(name).info
        fo.delete_dataset(name)
        remove_mask_folder(old_info)
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
    mask_files: bool = True,
    select: list[Select] | None = None,
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
        overwrite: replace an existing dataset of that name made by :func:`load_run` (and delete its
            mask files).
        mask_files: write the masks as PNG files in the run's ``review-masks`` folder and store their
            ``mask_path`` (:mod:`pipeline.review.mask_files`); False stores them in the database. The
            images that the run's input embeds are written there either way, from their bytes.
        select: load only the union of these selections (:mod:`pipeline.review.selection`; ``lowest-miou``
            scores against ``gt_spec``); ``info['selection']`` records them (:func:`selection_info`) and each
            sample is tagged with the selections that chose it. None or empty: every image of the run.

    Raises:
        RunImagesError, InputError: the run's input is gone, or no longer lists one of its images.
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
    selection = None
    if select:
        classes = None if gt_classes is None else os.fspath(gt_classes)
        gt = None if gt_spec is None else {"gt_spec": gt_spec, "gt_classes": classes, "ignore_index": ignore_index}
        selection = select_images(output.root, select, gt)
        paths = list(selection.images)
    else:
        paths = output.read_predictions(["image_path"]).column("image_path").to_pylist()
    if not paths:
        raise ReviewError(f"{output.root} has no predictions (no rows in predictions/part-*.parquet)")
    truth = None
    if gt_spec is not None:
        truth = _open_run_ground_truth(gt_spec, gt_classes, vocabulary, ignore_index, paths, selection is not None)

    dataset = fo.Dataset(f"{name[:100]}-incomplete-{uuid.uuid4().hex[:12]}")
    folder = MaskFolder(output.root, name)
    try:
        _fill(dataset, output, vocabulary, truth, max_class_views, folder, mask_files, selection)
        _publish(dataset, name, overwrite)
    except BaseException:
        fo.delete_dataset(dataset.name)
        folder.remove()
        raise
    return dataset
