"""What every label source is: :class:`LabeledImage`, :class:`LabelSource`, and the ``fiftyone:`` prefix that
names a reviewed dataset (``run+fiftyone:`` its whole run, the dataset's images as reviewed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from san.errors import UserError

from ..segments import decode_label_map_png, unlabeled_value
from ..vocabulary import Vocabulary

__all__ = ["FIFTYONE_PREFIX", "RUN_WITH_REVIEW_PREFIX", "LabelSource", "LabelSourceError", "LabeledImage"]

FIFTYONE_PREFIX = "fiftyone:"
#: ``run+fiftyone:DATASET``: the dataset's labeling run, every image, those of the dataset as reviewed there.
RUN_WITH_REVIEW_PREFIX = "run+fiftyone:"


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
    # The same images split for work in parallel (pipeline.exports.pieces): ``reviewed`` yields those of a FiftyOne
    # dataset (None: none), ``reviewed_keys`` their (image_path, image_id) in the same order without reading
    # masks; ``from_run``: the run's prediction rows follow, those whose image the dataset holds left out.
    reviewed: Callable[[], Iterator[LabeledImage]] | None = None
    reviewed_keys: Callable[[], Iterator[tuple[str, int]]] | None = None
    from_run: bool = True
