"""The labeling job's CPU stages: expand containers, read, decode, validate and resize images.

Kept free of torch (``san.transforms`` and ``pipeline.label.images`` need only numpy and PIL), so that the
Ray workers running these tasks start in about a second instead of importing the model stack.
Rows flow as ``image_path``, ``error`` (empty string when fine) and the stage's payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from san.transforms import ResizeShortestEdge

from .containers import expand_container
from .images import ImageDecodeError, decode_image
from .inputs import Container, read_bytes

# Placeholder pixels for rows without an image (Ray needs an array in every row of the column).
_NO_IMAGE = np.zeros((1, 1, 3), dtype=np.uint8)


def expand_containers(row: dict[str, Any], bytes_column: str | None, done: frozenset[str]) -> list[dict[str, Any]]:
    """``flat_map``: one Parquet file or WebDataset shard -> its image rows (finished ones skipped)."""
    container = Container(row["kind"], row["uri"])
    return [
        {"image_path": item.image_path, "data": item.data or b"", "error": item.error or ""}
        for item in expand_container(container, bytes_column)
        if item.image_path not in done
    ]


@dataclass
class DecodeStage:
    """CPU stage: read (when only a path is given), decode, validate and resize for the model."""

    resize: ResizeShortestEdge
    max_pixels: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        images, heights, widths, errors = [], [], [], []
        datas = batch.get("data", [b""] * len(batch["image_path"]))
        for path, data, error in zip(batch["image_path"], datas, batch["error"], strict=True):
            image, resized = None, _NO_IMAGE
            if not error:
                image, resized, error = self._prepare(path, data)
            images.append(resized)
            heights.append(0 if image is None else image.shape[0])
            widths.append(0 if image is None else image.shape[1])
            errors.append(error)
        return {
            "image_path": batch["image_path"],
            "image": images,
            "height": np.asarray(heights, dtype=np.int64),
            "width": np.asarray(widths, dtype=np.int64),
            "error": np.asarray(errors, dtype=object),
        }

    def _prepare(self, path: str, data: bytes) -> tuple[np.ndarray | None, np.ndarray, str]:
        """``(decoded [H, W, 3], resized [h, w, 3], "")``, or ``(None, placeholder, reason)`` when this one
        image fails in any way: one bad file becomes an error row and never stops the run."""
        try:
            raw = data if len(data) else read_bytes(path)
            image = decode_image(raw, max_pixels=self.max_pixels)
        except ImageDecodeError as failure:
            return None, _NO_IMAGE, failure.reason
        except OSError as failure:
            return None, _NO_IMAGE, f"cannot read file: {failure}"
        except Exception as failure:  # a decoder bug on a strange file: the reason is the exception
            return None, _NO_IMAGE, f"cannot decode image: {type(failure).__name__}: {failure}"
        try:
            return image, self.resize(image), ""
        except Exception as failure:  # any resize failure names the sizes, e.g. an image too thin to resize
            size = f"{image.shape[0]}x{image.shape[1]}"
            return None, _NO_IMAGE, f"cannot resize {size} image: {type(failure).__name__}: {failure}"
