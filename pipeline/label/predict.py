"""The labeling job's model stage: the actor that loads SAN once and labels batches.

Rows flow as ``image_path``, ``error`` (empty string when fine) and the stage's payload; a row that
failed in an earlier stage passes through untouched, so a bad input never stops the run. The light
CPU stages are in :mod:`pipeline.label.decode`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import san
from san.errors import OptionError
from san.predictor import Predictor
from san.transforms import ResizeShortestEdge

from ..segments import encode_label_map_png, label_map_segments
from ..vocabulary import Vocabulary

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
    and encodes each image's label map (PNG) and per-class segments (COCO RLE)."""

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
    ):
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
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        good = [i for i, error in enumerate(batch["error"]) if not error]
        predictions = (
            self.predictor.predict(
                [batch["image"][i] for i in good],
                original_sizes=[(int(batch["height"][i]), int(batch["width"][i])) for i in good],
            )
            if good
            else []
        )
        pngs = [b""] * len(batch["image_path"])
        segments = ["[]"] * len(batch["image_path"])
        for i, prediction in zip(good, predictions, strict=True):
            pngs[i] = encode_label_map_png(prediction.label_map, ignore_value=prediction.unlabeled)
            segs = label_map_segments(
                prediction.label_map,
                prediction.scores,
                self.vocabulary.names,
                self.vocabulary.category_ids,
                ignore_value=prediction.unlabeled,
            )
            segments[i] = json.dumps(segs)
        return {
            "image_path": batch["image_path"],
            "width": batch["width"],
            "height": batch["height"],
            "label_map_png": np.asarray(pngs, dtype=object),
            "segments_json": np.asarray(segments, dtype=object),
            "error": batch["error"],
        }
