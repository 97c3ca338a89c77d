"""COCO JSON (instances-style with RLE segmentation and scores) from labeled images: built in memory
(:func:`build_coco`, written with :func:`san.atomic.write_json_atomic`), or written as a stream
(:func:`write_coco`) from each image's annotations as text (:func:`annotation_lines`, which the labeling job's
write tasks store in the prediction files) with ids given by :func:`numbered_annotations`. Both give the same
bytes for the same images."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "annotation_lines",
    "annotation_texts",
    "build_coco",
    "coco_categories",
    "image_entry",
    "image_texts",
    "numbered_annotations",
    "write_coco",
]


def _int(value: Any, what: str) -> int:
    """``int(value)`` for ints and integer-valued numpy scalars; ``ValueError`` otherwise."""
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _dumps(value: Any) -> str:
    """``value`` as compact JSON, as :func:`san.atomic.write_json_atomic` writes it (NaN refused)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def coco_categories(names: Sequence[str], category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO ``categories`` (``id``, ``name``) of a vocabulary's ``names`` and ``category_ids``.

    Raises:
        ValueError: lengths that disagree, or an id twice.
    """
    if len(names) != len(category_ids):
        raise ValueError(f"{len(names)} names but {len(category_ids)} category ids")
    categories = [
        {"id": _int(cid, "category id"), "name": str(name)} for cid, name in zip(category_ids, names, strict=True)
    ]
    if len({c["id"] for c in categories}) != len(categories):
        raise ValueError("category ids are not unique")
    return categories


def image_entry(image_id: Any, image_path: str, width: Any, height: Any) -> dict[str, Any]:
    """One COCO ``images`` entry; ``ValueError`` for a non-integer or non-positive size."""
    image_id = _int(image_id, "image_id")
    width, height = _int(width, "width"), _int(height, "height")
    if width <= 0 or height <= 0:
        raise ValueError(f"image {image_id}: width and height must be positive, got {width}x{height}")
    return {"id": image_id, "file_name": str(image_path), "width": width, "height": height}


def image_texts(rows: pa.Table) -> str:
    """The COCO ``images`` entries of ``rows`` (columns ``image_id``, ``image_path``, ``width``, ``height``), as
    comma-separated JSON."""
    columns = rows.select(["image_id", "image_path", "width", "height"]).to_pylist()
    return ",".join(_dumps(image_entry(**row)) for row in columns)


def _annotation(segment: Mapping[str, Any], image_id: int, width: int, height: int) -> dict[str, Any]:
    """One COCO annotation of a segment, without its ``id``."""
    counts = segment["rle"]
    return {
        "image_id": image_id,
        "category_id": _int(segment["category_id"], "category_id"),
        "segmentation": {
            "size": [height, width],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
        },
        "area": _int(segment["area"], "area"),
        "bbox": [float(v) for v in segment["bbox"]],
        "iscrowd": 0,
        "score": float(segment["score"]),
    }


def annotation_lines(image_id: Any, width: Any, height: Any, segments: Iterable[Mapping[str, Any]]) -> str:
    """An image's COCO annotations as text: one compact JSON object per segment and line, without ``id`` (the
    file they go into numbers them, :func:`numbered_annotations`); ``""`` for an image without segments. JSON
    escapes a line break inside a string, so a line is always one annotation."""
    image_id, width, height = _int(image_id, "image_id"), _int(width, "width"), _int(height, "height")
    return "\n".join(_dumps(_annotation(segment, image_id, width, height)) for segment in segments)


def annotation_texts(rows: pa.Table) -> pa.Array:
    """:func:`annotation_lines` of each row of ``rows`` (columns ``image_id``, ``width``, ``height``, ``segments``
    as a prediction file holds them), as a string array."""
    columns = rows.select(["image_id", "width", "height", "segments"]).to_pylist()
    return pa.array([annotation_lines(**row) for row in columns], pa.string())


def numbered_annotations(lines: pa.Array | pa.ChunkedArray, first_id: int) -> tuple[str, int]:
    """The annotations of :func:`annotation_lines` texts (one string per image, in order) as one comma-separated
    JSON text, their ids ``first_id, first_id + 1, ...`` inserted as each object's first key (vectorised in
    Arrow); returns the text and the next free id."""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    lines = pc.list_flatten(pc.split_pattern(pc.cast(lines, pa.large_string()), "\n"))
    lines = lines.filter(pc.not_equal(lines, ""))
    count = len(lines)
    if not count:
        return "", first_id
    ids = pc.cast(pa.array(np.arange(first_id, first_id + count, dtype=np.int64)), pa.large_string())
    text = [pa.scalar(part, pa.large_string()) for part in ('{"id":', ",", "")]
    rest = pc.utf8_slice_codeunits(lines, 1)  # each object after its "{"
    numbered = pc.binary_join_element_wise(text[0], ids, text[1], rest, text[2])
    joined = pc.binary_join(pa.LargeListArray.from_arrays(pa.array([0, count], pa.int64()), numbered), text[1])
    return joined[0].as_py(), first_id + count


def write_coco(
    handle: TextIO,
    categories: list[dict[str, Any]],
    images: Iterable[str],
    annotations: Iterable[str],
    info: Mapping[str, Any] | None = None,
) -> None:
    """Write a COCO file as a stream: ``images`` and ``annotations`` are comma-separated JSON texts (empty ones
    are skipped), read one at a time. The bytes equal ``write_json_atomic(build_coco(...))`` of the same images."""
    handle.write(f'{{"info":{_dumps(dict(info) if info is not None else {})},"images":[')
    _write_joined(handle, images)
    handle.write(f'],"categories":{_dumps(categories)},"annotations":[')
    _write_joined(handle, annotations)
    handle.write("]}")


def _write_joined(handle: TextIO, texts: Iterable[str]) -> None:
    """Write the non-empty ``texts`` separated by commas."""
    separator = ""
    for text in texts:
        if text:
            handle.write(separator + text)
            separator = ","


def build_coco(
    images: Iterable[Mapping[str, Any]],
    names: Sequence[str],
    category_ids: Sequence[int],
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a COCO dataset dict that ``pycocotools.coco.COCO`` loads.

    Args:
        images: one mapping per labeled image with ``image_id`` (int, unique, chosen by the caller),
            ``image_path`` (str, becomes ``file_name``), ``width``, ``height`` (ints) and ``segments``
            (sequence of segment dicts as made by :func:`pipeline.segments.label_map_segments`, or read
            back from Parquet: ``category_id``, ``rle``, ``area``, ``bbox``, ``score``).
        names: class names, one per category.
        category_ids: the categories' ids (``Vocabulary.category_ids``), same length as ``names``.
        info: optional COCO ``info`` object.

    Returns:
        ``{"info", "images", "categories", "annotations"}`` with plain Python types only.
        Annotations get ids ``1, 2, ...`` in input order; ``segmentation`` is
        ``{"size": [h, w], "counts": str}`` (compressed RLE), ``iscrowd`` is 0, ``bbox`` is
        ``[x, y, w, h]`` floats and ``score`` a float.

    Raises:
        ValueError: duplicate image id or category id, a segment whose ``category_id`` is unknown,
            lengths that disagree, or a non-positive width/height.
    """
    categories = coco_categories(names, category_ids)
    known_ids = {c["id"] for c in categories}
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen_image_ids: set[int] = set()
    for record in images:
        image_id = _int(record["image_id"], "image_id")
        if image_id in seen_image_ids:
            raise ValueError(f"duplicate image_id {image_id} ({record['image_path']})")
        seen_image_ids.add(image_id)
        entry = image_entry(image_id, record["image_path"], record["width"], record["height"])
        coco_images.append(entry)
        for segment in record["segments"]:
            annotation = _annotation(segment, image_id, entry["width"], entry["height"])
            if annotation["category_id"] not in known_ids:
                raise ValueError(f"image {image_id}: segment has unknown category_id {annotation['category_id']}")
            annotations.append({"id": len(annotations) + 1, **annotation})
    return {
        "info": dict(info) if info is not None else {},
        "images": coco_images,
        "categories": categories,
        "annotations": annotations,
    }
