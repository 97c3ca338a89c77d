"""The labeling job's CPU stage after the model: label-map PNG and per-class RLE segments.

The model's actors hand over arrays (label map, per-class scores); the encoding runs here, in CPU tasks,
so that a GPU never waits for its actor's CPU to encode. Rows come out typed (``segments`` a list of
structs, :data:`pipeline.outputs.SEGMENT_TYPE`), ready to be written; with ``keep_regions`` they also carry the
image's regions row (:func:`pipeline.region_shards.regions_row`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..output_shards import PREDICTION_SCHEMA
from ..region_shards import REGION_SCHEMA, regions_row
from ..segments import encode_label_map_png, label_map_segments, unlabeled_value
from ..vocabulary import Vocabulary
from .inputs import image_id

#: What the write stage receives: a prediction row (empty when ``error`` is set), its ``error`` and
#: ``batch_images`` (the images of its model call; 0 when the model did not run on it).
ENCODED_SCHEMA = PREDICTION_SCHEMA.append(pa.field("error", pa.string())).append(pa.field("batch_images", pa.int64()))
#: ``ENCODED_SCHEMA`` with the columns of ``REGION_SCHEMA`` it lacks (null on an error row): ``keep_regions``.
ENCODED_REGIONS_SCHEMA = pa.schema([*ENCODED_SCHEMA, *(f for f in REGION_SCHEMA if f.name not in ENCODED_SCHEMA.names)])


@dataclass
class EncodeStage:
    """CPU stage: rows of :class:`~pipeline.label.model_stage.ModelStage` -> ``ENCODED_SCHEMA`` rows, or with
    ``keep_regions`` (the regions' dtype name) ``ENCODED_REGIONS_SCHEMA`` rows."""

    vocabulary: dict[str, Any]
    keep_regions: str | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        vocabulary = Vocabulary.from_json(self.vocabulary)
        rows = []
        for i, path in enumerate(batch["image_path"]):
            error, label_map = str(batch["error"][i]), np.asarray(batch["label_map"][i])
            row = {"image_path": str(path), "error": error, "batch_images": int(batch["batch_images"][i])}
            if not error:
                ignore = unlabeled_value(label_map)
                row |= {
                    "image_id": image_id(row["image_path"]),
                    "width": int(batch["width"][i]),
                    "height": int(batch["height"][i]),
                    "image_fingerprint": str(batch["fingerprint"][i]),
                    "label_map_png": encode_label_map_png(label_map, ignore_value=ignore),
                    "segments": label_map_segments(
                        label_map,
                        None,
                        vocabulary.names,
                        vocabulary.category_ids,
                        ignore_value=ignore,
                        class_scores=np.asarray(batch["class_scores"][i]),
                    ),
                }
                if self.keep_regions:
                    row |= self._regions(batch, i, row)
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=ENCODED_REGIONS_SCHEMA if self.keep_regions else ENCODED_SCHEMA)

    def _regions(self, batch: dict[str, np.ndarray], i: int, row: dict[str, Any]) -> dict[str, Any]:
        """Row ``i``'s regions columns (its ``generation`` is set by the write stage)."""
        padded = (int(batch["padded_height"][i]), int(batch["padded_width"][i]))
        resized = (int(batch["input_height"][i]), int(batch["input_width"][i]))
        preds, embs = np.asarray(batch["mask_preds"][i]), np.asarray(batch["mask_embs"][i])
        size = (row["height"], row["width"])
        return regions_row(row["image_path"], row["image_id"], 0, self.keep_regions, preds, embs, padded, resized, size)
