"""The labeling job's CPU stages before the model: expand containers, decode, validate and resize.

The decode stage reads no file the grouping stage already read: it decodes the bytes each model batch carries
(``pipeline.label.batching``), and reads a file only when its batch holds none (past the grouping window's budget,
or a file the grouping could not read, whose failure is reported here).

Kept free of torch (``san.transforms`` and ``pipeline.label.images`` need only numpy and PIL), so that the
Ray workers running these tasks start in about a second instead of importing the model stack.
Rows flow as ``image_path``, ``error`` (empty string when fine) and the stage's payload.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from san.transforms import ResizeShortestEdge

from .containers import expand_container
from .images import ImageDecodeError, decode_with
from .inputs import Container, read_bytes

# Rows of a container (Parquet file, shard, list file) handed on at once.
EXPANDED_ROWS = 1024


def expand_containers(batch: dict[str, np.ndarray], bytes_column: str | None) -> Iterator[dict[str, list[Any]]]:
    """``map_batches``: Parquet files, WebDataset shards, list files or folders (``kind``, ``uri``, ``exclude``)
    -> their image rows, yielded :data:`EXPANDED_ROWS` at a time (Ray Data streams each on: a container of
    millions of images is never held whole)."""
    rows: dict[str, list[Any]] = {"image_path": [], "data": [], "error": []}
    for kind, uri, exclude in zip(batch["kind"], batch["uri"], batch["exclude"], strict=True):
        for item in expand_container(Container(str(kind), str(uri), str(exclude)), bytes_column):
            rows["image_path"].append(item.image_path)
            rows["data"].append(item.data or b"")
            rows["error"].append(item.error or "")
            if len(rows["image_path"]) == EXPANDED_ROWS:
                yield rows
                rows = {"image_path": [], "data": [], "error": []}
    if rows["image_path"]:
        yield rows


def padded_stack(images: list[np.ndarray]) -> np.ndarray:
    """RGB images ``[h_i, w_i, 3]`` -> one uint8 array ``[n, max h, max w, 3]``, each zero-padded at the bottom
    and right (a batch of one padded size differs by less than its pad multiple); ``[0, 1, 1, 3]`` for none."""
    if not images:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    stack = np.zeros((len(images), max(i.shape[0] for i in images), max(i.shape[1] for i in images), 3), np.uint8)
    for k, image in enumerate(images):
        stack[k, : image.shape[0], : image.shape[1]] = image
    return stack


@dataclass
class DecodeStage:
    """CPU stage: decode, validate and resize each model batch's images (a file read only when its bytes are not
    in the batch).

    Input rows are model batches (``pipeline.label.batching``: lists of ``image_path``, ``data``, ``error``,
    ``fingerprint``); each output row keeps the batch's ``image_path``, ``error`` and ``fingerprint`` lists, adds
    the original ``height`` and ``width`` of each image (0 for an error row) and ``pixels``: the resized images
    without an error, in order, as one :func:`padded_stack`."""

    resize: ResizeShortestEdge
    max_pixels: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        rows = [
            self._decode_batch(*row) for row in zip(batch["image_path"], batch["data"], batch["error"], strict=True)
        ]
        decoded = {key: [row[key] for row in rows] for key in ("image_path", "error", "height", "width", "pixels")}
        return {**decoded, "fingerprint": [[str(f) for f in fingerprints] for fingerprints in batch["fingerprint"]]}

    def _decode_batch(self, paths: np.ndarray, datas: np.ndarray, errors: np.ndarray) -> dict[str, Any]:
        images, heights, widths, reasons = [], [], [], []
        for path, data, error in zip(paths, datas, errors, strict=True):
            size = None
            if not error:
                size, resized, error = self._prepare(str(path), data)
                if resized is not None:
                    images.append(resized)
            heights.append(0 if size is None else size[0])
            widths.append(0 if size is None else size[1])
            reasons.append(str(error))
        return {
            "image_path": [str(p) for p in paths],
            "error": reasons,
            "height": np.asarray(heights, dtype=np.int64),
            "width": np.asarray(widths, dtype=np.int64),
            "pixels": padded_stack(images),
        }

    def _prepare(self, path: str, data: bytes) -> tuple[tuple[int, int] | None, np.ndarray | None, str]:
        """``((H, W) decoded, resized [h, w, 3], "")``, or ``(None, None, reason)`` when this one image fails in
        any way: one bad file becomes an error row and never stops the run."""
        try:
            raw = data if len(data) else read_bytes(path)
            size, resized = decode_with(raw, self._resized, max_pixels=self.max_pixels)
        except _ResizeError as failure:
            return None, None, str(failure)
        except ImageDecodeError as failure:
            return None, None, failure.reason
        except OSError as failure:
            return None, None, f"cannot read file: {failure}"
        except Exception as failure:  # a decoder bug on a strange file: the reason is the exception
            return None, None, f"cannot decode image: {type(failure).__name__}: {failure}"
        return size, resized, ""

    def _resized(self, image: Image.Image) -> tuple[tuple[int, int], np.ndarray]:
        """The decoded RGB image's ``(H, W)`` and the image resized by ``resize``, in PIL (the full-size image is
        never turned into an array)."""
        width, height = image.size
        try:
            return (height, width), np.asarray(self.resize.resize_image(image))
        except Exception as failure:  # any resize failure names the sizes, e.g. an image too thin to resize
            raise _ResizeError(f"cannot resize {height}x{width} image: {type(failure).__name__}: {failure}") from None


class _ResizeError(Exception):
    """An image that decoded but could not be resized; the message is its error row's reason."""
