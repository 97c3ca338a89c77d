"""``yolo-seg``: the Ultralytics segmentation layout: ``images/``, ``labels/*.txt`` (per line a class index
and a normalised polygon) and ``data.yaml`` with the class names.

Each class's pixels become polygons with OpenCV (``findContours``, two-level hierarchy: outer boundaries and
their holes; ``approxPolyDP`` at ``tolerance`` pixels). A part of a class is one line; its holes are joined
to it by a zero-width cut (the outline runs to the hole, around it and back), the way Ultralytics' own
converters (``merge_multi_segment``) keep holes, so that filling the polygon leaves the hole empty.
Coordinates are pixel centres, ``(x + 0.5) / width``, so that Ultralytics' rasteriser (``polygon * size``
truncated to integers, ``cv2.fillPoly``) puts each vertex back on its pixel. Unlabeled pixels get no
polygon (background).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from ..sources import LabelSource
from .files import STAGING
from .parallel import ExportItem, export_pieces

__all__ = ["DEFAULT_TOLERANCE", "mask_polygons", "polygon_lines", "rasterize", "write_yolo_seg"]

DEFAULT_TOLERANCE = 0.5  # pixels: the Douglas-Peucker tolerance of approxPolyDP (0 keeps every corner)


def _join_hole(outline: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``outline`` ``[N, 2]`` with ``hole`` ``[M, 2]`` spliced in at their closest pair of vertices: outline to
    vertex i, across to hole vertex j, around the hole back to j, and back to i."""
    distances = ((outline[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(distances.argmin()), distances.shape)
    around = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outline[: i + 1], around, outline[i:]])


def mask_polygons(mask: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> list[np.ndarray]:
    """The polygons of a boolean mask ``[H, W]``: one ``[N, 2]`` float array of pixel-centre ``(x, y)`` per
    connected part, its holes joined in (module docstring), each with at least 3 vertices (a part of one
    or two pixels repeats its last vertex, so that it is drawn rather than dropped)."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []

    def simplified(index: int) -> np.ndarray:
        contour = contours[index]
        if tolerance > 0 and len(contour) > 3:
            contour = cv2.approxPolyDP(contour, tolerance, closed=True)
        return contour.reshape(-1, 2).astype(np.float64)

    links = hierarchy[0]  # per contour: next, previous, first child, parent
    polygons = []
    for index, (_, _, child, parent) in enumerate(links):
        if parent != -1:
            continue
        outline = simplified(index)
        while child != -1:
            outline = _join_hole(outline, simplified(child))
            child = links[child][0]
        if len(outline) < 3:
            outline = np.concatenate([outline, np.repeat(outline[-1:], 3 - len(outline), axis=0)])
        polygons.append(outline)
    return polygons


def polygon_lines(label_map: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> list[str]:
    """The label file's lines of a label map ``[H, W]`` (class index, ``-1`` = unlabeled): per class and part,
    ``"<class> x1 y1 x2 y2 ..."`` with coordinates normalised to 0..1 (6 decimals)."""
    height, width = label_map.shape
    scale = np.array([width, height], dtype=np.float64)
    lines = []
    for value in np.unique(label_map):
        if value < 0:
            continue
        for polygon in mask_polygons(label_map == value, tolerance):
            coordinates = ((polygon + 0.5) / scale).ravel()
            lines.append(f"{int(value)} " + " ".join(f"{c:.6f}" for c in coordinates))
    return lines


def rasterize(lines: list[str], height: int, width: int, num_classes: int) -> np.ndarray:
    """A label file's lines drawn as Ultralytics does (``polygon * size`` truncated, ``cv2.fillPoly``, one
    polygon at a time): ``[num_classes, H, W]`` boolean, one mask per class."""
    masks = np.zeros((num_classes, height, width), dtype=np.uint8)
    scale = np.array([width, height], dtype=np.float64)
    for line in lines:
        value, *numbers = line.split()
        polygon = (np.array(numbers, dtype=np.float64).reshape(-1, 2) * scale).astype(np.int32)
        drawn = np.zeros((height, width), dtype=np.uint8)
        cv2.fillPoly(drawn, [polygon], 1)
        masks[int(value)] |= drawn
    return masks.astype(bool)


@dataclass(frozen=True)
class _YoloPieces:
    """Writes a piece's label files and images (in a task: :mod:`pipeline.exports.parallel`)."""

    folder: str
    tolerance: float

    def write(self, part: int, items: Iterator[ExportItem]) -> dict[str, int]:
        images = polygons = 0
        for item in items:
            label = Path(self.folder, "labels", f"{item.name}.txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            lines = polygon_lines(item.labeled.label_map(), self.tolerance)
            label.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
            data = item.image.read()
            image = Path(self.folder, "images", f"{item.name}{item.image.suffix(data)}")
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(data)
            images += 1
            polygons += len(lines)
        return {"images": images, "polygons": polygons}


def write_yolo_seg(
    source: LabelSource, folder: Path, root: Path, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, int]:
    """Write the layout into ``folder`` (new and empty), a Ray task per piece of the source
    (:mod:`pipeline.exports.parallel`): each image into ``images/`` (as the run read it: :mod:`pipeline.run_images`)
    and its label file into ``labels/`` under the same relative name; then ``data.yaml``, whose ``path`` is
    ``root``, where ``folder`` will be (absolute). Returns ``{"images", "polygons"}``."""
    writer = _YoloPieces(str(folder), tolerance)
    counts, _, _ = export_pieces(source, lambda _: writer, staging=folder / STAGING, desc="yolo-seg")
    names_by_index = dict(enumerate(source.vocabulary.names))
    # Ultralytics resolves a relative `path` against its own DATASETS_DIR setting, neither the yaml's folder nor
    # the working directory (ultralytics.data.utils.check_det_dataset): only an absolute one works from anywhere.
    data = {"path": str(root.resolve()), "train": "images", "val": "images", "names": names_by_index}
    (folder / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return {"images": counts.get("images", 0), "polygons": counts.get("polygons", 0)}
