"""How faithful the ``yolo-seg`` export's polygons are: per image and class, the IoU between the class's
mask and its polygons drawn back as Ultralytics draws them (``pipeline.exports.yolo_seg.rasterize``), and the
polygon vertices written, at several ``--tolerance`` values.

    python jobs/label.py --smoke-test --vocab samples/vocab.txt --input samples/images --output out/sample
    python benchmarks/yolo_polygons.py out/sample                       # or fiftyone:DATASET
    python benchmarks/yolo_polygons.py regions --write BENCHMARKS.md

``regions`` measures label maps with real-looking boundaries where no real model's run is at hand (the
smoke model gives one class per image): the sample photos cut into Felzenszwalb regions (scikit-image),
each region one of 8 classes, every 11th region unlabeled, so that classes have many parts and holes.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import numpy as np
from _report import emit

from pipeline.exports.yolo_seg import DEFAULT_TOLERANCE, polygon_lines, rasterize
from pipeline.sources import open_label_source


def region_label_maps(classes: int = 8) -> list[np.ndarray]:
    """The sample photos as label maps of Felzenszwalb regions (see the module docstring)."""
    from PIL import Image
    from skimage.segmentation import felzenszwalb

    maps = []
    for path in sorted((Path(__file__).resolve().parents[1] / "samples" / "images").iterdir()):
        regions = felzenszwalb(np.asarray(Image.open(path).convert("RGB")), scale=200, sigma=0.8, min_size=50)
        label_map = (regions % classes).astype(np.int64)
        label_map[regions % 11 == 0] = -1
        maps.append(label_map)
    return maps


def measure(source_spec: str, tolerances: list[float]) -> list[str]:
    """The table's lines: per tolerance, mean and lowest IoU over (image, class) pairs, and vertices."""
    if source_spec == "regions":
        label_maps, n, description = region_label_maps(), 8, "Felzenszwalb regions of samples/images"
    else:
        source = open_label_source(source_spec)
        label_maps = [item.label_map() for item in source.images()]
        n, description = len(source.vocabulary), source.description
    rows = []
    for tolerance in tolerances:
        ious, vertices = [], 0
        for label_map in label_maps:
            lines = polygon_lines(label_map, tolerance)
            vertices += sum((len(line.split()) - 1) // 2 for line in lines)
            drawn = rasterize(lines, *label_map.shape, n)
            for value in np.unique(label_map[label_map >= 0]):
                truth = label_map == value
                ious.append((drawn[value] & truth).sum() / (drawn[value] | truth).sum())
        default = " (default)" if tolerance == DEFAULT_TOLERANCE else ""
        rows.append(f"| {tolerance:g}{default} | {np.mean(ious):.4f} | {np.min(ious):.4f} | {len(ious)} | {vertices} |")
    load = os.getloadavg()
    return [
        f"### yolo-seg polygons: mask IoU ({datetime.date.today()}, {description}, {len(label_maps)} images, "
        f"load average {load[0]:.1f})",
        "",
        "| tolerance (px) | mean IoU | lowest IoU | (image, class) pairs | vertices |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a labeling run's output folder, fiftyone:DATASET, or regions")
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.0, DEFAULT_TOLERANCE, 1.0, 2.0])
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    emit(measure(args.source, args.tolerances), args.write)


if __name__ == "__main__":
    main()
