"""The labeling job's model stage: the actor that loads SAN once and labels batches.

Input rows are model batches (lists of ``image_path``, ``error``, sizes, and the resized pixels); output
rows are images, with arrays (the label map, per-class scores, and with ``keep_regions`` the image's regions),
not encoded bytes. A row that failed in an earlier stage passes through untouched, and an image the model fails
on (an exception, or a worker process that dies on it every time) becomes an error row, so a bad input never
stops the run. The light CPU stages are in :mod:`pipeline.label.decode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

import san
from san.errors import OptionError
from san.image_labels import ImageLabels, label_encoding
from san.settings import PredictionSettings
from san.transforms import ResizeShortestEdge

from ..region_shards import REGION_DTYPES
from ..vocabulary import Vocabulary
from .attempts import GAVE_UP, MAX_ATTEMPTS, Attempts
from .batching import padded_size

RANDOM_PREFIX = "random:"
SMOKE_MODEL = RANDOM_PREFIX + "san_tiny"
#: ``--model null``: :class:`NullPredictor`, no model at all.
NULL_MODEL = "null"
#: Side of the null model's squares of one class, in pixels.
NULL_CELL = 64
#: The regions columns of a model stage's output rows (``keep_regions``): the arrays, the padded model input and
#: the resized image inside it (``pipeline.region_shards``).
REGION_COLUMNS = ("mask_preds", "mask_embs", "padded_height", "padded_width", "input_height", "input_width")


@dataclass
class ModelSpec:
    """What each predictor actor loads: a released preset, a checkpoint file (with an optional
    official config), ``random:<preset>`` (random weights, seed 0: for smoke tests and benchmarks), or
    ``null`` (no model: :class:`NullPredictor`, to measure the pipeline)."""

    model: str
    config: str | None = None

    def resolved(self) -> ModelSpec:
        """Check on the driver that the model can be had, before any worker starts: a released preset
        becomes its local weights file (raising :class:`san.WeightsUnavailableError` with instructions
        when it cannot be found or downloaded), a missing file raises :class:`san.errors.OptionError`, and
        a checkpoint or config that cannot be loaded the one-line error of :func:`san.checkpoint.check_model`
        (its keys and shapes are checked, the weights are not read)."""
        if self.model == NULL_MODEL:
            return self
        if self.model.startswith(RANDOM_PREFIX):
            if self.model[len(RANDOM_PREFIX) :] not in san.PRESETS:
                raise OptionError(f"`model` {self.model!r}: no such preset; presets: {sorted(san.PRESETS)}")
            return self
        spec = self
        if self.model in san.checkpoint.OFFICIAL_RELEASES:
            spec = ModelSpec(str(san.resolve_official_weights(self.model)), self.config or self.model)
        elif not Path(self.model).is_file():
            raise OptionError(
                f"`model` {self.model!r} is neither a released preset {sorted(san.checkpoint.OFFICIAL_RELEASES)}, "
                "random:<preset>, nor an existing checkpoint file"
            )
        san.checkpoint.check_model(spec.model, spec.config)
        return spec

    def load(self) -> san.SAN:
        import torch  # here, not at the top: a null-model actor never imports torch (seconds of its start)

        if self.model.startswith(RANDOM_PREFIX):
            torch.manual_seed(0)
            return san.build_san(self.model[len(RANDOM_PREFIX) :])
        return san.load_model(self.model, self.config)


class NullPredictor:
    """``--model null``: a fixed, cheap label map instead of a model (squares of :data:`NULL_CELL` pixels
    cycling through the classes, score 1), so that a run measures the pipeline alone: decoding, transfers,
    encoding and writing."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.unlabeled, self.label_dtype = label_encoding(num_classes)
        self._maps: dict[tuple[int, int], ImageLabels] = {}  # one per size: the map is fixed

    def predict(self, images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]]) -> list[ImageLabels]:
        """One :class:`~san.image_labels.ImageLabels` at each ``original_sizes`` ``(H, W)`` (shared, read-only)."""
        return [self._prediction(int(height), int(width)) for height, width in original_sizes]

    def _prediction(self, height: int, width: int) -> ImageLabels:
        if (height, width) not in self._maps:
            cells = np.add.outer(np.arange(height) // NULL_CELL, np.arange(width) // NULL_CELL)
            label_map = (cells % self.num_classes).astype(self.label_dtype)
            scores = np.ones(label_map.shape, np.float32)
            # Each class's mean score, once per size as a model's device would take it: 1 where the class has pixels.
            class_scores = (np.bincount(label_map.ravel(), minlength=self.num_classes) > 0).astype(np.float32)
            for array in (label_map, scores, class_scores):
                array.flags.writeable = False
            self._maps[(height, width)] = ImageLabels(label_map, scores, self.unlabeled, class_scores)
        return self._maps[(height, width)]


@dataclass(frozen=True)
class WorkerSetup:
    """Where a model actor runs: its ``device`` (``cpu``/``cuda``), its CPU ``threads``, and the run's
    :class:`~pipeline.label.attempts.AttemptLedger` actor (``attempts``)."""

    device: str
    threads: int
    attempts: ray.actor.ActorHandle


class ModelStage:
    """Actor stage: loads the model and the vocabulary's text embeddings once, then labels model batches
    (rows of :class:`~pipeline.label.decode.DecodeStage`), one output row per image: its ``label_map``
    ``[H, W]`` at its original size and ``class_scores`` ``[num_classes]`` (each class's mean best score,
    :attr:`~san.image_labels.ImageLabels.class_scores`); the encoding is left to CPU tasks
    (:mod:`pipeline.label.encode`). ``settings`` go whole to the :class:`~san.predictor.Predictor`.

    With ``keep_regions`` (``fp32`` or ``fp16``, :data:`~pipeline.region_shards.REGION_DTYPES`), each row also has
    the image's regions from the same model call (:data:`REGION_COLUMNS`: ``mask_preds`` ``[Q, h, w]`` and
    ``mask_embs`` ``[Q, D]`` in that dtype, so that only the bytes kept leave the actor, and the padded and input
    sizes)."""

    def __init__(
        self,
        model: ModelSpec,
        vocabulary: dict[str, Any],
        settings: PredictionSettings,
        worker: WorkerSetup,
        keep_regions: str | None = None,
    ):
        self.attempts = Attempts(worker.attempts)
        self.vocabulary = Vocabulary.from_json(vocabulary)
        self.settings = settings
        self.keep_regions = keep_regions
        self.label_dtype = label_encoding(len(self.vocabulary.names))[1]
        self.predictor = self._predictor(model, settings, worker)
        worker.attempts.model_ready.remote()  # the job's guard waits for the first (pipeline.label.actor_start)

    def _predictor(self, model: ModelSpec, settings: PredictionSettings, worker: WorkerSetup) -> Any:
        """The :class:`NullPredictor` or the loaded model's :class:`~san.predictor.Predictor`."""
        if model.model == NULL_MODEL:
            return NullPredictor(len(self.vocabulary.names))
        import torch  # here, not at the top: a null-model actor never imports torch (seconds of its start)

        from san.predictor import Predictor

        if worker.device == "cpu":
            torch.set_num_threads(worker.threads)
        return Predictor(
            model.load(),
            self.vocabulary.prompts,
            self.vocabulary.prompt_to_class,
            device=worker.device,
            settings=settings,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Each model batch's images, one output row per image (``image_path``, ``error``, ``height``,
        ``width``, ``label_map``, ``class_scores``, ``batch_images``: the images of its model call, the
        input's ``fingerprint``, and with ``keep_regions`` the :data:`REGION_COLUMNS`)."""
        rows = [self._label_batch(self._images(batch, r)) for r in range(len(batch["image_path"]))]
        return {key: [value for row in rows for value in row[key]] for key in rows[0]}

    def _images(self, batch: dict[str, np.ndarray], row: int) -> dict[str, list[Any]]:
        """Model batch ``row`` as per-image lists: ``image`` is the resized image ``[h, w, 3]`` (None for a row
        with an error)."""
        paths, errors = [str(p) for p in batch["image_path"][row]], [str(e) for e in batch["error"][row]]
        heights, widths = [int(h) for h in batch["height"][row]], [int(w) for w in batch["width"][row]]
        pixels, images, k = batch["pixels"][row], [], 0
        for error, height, width in zip(errors, heights, widths, strict=True):
            if error:
                images.append(None)
                continue
            h, w = self.settings.resize.output_size(height, width)
            images.append(pixels[k, :h, :w])
            k += 1
        fingerprints = [str(f) for f in batch["fingerprint"][row]]
        return {
            "image_path": paths,
            "error": errors,
            "height": heights,
            "width": widths,
            "image": images,
            "fingerprint": fingerprints,
        }

    def _label_batch(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Label the batch's images without an error; an image the model fails on becomes an error row.

        The batch goes through the model at once. When that raises, or when a worker died on one of its
        images before (see :mod:`pipeline.label.attempts`), each image goes alone, so that one bad image
        costs only itself; an image that killed :data:`MAX_ATTEMPTS` workers is not run again.
        """
        count = len(batch["image_path"])
        errors = list(batch["error"])
        results: list[ImageResult | None] = [None] * count
        todo = [i for i in range(count) if not errors[i]]
        fill = _model_call_sizes(batch, todo, self.settings.resize, self.settings.batch_size)
        paths = [batch["image_path"][i] for i in todo]
        died: dict[str, int] = {}
        if todo:
            # Deaths before this call; the batch attempt below ends (recorded) or kills this process, so they hold.
            with self.attempts.batch(paths) as unfinished:
                died = dict(zip(paths, unfinished, strict=True))
                if not any(unfinished):
                    try:
                        for i, result in zip(todo, self._label(batch, todo), strict=True):
                            results[i] = result
                        todo = []
                    except Exception:  # any failure of the model: retried image by image below
                        pass
        for i in todo:
            path = batch["image_path"][i]
            fill[i] = 1
            if died[path] >= MAX_ATTEMPTS:
                errors[i] = GAVE_UP
                continue
            with self.attempts.attempt([path]):
                try:
                    [results[i]] = self._label(batch, [i])
                except Exception as failure:  # the model's own error, kept as this image's reason
                    errors[i] = f"model failed: {type(failure).__name__}: {failure}"
        empty = self._empty_result()
        rows = {
            "image_path": batch["image_path"],
            "error": errors,
            "height": batch["height"],
            "width": batch["width"],
            "label_map": [(result or empty).label_map for result in results],
            "class_scores": [(result or empty).class_scores for result in results],
            "batch_images": [fill.get(i, 0) for i in range(count)],
            "fingerprint": batch["fingerprint"],
        }
        if self.keep_regions:
            for k, name in enumerate(REGION_COLUMNS):
                rows[name] = [(result or empty).regions[k] for result in results]  # type: ignore[index]
        return rows

    def _empty_result(self) -> ImageResult:
        """What an error row carries in the array columns (read by no one)."""
        regions = None
        if self.keep_regions:
            dtype = REGION_DTYPES[self.keep_regions]
            regions = (np.zeros((1, 1, 1), dtype), np.zeros((1, 1), dtype), 0, 0, 0, 0)
        return ImageResult(
            np.zeros((1, 1), self.label_dtype), np.zeros(len(self.vocabulary.names), np.float32), regions
        )

    def _label(self, batch: dict[str, list[Any]], rows: list[int]) -> list[ImageResult]:
        """The result of each of ``rows`` (one model call for all)."""
        images = [batch["image"][i] for i in rows]
        sizes = [(batch["height"][i], batch["width"][i]) for i in rows]
        if not self.keep_regions:
            return [image_result(p) for p in self.predictor.predict(images, original_sizes=sizes)]
        dtype = REGION_DTYPES[self.keep_regions]
        results = []
        for labels, regions in self.predictor.predict_regions(images, original_sizes=sizes):
            arrays = [
                a.float().cpu().numpy().astype(dtype, copy=False) for a in (regions.mask_preds, regions.mask_embs)
            ]
            results.append(image_result(labels, (*arrays, *regions.padded_size, *regions.image_size)))
        return results


@dataclass
class ImageResult:
    """What the model stage returns for one image: its ``label_map`` ``[H, W]``, ``class_scores``
    ``[num_classes]``, and with ``keep_regions`` its ``regions``: the values of :data:`REGION_COLUMNS`."""

    label_map: np.ndarray
    class_scores: np.ndarray
    regions: tuple[Any, ...] | None = None


def image_result(labels: ImageLabels, regions: tuple[Any, ...] | None = None) -> ImageResult:
    """An image's :class:`ImageResult` from its :class:`~san.image_labels.ImageLabels`: the label map and each
    class's mean best score (taken on the model's device), without the full-size score map."""
    return ImageResult(labels.label_map, labels.class_scores, regions)


def _model_call_sizes(
    batch: dict[str, list[Any]], rows: list[int], resize: ResizeShortestEdge, batch_size: int
) -> dict[int, int]:
    """For each of ``rows``, how many images share its model call (the model groups a batch by padded size)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i in rows:
        groups.setdefault(padded_size(batch["height"][i], batch["width"][i], resize), []).append(i)
    sizes = {}
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            call = group[start : start + batch_size]
            sizes.update(dict.fromkeys(call, len(call)))
    return sizes
