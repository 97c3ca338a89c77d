"""Per-image label maps: PNG encoding and per-class COCO RLE segments.

Label map PNG rule (what ``label_map_png`` in the predictions Parquet holds):

- Pixel value = 0-based class index into the vocabulary (category id = index + 1).
- 8-bit grayscale PNG when every labeled pixel's class index is <= 254; value 255 = unlabeled.
- 16-bit grayscale PNG otherwise (class indices up to 65534); value 65535 = unlabeled.

So a decoded map is self-describing: unlabeled is always ``np.iinfo(label_map.dtype).max``
(see :func:`unlabeled_value`). A run with more than 255 classes can hold both kinds of PNG.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from san.image_labels import UNLABELED_U8, UNLABELED_U16, label_encoding

__all__ = [
    "UNLABELED_U8",
    "UNLABELED_U16",
    "decode_label_map_png",
    "encode_label_map_png",
    "label_map_segments",
    "unlabeled_value",
]

# Pixels of a label map read at once (its runs of equal values).
UNIQUE_BAND_PIXELS = 1 << 22


def unlabeled_value(label_map: np.ndarray) -> int:
    """The "unlabeled" value of a decoded label map: 255 for uint8, 65535 for uint16."""
    if label_map.dtype == np.uint8:
        return UNLABELED_U8
    if label_map.dtype == np.uint16:
        return UNLABELED_U16
    raise ValueError(f"label maps decode to uint8 or uint16, got {label_map.dtype}")


def _check_label_map(label_map: np.ndarray) -> None:
    if not isinstance(label_map, np.ndarray) or label_map.ndim != 2:
        shape = getattr(label_map, "shape", None)
        raise ValueError(f"label_map must be a 2-D numpy array [H, W], got shape {shape}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"label_map must have an integer dtype, got {label_map.dtype}")
    if label_map.size == 0:
        raise ValueError(f"label_map is empty: shape {label_map.shape}")


def encode_label_map_png(label_map: np.ndarray, ignore_value: int | None = None) -> bytes:
    """Encode a class-index map as an 8- or 16-bit grayscale PNG (rule in the module docstring).

    Args:
        label_map: ``[H, W]`` any integer dtype, 0-based class indices.
        ignore_value: pixels equal to it are unlabeled and stored as 255 (8-bit PNG) or 65535 (16-bit).
            ``None`` means every pixel is a class index. Pass 255 for a uint8 map that already uses
            255 for unlabeled: it then round-trips unchanged.

    Returns:
        PNG bytes. :func:`decode_label_map_png` gives back a uint8 or uint16 ``[H, W]`` array equal to
        ``label_map`` on labeled pixels and to the unlabeled value elsewhere.

    Raises:
        ValueError: not a 2-D integer array, a negative class index, or one above 65534.
    """
    _check_label_map(label_map)
    if label_map.dtype == np.uint8 and ignore_value == UNLABELED_U8:  # the 8-bit PNG's values already: no pass
        return _png(label_map)
    labeled = label_map != ignore_value if ignore_value is not None else np.ones(label_map.shape, bool)
    min_index = int(label_map.min(where=labeled, initial=0))  # reduced in place: no copy of a large map
    if min_index < 0:
        raise ValueError(f"label_map has a negative class index {min_index} (not ignore_value)")
    max_index = int(label_map.max(where=labeled, initial=0))
    if max_index > UNLABELED_U16 - 1:
        raise ValueError(f"class index {max_index} does not fit a 16-bit PNG (max {UNLABELED_U16 - 1})")
    unlabeled, dtype = label_encoding(max_index + 1)
    return _png(np.where(labeled, label_map, unlabeled).astype(dtype, copy=False))


def _png(values: np.ndarray) -> bytes:
    """``values`` (uint8 or uint16 ``[H, W]``) as a grayscale PNG."""
    buffer = io.BytesIO()
    # fromarray picks mode "L" for uint8 and "I;16" for uint16; PNG stores both losslessly.
    # zlib level 3, not PIL's 6: half the encoding time (this runs once per labeled image), files ~20% larger.
    Image.fromarray(np.ascontiguousarray(values)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def decode_label_map_png(data: bytes) -> np.ndarray:
    """Decode a label-map PNG written by :func:`encode_label_map_png`.

    Returns:
        ``[H, W]`` uint8 (8-bit PNG) or uint16 (16-bit PNG) array; unlabeled = 255 / 65535.

    Raises:
        ValueError: the bytes are not a single-channel 8- or 16-bit PNG.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ...) on bad input
        raise ValueError(f"cannot decode label map PNG: {type(exc).__name__}: {exc}") from None
    if mode == "L":
        return np.array(array, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":  # older Pillow reads 16-bit PNGs as "I" (int32)
        if array.size and (array.min() < 0 or array.max() > UNLABELED_U16):
            raise ValueError(f"label map PNG of mode {mode} has values outside 0..65535")
        return array.astype(np.uint16)
    raise ValueError(f"label map PNG must be 8- or 16-bit grayscale, got PIL mode {mode!r}")


def label_map_segments(
    label_map: np.ndarray,
    pixel_scores: np.ndarray | None,
    names: Sequence[str],
    category_ids: Sequence[int],
    ignore_value: int | None = None,
    class_scores: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One COCO-style segment per class present in a label map.

    Args:
        label_map: ``[H, W]`` integer, 0-based class indices in ``0..N-1``; pixels equal to
            ``ignore_value`` (if not ``None``) are unlabeled and produce no segment.
        pixel_scores: ``[H, W]`` float, each pixel's score for its own class (the best class score at
            that pixel), or ``None`` (then every score is 1.0, unless ``class_scores`` are given).
        names: ``N`` class names.
        category_ids: ``N`` COCO category ids (``Vocabulary.category_ids``).
        ignore_value: the unlabeled value of ``label_map``, or ``None``.
        class_scores: ``[N]`` each class's score, already reduced
            (:attr:`san.image_labels.ImageLabels.class_scores`); used instead of ``pixel_scores``.

    Returns:
        Segments in increasing class index, each a dict with ``category_id`` (int), ``category_name``
        (str), ``rle`` (str: COCO compressed RLE counts, size ``[H, W]``), ``area`` (int pixel count),
        ``bbox`` (``[x, y, w, h]`` floats, from ``pycocotools.mask.toBbox``) and ``score`` (float: mean of
        ``pixel_scores`` over the class's pixels).

    Raises:
        ValueError: shapes or lengths disagree, or a labeled pixel's index is outside ``0..N-1``.
    """
    _check_label_map(label_map)
    num_classes = len(names)
    if len(category_ids) != num_classes:
        raise ValueError(f"{num_classes} names but {len(category_ids)} category ids")
    height, width = label_map.shape
    if class_scores is not None and len(class_scores) != num_classes:
        raise ValueError(f"class_scores must have one score per class ({num_classes}), got {len(class_scores)}")
    if pixel_scores is not None and tuple(pixel_scores.shape) != (height, width):
        raise ValueError(f"pixel_scores must have shape [H, W] = {[height, width]}, got {list(pixel_scores.shape)}")
    runs = _runs(label_map)
    present = np.unique(runs[0])  # the classes present: the values of the runs, not a sort of every pixel
    if ignore_value is not None:
        present = present[present != ignore_value]
    if present.size and (present[0] < 0 or present[-1] >= num_classes):
        bad = present[0] if present[0] < 0 else present[-1]
        raise ValueError(f"label_map holds class index {int(bad)}, outside 0..{num_classes - 1}")
    if not present.size:
        return []
    # Every class's RLE and box in one call each (pycocotools takes lists).
    counts, areas = _rle_counts(*runs, present, height * width)
    rles = mask_utils.frPyObjects([{"counts": c, "size": [height, width]} for c in counts], height, width)
    boxes = mask_utils.toBbox(rles).tolist()
    segments: list[dict[str, Any]] = []
    for index, rle, area, box in zip(present.tolist(), rles, areas, boxes, strict=True):
        if class_scores is not None:
            score = float(class_scores[index])
        elif pixel_scores is None:
            score = 1.0
        else:
            score = float(np.sum(pixel_scores, where=label_map == index, dtype=np.float64) / area)
        segments.append(
            {
                "category_id": int(category_ids[index]),
                "category_name": str(names[index]),
                "rle": rle["counts"].decode("ascii"),
                "area": area,
                "bbox": box,
                "score": score,
            }
        )
    return segments


def _runs(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of equal values of the map in column-major order (the order of COCO RLE): their values, starts
    and ends (flat column-major indices), from one pass in bands of columns, runs cut by a band edge merged.
    Only a band's column-major copy and the runs are held, never a mask per class.

    Hand-written because ``pycocotools.mask.encode`` takes one binary mask per class: a full pass and a
    column-major copy of the map for every class present."""
    height, width = label_map.shape
    columns = max(1, UNIQUE_BAND_PIXELS // height)
    values, starts = [], []
    for first in range(0, width, columns):
        flat = label_map[:, first : first + columns].ravel(order="F")
        begins = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
        values.append(flat[begins])
        starts.append(begins + first * height)
    value, start = np.concatenate(values), np.concatenate(starts)
    keep = np.concatenate([[True], value[1:] != value[:-1]])  # a run cut by a band edge is one run
    value, start = value[keep], start[keep]
    return value, start, np.append(start[1:], height * width)


def _rle_counts(
    value: np.ndarray, start: np.ndarray, end: np.ndarray, classes: np.ndarray, pixels: int
) -> tuple[list[list[int]], list[int]]:
    """The uncompressed COCO RLE counts of each of ``classes`` (sorted, each present in the map) from the map's
    :func:`_runs` (``pixels``: the map's size): alternating runs of zeros and ones, from a run of zeros to the last
    run, from one sort of the runs by class; and each class's area (its pixels).

    The areas are summed here from the runs: ``pycocotools.mask.area`` of a list fails past 255 masks on NumPy 2
    (it builds a uint8 array of the count)."""
    order = np.argsort(value, kind="stable")  # each class's runs together, in their order in the map
    value, start, end = value[order], start[order], end[order]
    first = np.concatenate([[True], value[1:] != value[:-1]])
    before = np.concatenate([[0], end[:-1]])
    before[first] = 0  # a class's first run of zeros starts at the map's start
    pairs = np.stack([start - before, end - start], axis=1).ravel().tolist()
    begins, stops = np.searchsorted(value, classes, "left").tolist(), np.searchsorted(value, classes, "right").tolist()
    tails = (pixels - end[np.asarray(stops) - 1]).tolist()
    counts = []
    for begin, stop, tail in zip(begins, stops, tails, strict=True):
        # each ends with its closing run of zeros, as pycocotools writes it
        counts.append(pairs[2 * begin : 2 * stop] + [tail] if tail else pairs[2 * begin : 2 * stop])
    pixels_before = np.concatenate([[0], np.cumsum(end - start)])  # of the runs before each, in class order
    return counts, (pixels_before[stops] - pixels_before[begins]).tolist()
