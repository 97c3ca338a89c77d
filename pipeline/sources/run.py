"""A labeling run's output folder as a :class:`~pipeline.sources.base.LabelSource`: its labels as the run wrote
them."""

from __future__ import annotations

import os
from collections.abc import Iterator

from ..outputs import RunOutput
from .base import LabeledImage, LabelSource, LabelSourceError

__all__ = ["run_label_source"]


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
