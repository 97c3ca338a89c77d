"""A synthetic labeling run at any size, in the project's own shard schema, written by the project's own writer
(``RunOutput.write_tables``, as the labeling job's write tasks call it), without a model or images.

    python benchmarks/synthetic_run.py OUT --images 1000000 --gt OUT-gt [--pool 256] [--shard-size 256]

- ``OUT/predictions/part-*.parquet``: one row per image, ``--shard-size`` rows per file. Image ``i`` is
  ``/synthetic/images/<i // 1000>/<i>.jpg`` (no file is written, unless ``--image-files``) and has the label map
  of pool entry ``i % pool``: ``--pool`` distinct 640x480 label maps (default 256) of a background class and 10 shapes
  (polygons and ellipses) of random classes among 20, some left unlabeled (255), so about 8 segments of real
  COCO RLE per image, with scores. Only the pool's label maps are encoded (PNG, RLE); rows repeat them under new
  paths, so a million images take minutes, not hours.
- ``OUT/errors/part-*.parquet``: ``--failed`` of the inputs (default 0.5%) are error rows instead.
- ``OUT/manifest.json``: a run that has labeled and not yet finished (``status: running``), with its
  vocabulary; ``RunOutput.finalize`` finishes it (``benchmarks/finish_scale.py``).
- ``--gt DIR``: a ground-truth PNG per labeled image, ``DIR/<i // 1000>/<i>.png`` (matched by file stem, pixel
  value = vocabulary class index, 255 ignored): the pool entry's shapes with their corners moved by a few pixels
  and one shape in ten of another class, so that IoUs are high but not 1. Each is a hard link to its pool
  entry's file in ``DIR/.pool`` (a hidden folder, which ground-truth readers skip).
- ``--image-files DIR``: the images exist, so that a run can be exported: image ``i`` is ``DIR/<i // 1000>/<i>.jpg``,
  a hard link to one of ``--image-pool`` JPEGs of the label maps' size in ``DIR/.pool`` (a million images cost
  directory entries, not data).

Importable: :func:`write_synthetic_run`. Uses only code that the project had before issue 24 (the writer, the
segment encoders), so that ``finish_scale.py --repo`` can generate a run with an older checkout's own code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from pipeline.label.inputs import image_id
from pipeline.output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA
from pipeline.outputs import RunOutput
from pipeline.segments import encode_label_map_png, label_map_segments
from pipeline.vocabulary import Vocabulary, parse_vocabulary

WIDTH, HEIGHT = 640, 480
CLASSES = 20
SHAPES = 10
UNLABELED = 255
GT_FOLDER_IMAGES = 1000  # ground-truth files per sub-folder
NAMES = [
    "person", "car", "bicycle", "dog", "cat", "tree", "building", "road", "sky", "grass",
    "water", "boat", "chair", "table", "bottle", "cup", "bird", "horse", "sign", "fence",
]  # fmt: skip


@dataclass(frozen=True)
class Pool:
    """The distinct label maps that the rows repeat: per entry its PNG, segments and ground-truth PNG."""

    pngs: pa.Array
    segments: pa.Array
    ground_truth: list[bytes]


def vocabulary() -> Vocabulary:
    """The synthetic run's 20 classes."""
    return parse_vocabulary("".join(f"{name}\n" for name in NAMES[:CLASSES]), "synthetic")


def _shapes(rng: np.random.Generator, width: int, height: int) -> list[tuple[str, list[float], int]]:
    """``SHAPES`` shapes: (kind, corner coordinates, class index); an unlabeled one in four maps."""
    shapes = []
    for n in range(SHAPES):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.08, 0.35) * min(width, height)
        label = UNLABELED if n == SHAPES - 1 and rng.random() < 0.25 else int(rng.integers(0, CLASSES))
        if rng.random() < 0.4:
            shapes.append(("ellipse", [cx - radius, cy - radius * 0.7, cx + radius, cy + radius * 0.7], label))
            continue
        corners = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, corners))
        radii = radius * rng.uniform(0.5, 1.0, corners)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        shapes.append(("polygon", points.ravel().tolist(), label))
    return shapes


def _draw(shapes: list[tuple[str, list[float], int]], background: int, width: int, height: int) -> np.ndarray:
    """A label map of ``shapes`` drawn in order over ``background``."""
    image = Image.new("L", (width, height), background)
    draw = ImageDraw.Draw(image)
    for kind, points, label in shapes:
        if kind == "ellipse":
            draw.ellipse(points, fill=label)
        else:
            draw.polygon(points, fill=label)
    return np.asarray(image)


