"""A labeling run's output folder as a :class:`~pipeline.sources.base.LabelSource`: its labels as the run wrote
them."""

from __future__ import annotations

import os
from collections.abc import Iterator

from ..output_shards import shard_files
from ..outputs import RunOutput
from ..row_rules import current_rows, scan_keys
from .base import LabeledImage, LabelSource, LabelSourceError

__all__ = ["run_label_source"]


def _count(output: RunOutput) -> int:
    """How many images the run labeled (its current prediction rows): counted on the rows' ids and generations in
    NumPy (:mod:`pipeline.row_rules`, 12 bytes per row), not on a table of every path."""
    rows = scan_keys(shard_files(output.predictions_dir), "image_id")
    return int(current_rows(rows, scan_keys(shard_files(output.errors_dir), "image_path")).sum())


def run_label_source(folder: str | os.PathLike[str]) -> LabelSource:
    """The label maps of a labeling run's output folder, as the run wrote them."""
    output = RunOutput(folder)
    vocabulary = output.read_vocabulary(LabelSourceError)
    count = _count(output)
    if count == 0:
        raise LabelSourceError(f"{folder} has no predictions (no rows in predictions/part-*.parquet)")

    def images() -> Iterator[LabeledImage]:
        for row in output.iter_predictions(["image_path", "image_id", "label_map_png", "segments"]):
            yield LabeledImage(row["image_path"], int(row["image_id"]), row["label_map_png"], row["segments"])

    return LabelSource(f"labeling run {folder}", output.root, vocabulary, count, images)
