"""Review a labeling run in FiftyOne: one persistent dataset per run, per-image mIoU and confidence,
saved views for triage, FiftyOne's own segmentation evaluation cross-checked against ours, and a
FiftyOne ground-truth reader for ``--gt fiftyone:DATASET[:FIELD]``.

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
import signal
import sys
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou
import numpy as np
import pyarrow.parquet as pq
from fiftyone import ViewField as F

from san.metrics import ConfusionMatrix, compute_metrics

from .evaluate import EvaluationError, align_classes
from .ground_truth import (
    IGNORE,
    GroundTruth,
    GroundTruthError,
    match_predictions,
    open_ground_truth,
    read_class_names,
    register_ground_truth,
)
from .outputs import RunOutput
from .segments import decode_label_map_png, unlabeled_value
from .vocabulary import Vocabulary, VocabularyError

__all__ = [
    "MISSING_LABEL",
    "FiftyOneGroundTruth",
    "compare_with_fiftyone",
    "compute_sample_metrics",
    "default_dataset_name",
    "label_map_to_mask",
    "launch",
    "load_run",
    "mask_to_label_map",
    "open_fiftyone_ground_truth",
    "save_review_views",
    "serve_until_interrupted",
]

PREDICTIONS = "predictions"
GROUND_TRUTH = "ground_truth"
MISSING_LABEL = "(unlabeled)"
"""Name of mask value 0 in the mask targets handed to ``evaluate_segmentations``."""
_BATCH = 64
MAX_CLASS_VIEWS = 100


class ReviewError(ValueError):
    """The run, the ground truth or the dataset cannot be reviewed; the message says why."""


# --- mask values -------------------------------------------------------------------------------------


def mask_dtype(max_value: int) -> type[np.unsignedinteger]:
    """uint8 when ``max_value`` fits, else uint16 (the App and ``Segmentation`` handle both)."""
    if max_value <= np.iinfo(np.uint8).max:
        return np.uint8
    if max_value <= np.iinfo(np.uint16).max:
        return np.uint16
    raise ReviewError(f"mask value {max_value} does not fit 16 bits")


def label_map_to_mask(label_map: np.ndarray, dtype: type[np.unsignedinteger] | None = None) -> np.ndarray:
    """A run's label map (0-based class index, unlabeled 255 / 65535) -> mask of category ids (0 = unlabeled)."""
    unlabeled = label_map == unlabeled_value(label_map)
    values = label_map.astype(np.int64) + 1
    values[unlabeled] = 0
    return values.astype(dtype or mask_dtype(int(values.max(initial=0))))


