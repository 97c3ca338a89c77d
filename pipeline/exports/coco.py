"""COCO JSON (instances-style with RLE segmentation and scores) from labeled images (written with
:func:`san.atomic.write_json_atomic`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["build_coco"]


def _int(value: Any, what: str) -> int:
    """``int(value)`` for ints and integer-valued numpy scalars; ``ValueError`` otherwise."""
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


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
    if len(names) != len(category_ids):
        raise ValueError(f"{len(names)} names but {len(category_ids)} category ids")
    categories = [
        {"id": _int(cid, "category id"), "name": str(name)} for cid, name in zip(category_ids, names, strict=True)
    ]
    known_ids = {c["id"] for c in categories}
    if len(known_ids) != len(categories):
        raise ValueError("category ids are not unique")

    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen_image_ids: set[int] = set()
    for record in images:
        image_id = _int(record["image_id"], "image_id")
        if image_id in seen_image_ids:
            raise ValueError(f"duplicate image_id {image_id} ({record['image_path']})")
        seen_image_ids.add(image_id)
        width, height = _int(record["width"], "width"), _int(record["height"], "height")
        if width <= 0 or height <= 0:
            raise ValueError(f"image {image_id}: width and height must be positive, got {width}x{height}")
        coco_images.append({"id": image_id, "file_name": str(record["image_path"]), "width": width, "height": height})
        for segment in record["segments"]:
            category_id = _int(segment["category_id"], "category_id")
            if category_id not in known_ids:
                raise ValueError(f"image {image_id}: segment has unknown category_id {category_id}")
            counts = segment["rle"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": {
                        "size": [height, width],
                        "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
                    },
                    "area": _int(segment["area"], "area"),
                    "bbox": [float(v) for v in segment["bbox"]],
                    "iscrowd": 0,
                    "score": float(segment["score"]),
                }
            )
    return {
        "info": dict(info) if info is not None else {},
        "images": coco_images,
        "categories": categories,
        "annotations": annotations,
    }