def make_pool(size: int, seed: int = 0, width: int = WIDTH, height: int = HEIGHT) -> Pool:
    """``size`` distinct label maps with their segments (pixel scores: smooth random fields) and ground truth."""
    rng = np.random.default_rng(seed)
    names = vocabulary()
    pngs, segments, ground_truth = [], [], []
    for _ in range(size):
        shapes = _shapes(rng, width, height)
        background = int(rng.integers(0, CLASSES))
        label_map = _draw(shapes, background, width, height)
        scores = rng.uniform(0.3, 0.95, CLASSES)[np.minimum(label_map, CLASSES - 1)]
        pngs.append(encode_label_map_png(label_map, ignore_value=UNLABELED))
        segments.append(label_map_segments(label_map, scores, names.names, names.category_ids, ignore_value=UNLABELED))
        moved = [
            (
                kind,
                (np.asarray(points) + rng.normal(0, 3, len(points))).tolist(),
                int(rng.integers(0, CLASSES)) if label != UNLABELED and rng.random() < 0.1 else label,
            )
            for kind, points, label in shapes
        ]
        gt = _draw(moved, background, width, height)
        ground_truth.append(encode_label_map_png(gt, ignore_value=UNLABELED))
    segment_type = PREDICTION_SCHEMA.field("segments").type
    return Pool(pa.array(pngs, pa.binary()), pa.array(segments, segment_type), ground_truth)


IMAGE_ROOT = "/synthetic/images"  # where images are said to be without --image-files


def image_path(index: int, root: str = IMAGE_ROOT) -> str:
    return f"{root}/{index // GT_FOLDER_IMAGES:04d}/{index:08d}.jpg"


def _failed(indices: np.ndarray, fraction: float) -> np.ndarray:
    """Which of the images ``indices`` are error rows: a fixed pseudo-random ``fraction`` of them."""
    return (indices * 2654435761 % 1000003) < fraction * 1000003


_POOL: list[Pool] = []  # a writer process's pool, set once by _use_pool


def _use_pool(pool: Pool) -> None:
    _POOL[:] = [pool]


def _write_shard(output: str, start: int, stop: int, failed: float, width: int, height: int, root: str) -> None:
    """Rows ``start..stop-1`` as one predictions file and one errors file, through ``RunOutput.write_tables``;
    image paths under ``root``."""
    pool = _POOL[0]
    indices = np.arange(start, stop)
    bad = _failed(indices, failed)
    good = indices[~bad]
    paths = [image_path(int(i), root) for i in good]
    entries = pa.array(good % len(pool.pngs))
    predictions = pa.table(
        {
            "image_path": pa.array(paths, pa.string()),
            "image_id": pa.array([image_id(p) for p in paths], pa.int64()),
            "width": pa.array(np.full(len(good), width), pa.int64()),
            "height": pa.array(np.full(len(good), height), pa.int64()),
            "label_map_png": pool.pngs.take(entries),
            "segments": pool.segments.take(entries),
            "image_fingerprint": pa.array([""] * len(good), pa.string()),
            "generation": pa.array(np.ones(len(good), np.int64)),
        },
        schema=PREDICTION_SCHEMA,
    )
    error_paths = [image_path(int(i), root) for i in indices[bad]]
    errors = pa.table(
        {
            "image_path": pa.array(error_paths, pa.string()),
            "error": pa.array(["cannot decode image: synthetic"] * len(error_paths), pa.string()),
            "generation": pa.array(np.ones(len(error_paths), np.int64)),
        },
        schema=ERROR_SCHEMA,
    )
    RunOutput(output).write_tables(predictions, errors)


def _shard_ranges(images: int, shard_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, images, shard_size):
        yield start, min(start + shard_size, images)


def _write_ground_truth(folder: Path, pool: Pool, images: int, failed: float) -> None:
    """A hard link per labeled image to its pool entry's ground-truth PNG (module docstring)."""
    hidden = folder / ".pool"
    hidden.mkdir(parents=True, exist_ok=True)
    for entry, data in enumerate(pool.ground_truth):
        (hidden / f"{entry}.png").write_bytes(data)
    indices = np.arange(images)
    for index in indices[~_failed(indices, failed)].tolist():
        target = folder / f"{index // GT_FOLDER_IMAGES:04d}" / f"{index:08d}.png"
        if index % GT_FOLDER_IMAGES == 0 or not target.parent.is_dir():
            target.parent.mkdir(exist_ok=True)
        os.link(hidden / f"{index % len(pool.ground_truth)}.png", target)