def mask_to_label_map(mask: np.ndarray, num_classes: int, what: str = "mask") -> np.ndarray:
    """Inverse of :func:`label_map_to_mask`: ``int64 [H, W]`` class indices, ``-1`` = unlabeled.

    Raises:
        ReviewError: not a 2-D integer mask, or a value that is no vocabulary class (``1..num_classes``).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ReviewError(f"{what}: expected a 2-D integer mask, got {mask.dtype} {list(mask.shape)}")
    label_map = mask.astype(np.int64) - 1
    bad = (label_map < -1) | (label_map >= num_classes)
    if bad.any():
        shown = ", ".join(str(v) for v in np.unique(mask[bad])[:10])
        raise ReviewError(f"{what}: values {shown} are no vocabulary class (valid: 0 = unlabeled, 1..{num_classes})")
    return label_map


# --- loading a run ------------------------------------------------------------------------------------


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
    metrics are computed (:func:`compute_sample_metrics`) and the saved views made
    (:func:`save_review_views`). Layout and representation: module docstring.

    Args:
        output_dir: the labeling run's ``--output`` directory.
        gt_spec, gt_classes, ignore_index: ground truth as for :func:`pipeline.evaluate.evaluate_run`
            (a PNG folder, a COCO JSON, or ``SCHEME:LOCATION``); None loads predictions only.
        name: dataset name; default :func:`default_dataset_name`.
        max_class_views: see :func:`save_review_views`.

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


# --- metrics ------------------------------------------------------------------------------------------


def _value_names(dataset: fo.Dataset) -> dict[int, str]:
    """Mask value -> class name over both fields (values 1.. without a name get ``value <v>``)."""
    targets = dataset.mask_targets or {}
    names: dict[int, str] = {}
    for field in (PREDICTIONS, GROUND_TRUTH):
        for value, name in (targets.get(field) or {}).items():
            names.setdefault(int(value), str(name))
    names.pop(0, None)
    top = max(names, default=0)
    return {v: names.get(v, f"value {v}") for v in range(1, top + 1)}


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


def compute_sample_metrics(dataset: fo.Dataset) -> dict[str, float]:
    """(Re)compute ``classes_present``, ``iou`` and ``miou`` of every sample from its current masks.

    Run it again after editing masks. Returns the dataset-level detectron2 metrics
    (:func:`san.metrics.compute_metrics`, percent) over every sample that has both masks, plus
    ``num_images`` and ``pixels``; ``{}`` when no sample has ground truth.
    """
    value_names = _value_names(dataset)
    k = max(value_names, default=0)
    names = [value_names[v] for v in range(1, k + 1)]
    total = ConfusionMatrix(max(k, 1), ignore_index=-1)
    images = 0
    for field in ("iou", "miou"):
        if not dataset.has_sample_field(field) and dataset.has_sample_field(GROUND_TRUTH):
            dataset.add_sample_field(field, fo.DictField if field == "iou" else fo.FloatField)
    for sample in dataset.iter_samples(autosave=True, progress=False):
        pred, truth = _masks(sample)
        if pred is not None:
            present = [int(v) for v in np.unique(pred) if v != 0]
            sample["classes_present"] = [value_names.get(v, f"value {v}") for v in present]
        else:
            sample["classes_present"] = []
        if pred is None or truth is None or k == 0:
            if sample.has_field("miou"):
                sample["miou"], sample["iou"] = None, None
            continue
        matrix = _image_matrix(pred, truth, k, f"sample {sample.id} ({sample.filepath})")
        result = compute_metrics(matrix, names)
        ious = {n: result[f"IoU-{n}"] for n in names if not np.isnan(result[f"IoU-{n}"])}
        sample["iou"] = ious
        sample["miou"] = None if np.isnan(result["mIoU"]) else result["mIoU"]
        total.merge(matrix)
        images += 1
    if not images:
        return {}
    return {**compute_metrics(total, names), "num_images": images, "pixels": int(total.matrix.sum())}


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
    value_names = _value_names(dataset)
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


# --- views --------------------------------------------------------------------------------------------


def save_review_views(dataset: fo.Dataset, max_class_views: int | None = MAX_CLASS_VIEWS) -> list[str]:
    """(Re)create the saved views (module docstring); returns their names.

    Args:
        max_class_views: at most this many ``class_<name>`` views, for the classes predicted in the most
            samples (ties: vocabulary order); None = one per predicted class. FiftyOne's ``save_view``
            reloads every saved view of the dataset each time, so N views cost O(N^2) (measured: 297
            views took 23 s); the ``classes_present`` sidebar filter covers the remaining classes.
    """
    for name in dataset.list_saved_views():
        if name in ("worst_miou", "least_confident") or name.startswith("class_"):
            dataset.delete_saved_view(name)
    views: dict[str, Any] = {}
    if dataset.has_sample_field("miou") and len(dataset.exists("miou")):
        views["worst_miou"] = dataset.exists("miou").sort_by("miou")
    views["least_confident"] = dataset.exists("mean_score").sort_by("mean_score")
    counts: dict[str, int] = {}
    for present in dataset.values("classes_present"):
        for class_name in present or []:
            counts[class_name] = counts.get(class_name, 0) + 1
    vocabulary = (dataset.info or {}).get("vocabulary", {}).get("names") or list(
        (dataset.mask_targets or {}).get(PREDICTIONS, {}).values()
    )
    ranked = sorted((i for i, c in enumerate(vocabulary) if counts.get(c)), key=lambda i: -counts[vocabulary[i]])
    chosen = set(ranked if max_class_views is None else ranked[: max(max_class_views, 0)])
    slugs = {fou.to_slug(n) for n in views}
    for index, class_name in enumerate(vocabulary):
        if index not in chosen:
            continue
        name = f"class_{class_name}"
        if fou.to_slug(name) in slugs:
            name = f"class_{class_name}_{index + 1}"
        slugs.add(fou.to_slug(name))
        views[name] = dataset.match(F("classes_present").contains(class_name))
    for name, view in views.items():
        dataset.save_view(name, view, overwrite=True)
    return list(views)


# --- App ----------------------------------------------------------------------------------------------


def launch(dataset: fo.Dataset, port: int = 5151, address: str = "127.0.0.1") -> fo.Session:
    """Start the App on ``http://address:port/`` (remote mode: no browser is opened)."""
    return fo.launch_app(dataset, port=port, address=address, remote=True)


