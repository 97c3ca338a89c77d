"""The labeling pipeline alone, with ``--model null`` (a fixed label map, no model): images/s of the whole
job (Ray start-up included), the driver process's CPU share, scaling from 1 to 2 CPUs, and the mean images
per model call on a mix of aspect ratios.

    python benchmarks/null_pipeline.py --images 5000 --cpus 1 2 --write BENCHMARKS.md

Each number is printed with the load average of the machine when it was measured: on a shared machine,
rerun the printed command when it is quiet.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from _report import emit
from PIL import Image

from pipeline.label.job import LabelOptions, run_label_job

ROOT = Path(__file__).resolve().parents[1]
# (width, height) of the mixed-aspect set: 4:3, 3:4, 16:9, 1:1, short side 480.
MIXED_SIZES = [(640, 480), (480, 640), (853, 480), (480, 480)]


def write_jpegs(folder: Path, count: int, sizes: list[tuple[int, int]]) -> Path:
    """``count`` distinct JPEGs (quality 90) cycling through ``sizes``, cropped from the sample photos."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((ROOT / "samples" / "images").iterdir())]
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        photo = Image.fromarray(photos[i % len(photos)]).resize((width, height), Image.BILINEAR)
        pixels = np.asarray(photo).copy()
        pixels[i % height, :, i % 3] = 255  # every image distinct
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def run(images: Path, output: Path, cpus: int, batch_size: int) -> dict[str, float]:
    """The null-model job on a fresh local Ray of ``cpus`` CPUs: images/s (whole job), the driver's CPU
    seconds per wall second, images per model call, and the 1-minute load average at the end."""
    ray.init(address="local", num_cpus=cpus, logging_level="ERROR")
    options = LabelOptions(
        vocab=str(ROOT / "samples" / "vocab.txt"),
        input=str(images),
        output=str(output),
        model="null",
        batch_size=batch_size,
        progress=False,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        manifest = run_label_job(options)
    finally:
        ray.shutdown()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "images_per_second": manifest["counts"]["labeled"] / wall,
        "driver_cpu_share": cpu / wall,
        "images_per_model_call": manifest["timings"]["images_per_model_call"],
        "seconds": wall,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="640x480 JPEGs for the throughput runs")
    parser.add_argument("--mixed-images", type=int, default=1024, help="JPEGs of mixed aspect ratios")
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2], help="Ray CPUs of each throughput run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--write", type=Path, help="append the tables to this Markdown file")
    args = parser.parse_args()
    command = shlex.join(["python", *sys.argv])
    rows, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        images = write_jpegs(Path(tmp) / "photos", args.images, [(640, 480)])
        for cpus in args.cpus:
            rows.append((cpus, run(images, Path(tmp) / f"out-{cpus}", cpus, args.batch_size)))
        mixed = write_jpegs(Path(tmp) / "mixed", args.mixed_images, MIXED_SIZES)
        fill = run(mixed, Path(tmp) / "out-mixed", max(args.cpus), args.batch_size)
    base = rows[0][1]["images_per_second"]
    table = [
        f"### Labeling pipeline with `--model null` ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"{args.images} JPEGs of 640x480, batch {args.batch_size}, local Ray; load average before: "
        f"{load_before:.2f}. Command: `{command}`",
        "",
        "| Ray CPUs | img/s, whole job | vs first row | driver CPU share (of one core) | seconds | load average |",
        "| --- | --- | --- | --- | --- | --- |",
        *[
            f"| {cpus} | {r['images_per_second']:.1f} | {r['images_per_second'] / base:.2f}x | "
            f"{r['driver_cpu_share']:.1%} | {r['seconds']:.1f} | {r['load']:.2f} |"
            for cpus, r in rows
        ],
        "",
        f"Batch fill: {args.mixed_images} JPEGs cycling 4:3, 3:4, 16:9 and 1:1 (short side 480), batch "
        f"{args.batch_size}: {fill['images_per_model_call']:.2f} images per model call "
        f"({fill['images_per_model_call'] / args.batch_size:.0%} of {args.batch_size}; load average "
        f"{fill['load']:.2f}).",
        "",
    ]
    emit(table, args.write)


if __name__ == "__main__":
    main()
