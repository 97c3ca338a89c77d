"""The labels of a labeling run or of a reviewed FiftyOne dataset, read the same way by training
(``pipeline.training_data``) and the exports (``pipeline.exports``).

A source is named by a string: a labeling run's output folder (it has ``manifest.json``: the labels as the
run wrote them) or ``fiftyone:DATASET`` (a dataset ``jobs/review.py`` made: its ``predictions`` masks as they
are after editing). FiftyOne is imported only for the latter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from san.errors import UserError

from .outputs import RunOutput
from .segments import decode_label_map_png, unlabeled_value
from .vocabulary import Vocabulary

__all__ = [
    "FIFTYONE_PREFIX",
    "LabelSource",
    "LabelSourceError",
    "LabeledImage",
    "is_label_source",
    "open_label_source",
]

FIFTYONE_PREFIX = "fiftyone:"


class LabelSourceError(UserError):
    """A labeling run or a reviewed dataset that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class LabeledImage:
    """One labeled image: its path as the run gave it, its COCO image id, its label map as a PNG in the
    labeling run's encoding (``pipeline.segments.encode_label_map_png``: class index, 255 / 65535 = unlabeled)
    and its segments as the run writes them (``category_id``, ``category_name``, ``rle``, ``area``, ``bbox``,
    ``score``; docs/labeling.md)."""

    image_path: str
    image_id: int
    label_png: bytes
    segments: list[dict[str, Any]]

    def label_map(self) -> np.ndarray:
        """``[H, W]`` int64: the 0-based class index of each pixel, ``-1`` where it is unlabeled."""
        stored = decode_label_map_png(self.label_png)
        label_map = stored.astype(np.int64)
        label_map[stored == unlabeled_value(stored)] = -1
        return label_map


@dataclass(frozen=True)
class LabelSource:
    """The labeled images of a run or a reviewed dataset, with their vocabulary (class index i is
    ``vocabulary.names[i]``, category id ``i + 1``)."""

    description: str  # "labeling run out/labels", "FiftyOne dataset NAME": for messages
    run: Path  # the labeling run's output folder (a reviewed dataset's run): where its images are read again
    vocabulary: Vocabulary
    count: int  # how many images :attr:`images` yields
    images: Callable[[], Iterator[LabeledImage]]  # a new pass over the images each call


def is_label_source(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a labeling run's folder or ``fiftyone:DATASET`` (not some other folder)."""
    text = os.fspath(spec)
    return text.startswith(FIFTYONE_PREFIX) or (Path(text) / "manifest.json").is_file()


def open_label_source(spec: str | os.PathLike[str]) -> LabelSource:
    """The source ``spec`` names (see the module docstring).

    Raises:
        LabelSourceError: ``spec`` is neither, or the run's vocabulary cannot be read.
        pipeline.review.masks.ReviewError: the FiftyOne dataset does not exist or was not made by ``jobs/review.py``.
    """
    text = os.fspath(spec)
    if text.startswith(FIFTYONE_PREFIX):
        from .review.source import dataset_label_source  # imports FiftyOne

        return dataset_label_source(text[len(FIFTYONE_PREFIX) :])
    if not (Path(text) / "manifest.json").is_file():
        raise LabelSourceError(
            f"{text!r} is neither a labeling run's output folder (it has no manifest.json) nor fiftyone:DATASET"
        )
    return run_label_source(text)


def run_label_source(folder: str | os.PathLike[str]) -> LabelSource:
    """The label maps of a labeling run's output folder, as the run wrote them."""
    output = RunOutput(folder)
    vocabulary = output.read_vocabulary(LabelSourceError)
    count = output.read_predictions(["image_path"]).num_rows
    if count == 0:
        raise LabelSourceError(f"{folder} has no predictions (no rows in predictions/part-*.parquet)")

    def images() -> Iterator[LabeledImage]:
        for row in output.iter_predictions(["image_path", "image_id", "label_map_png", "segments"]):
            yield LabeledImage(row["image_path"], int(row["image_id"]), row["label_map_png"], row["segments"])

    return LabelSource(f"labeling run {folder}", output.root, vocabulary, count, images)
