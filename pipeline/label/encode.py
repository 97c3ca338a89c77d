"""The labeling job's CPU stage after the model: label-map PNG and per-class RLE segments.

The model's actors hand over arrays (label map, per-class scores); the encoding runs here, in CPU tasks,
so that a GPU never waits for its actor's CPU to encode. Rows come out typed (``segments`` a list of
structs, :data:`pipeline.outputs.SEGMENT_TYPE`), ready to be written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..output_shards import PREDICTION_SCHEMA
from ..segments import encode_label_map_png, label_map_segments, unlabeled_value
from ..vocabulary import Vocabulary
from .inputs import image_id

#: What the write stage receives: a prediction row (empty when ``error`` is set), its ``error`` and
#: ``batch_images`` (the images of its model call; 0 when the model did not run on it).
ENCODED_SCHEMA = PREDICTION_SCHEMA.append(pa.field("error", pa.string())).append(pa.field("batch_images", pa.int64()))


@dataclass
class EncodeStage:
    """CPU stage: rows of :class:`~pipeline.label.model_stage.ModelStage` -> ``ENCODED_SCHEMA`` rows."""

    vocabulary: dict[str, Any]

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
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=ENCODED_SCHEMA)
