"""The labels of a labeling run or of a reviewed FiftyOne dataset, read the same way by training
(``pipeline.training_data``) and the exports (``pipeline.exports``). The types are in :mod:`.base`, a
run's folder in :mod:`.run`, a reviewed dataset in :mod:`pipeline.review.source`.

A source is named by a string: a labeling run's output folder (it has ``manifest.json``: the labels as the
run wrote them), ``fiftyone:DATASET`` (a dataset ``jobs/review.py`` made: its images, with their ``predictions``
masks as they are after editing; for a partial dataset, ``review.py --select``, its chosen images alone) or
``run+fiftyone:DATASET`` (every image of the dataset's run: the dataset's as reviewed, the others as the run
wrote them). FiftyOne is imported only for the latter two.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import FIFTYONE_PREFIX, RUN_WITH_REVIEW_PREFIX, LabeledImage, LabelSource, LabelSourceError
from .run import run_label_source

__all__ = [
    "FIFTYONE_PREFIX",
    "RUN_WITH_REVIEW_PREFIX",
    "LabelSource",
    "LabelSourceError",
    "LabeledImage",
    "is_label_source",
    "open_label_source",
    "run_label_source",
]


def is_label_source(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a labeling run's folder, ``fiftyone:DATASET`` or ``run+fiftyone:DATASET`` (not
    some other folder)."""
    text = os.fspath(spec)
    return text.startswith((FIFTYONE_PREFIX, RUN_WITH_REVIEW_PREFIX)) or (Path(text) / "manifest.json").is_file()


def open_label_source(spec: str | os.PathLike[str]) -> LabelSource:
    """The source ``spec`` names (see the module docstring).

    Raises:
        LabelSourceError: ``spec`` is neither, or the run's vocabulary cannot be read.
        pipeline.review.errors.ReviewError: the FiftyOne dataset does not exist or was not made by ``jobs/review.py``.
    """
    text = os.fspath(spec)
    if text.startswith(RUN_WITH_REVIEW_PREFIX):
        from ..review.source import run_with_review_label_source  # imports FiftyOne

        return run_with_review_label_source(text[len(RUN_WITH_REVIEW_PREFIX) :])
    if text.startswith(FIFTYONE_PREFIX):
        from ..review.source import dataset_label_source  # imports FiftyOne

        return dataset_label_source(text[len(FIFTYONE_PREFIX) :])
    if not (Path(text) / "manifest.json").is_file():
        raise LabelSourceError(
            f"{text!r} is neither a labeling run's output folder (it has no manifest.json) nor fiftyone:DATASET"
        )
    return run_label_source(text)