def serve_until_interrupted(
    dataset: fo.Dataset,
    port: int = 5151,
    address: str = "127.0.0.1",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Launch the App, print its address, block until Ctrl-C (or SIGTERM), then close the session, which
    stops the App server process (the database process exits with this process). ``on_ready(url)`` is
    called once the App serves and its address is printed. A Ctrl-C during start-up is handled the same."""
    previous = signal.getsignal(signal.SIGTERM)

    def _interrupt(signum, frame):  # SIGTERM -> the same clean shutdown as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        session = launch(dataset, port=port, address=address)
        url = f"http://{address}:{port}/"
        print(f"App: {url} (Ctrl-C to stop)", flush=True)
        if on_ready is not None:
            on_ready(url)
        session.wait(-1)
    except KeyboardInterrupt:
        print("stopping the App", file=sys.stderr, flush=True)
    finally:
        fo.close_app()  # no-op when launch_app did not get as far as making the session
        signal.signal(signal.SIGTERM, previous)


# --- ground-truth reader ------------------------------------------------------------------------------


class FiftyOneGroundTruth(GroundTruth):
    """A ``Segmentation`` field of a FiftyOne dataset as ground truth (``--gt fiftyone:DATASET[:FIELD]``).

    Classes: the field's mask targets (``dataset.mask_targets[FIELD]``, else ``default_mask_targets``),
    integer values only, in increasing value order; with ``--gt-classes`` the file instead (line ``v``
    names value ``v``, gap lines are ignored values). Ignored pixels: value 0 and ``ignore_index`` (and
    65535) unless a class names them. Any other value without a class is an error. Images: the samples
    whose field has a mask; their path for matching is the ``image_path`` field when there is one
    (datasets made by :func:`load_run`), else ``filepath``.
    """

    def __init__(
        self,
        dataset_name: str,
        field: str = GROUND_TRUTH,
        names_by_value: dict[int, str] | None = None,
        ignore_index: int = 255,
    ):
        if not fo.dataset_exists(dataset_name):
            raise GroundTruthError(f"no FiftyOne dataset named {dataset_name!r}")
        self.dataset = fo.load_dataset(dataset_name)
        self.field = field
        if not self.dataset.has_sample_field(field):
            raise GroundTruthError(f"FiftyOne dataset {dataset_name!r} has no field {field!r}")
        if names_by_value is None:
            targets = (self.dataset.mask_targets or {}).get(field) or self.dataset.default_mask_targets or {}
            if not targets:
                raise GroundTruthError(
                    f"FiftyOne dataset {dataset_name!r} has no mask targets for {field!r}; pass --gt-classes"
                )
            if any(not isinstance(v, int) for v in targets):
                raise GroundTruthError(f"{dataset_name!r}.{field}: RGB mask targets are not supported")
            names_by_value = {int(v): " ".join(str(n).split()) for v, n in targets.items()}
        values = sorted(names_by_value)
        if values and (values[0] < 0 or values[-1] > 65535):
            raise GroundTruthError(f"{dataset_name!r}.{field}: mask values must lie in 0..65535")
        self.class_names = tuple(names_by_value[v] for v in values)
        if len({n.casefold() for n in self.class_names}) != len(self.class_names):
            raise GroundTruthError(f"{dataset_name!r}.{field}: two mask values have the same class name")
        self._lut = np.full(65536, -2, dtype=np.int32)
        ignored = [v for v in (0, int(ignore_index), 65535) if 0 <= v <= 65535 and v not in names_by_value]
        self._lut[ignored] = IGNORE
        self._lut[values] = np.arange(len(values), dtype=np.int32)
        self.raw_ignore = sorted(set(ignored))
        view = self.dataset.exists(field)
        path_field = "image_path" if self.dataset.has_sample_field("image_path") else "filepath"
        ids, paths, filepaths = view.values("id"), view.values(path_field), view.values("filepath")
        self._paths = {i: p if p is not None else f for i, p, f in zip(ids, paths, filepaths, strict=True)}
        self.description = (
            f"FiftyOne dataset {dataset_name!r} field {field!r} ({len(self._paths)} images, "
            f"{len(self.class_names)} classes)"
        )

    def keys(self) -> list[Hashable]:
        return list(self._paths)

    def path_of(self, key: Hashable) -> str:
        return str(self._paths[key])

    def read(self, key: Hashable) -> np.ndarray:
        label = self.dataset[key][self.field]
        mask = label.get_mask() if label is not None and label.has_mask else None
        if mask is None or mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            shown = None if mask is None else f"{mask.dtype} {list(mask.shape)}"
            raise GroundTruthError(f"{self.description}: sample {key} has no 2-D integer mask ({shown})")
        if mask.size and (mask.min() < 0 or mask.max() > 65535):
            raise GroundTruthError(f"{self.description}: sample {key} has mask values outside 0..65535")
        labels = self._lut[mask.astype(np.int64)]
        bad = labels == -2
        if bad.any():
            shown = ", ".join(str(v) for v in np.unique(mask[bad])[:10])
            raise GroundTruthError(
                f"{self.description}: sample {key} ({self.path_of(key)}) has values that name no class: {shown}"
            )
        return labels


def open_fiftyone_ground_truth(
    location: str, gt_classes: str | None, vocabulary_names: Sequence[str], ignore_index: int
) -> FiftyOneGroundTruth:
    """``--gt fiftyone:DATASET[:FIELD]`` (FIELD defaults to ``ground_truth``; a dataset name that itself
    contains ``:`` works when FIELD is given)."""
    name, sep, field = location.rpartition(":")
    if not sep or not name:
        name, field = location, GROUND_TRUTH
    names_by_value = None
    if gt_classes:
        names, _ = read_class_names(gt_classes)
        names_by_value = {v: n for v, n in enumerate(names) if n is not None}
    return FiftyOneGroundTruth(name, field or GROUND_TRUTH, names_by_value, ignore_index)


register_ground_truth("fiftyone", open_fiftyone_ground_truth)  # also registered lazily by pipeline.ground_truth
