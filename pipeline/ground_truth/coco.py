"""Ground truth from a COCO JSON (``--gt coco:FILE`` or a ``.json`` file): :class:`CocoGroundTruth`.

A COCO dataset whose annotations are per-class semantic regions (polygons, compressed or uncompressed
RLE, decoded with ``pycocotools`` ``annToMask``). Classes are its ``categories`` sorted by id.
Pixels no annotation covers are ignored. Overlaps: annotations of the *same* category simply union;
a pixel covered by annotations of *different* categories is ignored (the ground truth contradicts
itself there, and "later wins" would score an arbitrary one of them). ``iscrowd`` regions count like
any other annotation. Images are matched to predictions by ``file_name`` (:mod:`pipeline.ground_truth.base`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Hashable
from pathlib import Path

import numpy as np

from .base import IGNORE, GroundTruth, GroundTruthError
from .classes import check_distinct_names

__all__ = ["CocoGroundTruth"]


class CocoGroundTruth(GroundTruth):
    """A COCO JSON of per-class semantic annotations (rules in the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]):
        from pycocotools.coco import COCO

        self.path = Path(path)
        if not self.path.is_file():
            raise GroundTruthError(f"`gt` COCO file {str(self.path)!r} does not exist")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise GroundTruthError(f"cannot read COCO JSON {self.path}: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
            raise GroundTruthError(f"{self.path}: a COCO JSON needs 'images' and 'categories' lists")
        data.setdefault("annotations", [])
        for image in data["images"]:
            if not isinstance(image, dict) or not all(k in image for k in ("id", "file_name", "height", "width")):
                raise GroundTruthError(f"{self.path}: every image needs id, file_name, height and width: {image!r}")
        for category in data["categories"]:
            if not isinstance(category, dict) or not isinstance(category.get("id"), int) or not category.get("name"):
                raise GroundTruthError(f"{self.path}: every category needs an integer id and a name: {category!r}")
        categories = sorted(data["categories"], key=lambda c: c["id"])
        names = [" ".join(str(c["name"]).split()) for c in categories]
        if not names:
            raise GroundTruthError(f"{self.path}: no categories")
        check_distinct_names(names, str(self.path))
        self.class_names = tuple(names)
        self._category_index = {c["id"]: i for i, c in enumerate(categories)}
        for ann in data["annotations"]:
            if ann.get("category_id") not in self._category_index:
                raise GroundTruthError(
                    f"{self.path}: annotation {ann.get('id')!r} has category_id {ann.get('category_id')!r}, "
                    "which is not in 'categories'"
                )
            if "segmentation" not in ann:
                raise GroundTruthError(f"{self.path}: annotation {ann.get('id')!r} has no 'segmentation'")
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
            coco.createIndex()
        self._coco = coco
        self.description = f"COCO JSON {self.path} ({len(coco.imgs)} images, {len(names)} classes)"

    def keys(self) -> list[Hashable]:
        return list(self._coco.imgs)

    def path_of(self, key: Hashable) -> str:
        return str(self._coco.imgs[key]["file_name"])

    def read(self, key: Hashable) -> np.ndarray:
        image = self._coco.imgs[key]
        height, width = int(image["height"]), int(image["width"])
        owner = np.full((height, width), IGNORE, dtype=np.int32)
        conflict = np.zeros((height, width), dtype=bool)
        for ann in self._coco.imgToAnns.get(key, []):
            try:
                mask = self._coco.annToMask(ann).astype(bool)
            except Exception as exc:  # pycocotools raises TypeError/ValueError/KeyError on malformed input
                raise GroundTruthError(
                    f"{self.path}: cannot decode annotation {ann.get('id')!r} of {image['file_name']!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            if mask.shape != (height, width):
                raise GroundTruthError(
                    f"{self.path}: annotation {ann.get('id')!r} of {image['file_name']!r} has size "
                    f"{mask.shape[1]}x{mask.shape[0]}, but the image is {width}x{height}"
                )
            index = self._category_index[ann["category_id"]]
            conflict |= mask & (owner != IGNORE) & (owner != index)
            owner[mask & (owner == IGNORE)] = index
        owner[conflict] = IGNORE
        return owner
