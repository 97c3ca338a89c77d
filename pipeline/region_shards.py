"""The Parquet files of a run's kept regions (``OUT/regions/part-*.parquet``, ``jobs/label.py --keep-regions``):
per labeled image, SAN's vocabulary-free outputs, from which a new vocabulary's label map is computed without
the image model (``jobs/relabel.py``) and texts are searched (``jobs/search.py``).

One row per image: its ``image_path``, ``image_id`` and ``generation`` (as in ``predictions/``), the sizes the
post-processing needs, and two arrays stored as raw little-endian bytes in C order, of the row's ``dtype``
(``float32`` or ``float16``): ``mask_preds`` ``[Q, mask_height, mask_width]`` (mask logits) and ``mask_embs``
``[Q, embed_dim]`` (the recognition embeddings whose product with the classifier gives the class logits); and
``mask_quality`` ``[Q]`` float32, each region's mean mask probability over its own pixels (:func:`mask_quality`),
so that a search ranks regions without reading their masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["REGION_DTYPES", "REGION_SCHEMA", "StoredRegions", "mask_quality", "regions_row", "stored_regions"]

#: ``--keep-regions`` value -> the numpy dtype its arrays are stored in.
REGION_DTYPES: dict[str, np.dtype] = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2")}

_SIZES = [
    "queries",
    "mask_height",
    "mask_width",
    "embed_dim",
    "padded_height",
    "padded_width",
    "input_height",
    "input_width",
    "height",
    "width",
]
REGION_SCHEMA = pa.schema(
    [
        ("image_path", pa.string()),
        ("image_id", pa.int64()),
        ("generation", pa.int64()),
        ("dtype", pa.string()),
        *[(name, pa.int32()) for name in _SIZES],
        # large_binary: a shard of a thousand images at fp32 holds about 1 GB of masks.
        ("mask_preds", pa.large_binary()),
        ("mask_embs", pa.large_binary()),
        ("mask_quality", pa.binary()),
    ]
)


@dataclass(frozen=True)
class StoredRegions:
    """One image's kept regions as numpy arrays (float32 or float16, as stored).

    ``mask_preds`` ``[Q, h, w]``: mask logits at 1/16 of the padded model input; ``mask_embs`` ``[Q, D]``;
    ``padded_size``: the padded model input ``(Hp, Wp)``; ``input_size``: the resized image inside it ``(Hi, Wi)``;
    ``size``: the original image ``(H, W)``, at which label maps are made; ``mask_quality`` ``[Q]`` float32."""

    image_path: str
    image_id: int
    mask_preds: np.ndarray
    mask_embs: np.ndarray
    padded_size: tuple[int, int]
    input_size: tuple[int, int]
    size: tuple[int, int]
    mask_quality: np.ndarray


def regions_row(
    image_path: str,
    image_id: int,
    generation: int,
    dtype: str,
    mask_preds: np.ndarray,
    mask_embs: np.ndarray,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    size: tuple[int, int],
) -> dict[str, Any]:
    """One ``REGION_SCHEMA`` row; ``dtype`` a key of :data:`REGION_DTYPES`; ``mask_preds`` ``[Q, h, w]`` and
    ``mask_embs`` ``[Q, D]`` any float arrays (cast to ``dtype``)."""
    stored = REGION_DTYPES[dtype]
    queries, mask_height, mask_width = mask_preds.shape
    if mask_embs.ndim != 2 or mask_embs.shape[0] != queries:
        raise ValueError(f"mask_embs {mask_embs.shape} does not match mask_preds {mask_preds.shape}")
    return {
        "image_path": image_path,
        "image_id": int(image_id),
        "generation": int(generation),
        "dtype": dtype,
        "queries": queries,
        "mask_height": mask_height,
        "mask_width": mask_width,
        "embed_dim": int(mask_embs.shape[1]),
        "padded_height": int(padded_size[0]),
        "padded_width": int(padded_size[1]),
        "input_height": int(input_size[0]),
        "input_width": int(input_size[1]),
        "height": int(size[0]),
        "width": int(size[1]),
        "mask_preds": np.ascontiguousarray(mask_preds, dtype=stored).tobytes(),
        "mask_embs": np.ascontiguousarray(mask_embs, dtype=stored).tobytes(),
        "mask_quality": mask_quality(mask_preds, padded_size, input_size).tobytes(),
    }


def mask_quality(mask_preds: np.ndarray, padded_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """Each region's mask quality ``[Q]`` float32 from its mask logits ``[Q, h, w]``: the mean of ``sigmoid(mask)``
    over the mask cells above 0.5 (the mask score Mask2Former gives an instance), 0 for a region with no such
    cell. Only the cells of the image count, not its padding (``input_size`` inside ``padded_size``)."""
    queries, height, width = mask_preds.shape
    rows = -(-input_size[0] * height // padded_size[0])
    columns = -(-input_size[1] * width // padded_size[1])
    probs = 1.0 / (1.0 + np.exp(-mask_preds[:, :rows, :columns].astype(np.float32).reshape(queries, -1)))
    inside = probs > 0.5
    count = inside.sum(axis=1)
    return np.where(count > 0, (probs * inside).sum(axis=1) / np.maximum(count, 1), 0.0).astype("<f4")


def stored_regions(row: dict[str, Any]) -> StoredRegions:
    """The arrays and sizes of one ``REGION_SCHEMA`` row (a dict, e.g. of ``Table.to_pylist()``); the arrays
    are read-only views of the row's bytes."""
    stored = REGION_DTYPES[row["dtype"]]
    queries = row["queries"]
    return StoredRegions(
        image_path=row["image_path"],
        image_id=row["image_id"],
        mask_preds=np.frombuffer(row["mask_preds"], stored).reshape(queries, row["mask_height"], row["mask_width"]),
        mask_embs=np.frombuffer(row["mask_embs"], stored).reshape(queries, row["embed_dim"]),
        padded_size=(row["padded_height"], row["padded_width"]),
        input_size=(row["input_height"], row["input_width"]),
        size=(row["height"], row["width"]),
        mask_quality=np.frombuffer(row["mask_quality"], "<f4"),
    )