def _write_images(folder: Path, images: int, pool: int, width: int, height: int, seed: int) -> None:
    """``images`` image files (module docstring, ``--image-files``): ``pool`` JPEGs of smooth random colours, and
    a hard link to one of them per image."""
    rng = np.random.default_rng(seed)
    hidden = folder / ".pool"
    hidden.mkdir(parents=True)
    for entry in range(pool):
        corners = rng.integers(0, 256, (2, 2, 3)).astype(np.uint8)
        Image.fromarray(corners).resize((width, height), Image.BILINEAR).save(hidden / f"{entry}.jpg", quality=75)
    for index in range(images):
        target = Path(image_path(index, str(folder)))
        if index % GT_FOLDER_IMAGES == 0:
            target.parent.mkdir()
        os.link(hidden / f"{index % pool}.jpg", target)


def write_synthetic_run(
    out: str | os.PathLike[str],
    images: int,
    *,
    pool: int = 256,
    shard_size: int = 256,
    failed: float = 0.005,
    gt: str | os.PathLike[str] | None = None,
    seed: int = 0,
    workers: int | None = None,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    image_files: str | os.PathLike[str] | None = None,
    image_pool: int = 16,
) -> RunOutput:
    """Write a synthetic run of ``images`` inputs into the new folder ``out`` (module docstring); ``workers``
    processes write the files (default: one per CPU; 1: in this process); ``size`` is (width, height); with
    ``image_files`` (a new folder) the images exist there, hard links to ``image_pool`` JPEGs."""
    root = Path(out)
    root.mkdir(parents=True)
    width, height = size
    images_root = IMAGE_ROOT
    if image_files is not None:
        images_root = str(Path(image_files).resolve())
        _write_images(Path(images_root), images, image_pool, width, height, seed)
    listing = root.parent / f"{root.name}-inputs.txt"  # the run's input: its paths
    with open(listing, "w", encoding="utf-8") as handle:
        for start in range(0, images, 100_000):
            stop = min(start + 100_000, images)
            handle.write("".join(image_path(i, images_root) + "\n" for i in range(start, stop)))
    names = vocabulary()
    made = make_pool(pool, seed, width, height)
    output = RunOutput(root)
    output.write_manifest(
        {
            "status": "running",
            "generation": 1,
            "command": ["benchmarks/synthetic_run.py", str(root), "--images", str(images)],
            "identity": {"vocabulary": names.fingerprint, "model": "synthetic"},
            "options": {"shard_size": shard_size},
            "input": str(listing.resolve()),
            "vocabulary": names.to_json(),
            "counts": {"listed": images, "skipped": 0},
        }
    )
    ranges = list(_shard_ranges(images, shard_size))
    if workers == 1:
        _use_pool(made)
        for start, stop in ranges:
            _write_shard(str(root), start, stop, failed, width, height, images_root)
    else:
        with ProcessPoolExecutor(workers, initializer=_use_pool, initargs=(made,)) as executor:
            waiting = [
                executor.submit(_write_shard, str(root), start, stop, failed, width, height, images_root)
                for start, stop in ranges
            ]
            for future in waiting:
                future.result()
    if gt is not None:
        _write_ground_truth(Path(gt), made, images, failed)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the run's folder (new)")
    parser.add_argument("--images", type=int, required=True, help="inputs (labeled and failed)")
    parser.add_argument("--gt", help="write ground-truth PNGs into this new folder")
    parser.add_argument("--image-files", help="write the images into this new folder (hard links to a pool)")
    parser.add_argument("--image-pool", type=int, default=16, help="distinct JPEGs of --image-files (default 16)")
    parser.add_argument("--pool", type=int, default=256, help="distinct label maps (default 256)")
    parser.add_argument("--shard-size", type=int, default=256, help="rows per predictions file (default 256)")
    parser.add_argument("--failed", type=float, default=0.005, help="fraction of error rows (default 0.005)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, help="writer processes (default: one per CPU)")
    args = parser.parse_args()
    started = time.perf_counter()
    write_synthetic_run(
        args.out,
        args.images,
        pool=args.pool,
        shard_size=args.shard_size,
        failed=args.failed,
        gt=args.gt,
        seed=args.seed,
        workers=args.workers,
        image_files=args.image_files,
        image_pool=args.image_pool,
    )
    print(json.dumps({"images": args.images, "out": args.out, "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
