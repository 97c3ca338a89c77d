"""The labeling job's model stage: the actor that loads SAN once and labels batches.

Rows flow as ``image_path``, ``error`` (empty string when fine) and the stage's payload; a row that
failed in an earlier stage passes through untouched, and an image the model fails on (an exception, or
a worker process that dies on it every time) becomes an error row, so a bad input never stops the run. The light
CPU stages are in :mod:`pipeline.label.decode`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

import san
from san.errors import OptionError
from san.predictor import Predictor
from san.transforms import ResizeShortestEdge
from san.tta import TestTimeAugmentation

from ..segments import encode_label_map_png, label_map_segments
from ..vocabulary import Vocabulary
from .attempts import GAVE_UP, MAX_ATTEMPTS, Attempts

RANDOM_PREFIX = "random:"
SMOKE_MODEL = RANDOM_PREFIX + "san_tiny"


@dataclass
class ModelSpec:
    """What each predictor actor loads: a released preset, a checkpoint file (with an optional
    official config), or ``random:<preset>`` (random weights, seed 0: for smoke tests and benchmarks)."""

    model: str
    config: str | None = None

    def resolved(self) -> ModelSpec:
        """Check on the driver that the model can be had, before any worker starts: a released preset
        becomes its local weights file (raising :class:`san.WeightsUnavailableError` with instructions
        when it cannot be found or downloaded), a missing file raises :class:`san.errors.OptionError`."""
        if self.model.startswith(RANDOM_PREFIX):
            if self.model[len(RANDOM_PREFIX) :] not in san.PRESETS:
                raise OptionError(f"`model` {self.model!r}: no such preset; presets: {sorted(san.PRESETS)}")
            return self
        if self.model in san.checkpoint.OFFICIAL_RELEASES:
            return ModelSpec(str(san.resolve_official_weights(self.model)), self.config or self.model)
        if not Path(self.model).is_file():
            raise OptionError(
                f"`model` {self.model!r} is neither a released preset {sorted(san.checkpoint.OFFICIAL_RELEASES)}, "
                "random:<preset>, nor an existing checkpoint file"
            )
        return self

    def load(self) -> san.SAN:
        if self.model.startswith(RANDOM_PREFIX):
            torch.manual_seed(0)
            return san.build_san(self.model[len(RANDOM_PREFIX) :])
        return san.load_model(self.model, self.config)


class PredictStage:
    """Actor stage: loads the model and the vocabulary's text embeddings once, then labels batches
    and encodes each image's label map (PNG) and per-class segments (COCO RLE). ``attempts`` is the
    run's :class:`~pipeline.label.attempts.AttemptLedger` actor; ``other`` (distractor names), ``tta`` and the
    vocabulary's own minimum scores go to the :class:`~san.predictor.Predictor`."""

    def __init__(
        self,
        model: ModelSpec,
        vocabulary: dict[str, Any],
        device: str,
        dtype: str,
        min_score: float,
        threads: int,
        templates: str | None,
        resize: ResizeShortestEdge,
        attempts: ray.actor.ActorHandle,
        other: list[str],
        tta: TestTimeAugmentation | None,
    ):
        self.attempts = Attempts(attempts)
        if device == "cpu":
            torch.set_num_threads(threads)
        self.vocabulary = Vocabulary.from_json(vocabulary)
        net = model.load()
        if templates is not None:
            net.text_classifier.set_template_set(templates)
        self.predictor = Predictor(
            net,
            self.vocabulary.prompts,
            self.vocabulary.prompt_to_class,
            device=device,
            dtype=dtype,
            min_score=min_score,
            resize=resize,
            other=other,
            tta=tta,
            class_min_scores=self.vocabulary.min_scores,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Label the batch's rows without an error; an image the model fails on becomes an error row.

        The batch goes through the model at once. When that raises, or when a worker died on one of its
        images before (see :mod:`pipeline.label.attempts`), each image goes alone, so that one bad image
        costs only itself; an image that killed :data:`MAX_ATTEMPTS` workers is not run again.
        """
        count = len(batch["image_path"])
        errors = [str(error) for error in batch["error"]]
        pngs, segments = [b""] * count, ["[]"] * count
        todo = [i for i in range(count) if not errors[i]]
        paths = [str(batch["image_path"][i]) for i in todo]
        # Deaths before this call; the batch attempt below ends (recorded) or kills this process, so they hold.
        died = dict(zip(paths, self.attempts.unfinished(paths), strict=True)) if todo else {}
        if todo and not any(died.values()):
            with self.attempts.attempt(paths):
                try:
                    for i, (png, segs) in zip(todo, self._label(batch, todo), strict=True):
                        pngs[i], segments[i] = png, segs
                    todo = []
                except Exception:  # any failure of the model: retried image by image below
                    pass
        for i in todo:
            path = str(batch["image_path"][i])
            if died[path] >= MAX_ATTEMPTS:
                errors[i] = GAVE_UP
                continue
            with self.attempts.attempt([path]):
                try:
                    [(pngs[i], segments[i])] = self._label(batch, [i])
                except Exception as failure:  # the model's own error, kept as this image's reason
                    errors[i] = f"model failed: {type(failure).__name__}: {failure}"
        return {
            "image_path": batch["image_path"],
            "width": batch["width"],
            "height": batch["height"],
            "label_map_png": np.asarray(pngs, dtype=object),
            "segments_json": np.asarray(segments, dtype=object),
            "error": np.asarray(errors, dtype=object),
        }

    def _label(self, batch: dict[str, np.ndarray], rows: list[int]) -> list[tuple[bytes, str]]:
        """The label map PNG and segments JSON of each of ``rows`` (one model call for all)."""
        predictions = self.predictor.predict(
            [batch["image"][i] for i in rows],
            original_sizes=[(int(batch["height"][i]), int(batch["width"][i])) for i in rows],
        )
        encoded = []
        for prediction in predictions:
            png = encode_label_map_png(prediction.label_map, ignore_value=prediction.unlabeled)
            segs = label_map_segments(
                prediction.label_map,
                prediction.scores,
                self.vocabulary.names,
                self.vocabulary.category_ids,
                ignore_value=prediction.unlabeled,
            )
            encoded.append((png, json.dumps(segs)))
        return encoded
