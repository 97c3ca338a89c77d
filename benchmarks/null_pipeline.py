"""The labeling pipeline alone, with ``--model null`` (a fixed label map, no model), beside a plain one-process
loop doing the same per-image work on the same files: images/s of the whole job (Ray start-up included) and
after its first result, at each batch size and number of CPUs, the ratio to the loop, the driver process's CPU
share, and the mean images per model call on a mix of aspect ratios.

    python benchmarks/null_pipeline.py --images 5000 --cpus 1 2 --batch-sizes 4 16 --write BENCHMARKS.md

The loop, in this process on one core: read the file, decode, resize to SAN's input size, the null model's
label map at the original size, its PNG, and the RLE and box of each class (the project's own functions for
each step, as the job's stages call them).

With ``--floor``, each run also has Ray Data's start beside it (``ray_data_floor.py``: the job's stage layout passing
one file's worth of inputs with no work, on a fresh Ray of the same CPUs): the seconds to its record, and the whole
job's ratio to the loop had the job started as fast, its images all passing at the job's rate after its first result.

With ``--by-process`` (Linux), each run also prints where all its CPU went: the driver's and every Ray process's
CPU seconds, by its title (``cpu_by_process.py``), per image and beside the loop's, over the whole job and after its
first result (the steady state: from the moment its first file is written, per image labeled after that moment).

Each number is printed with the load average of the machine when it was measured: on a shared machine,
rerun the printed command when it is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
from _report import emit
from cpu_by_process import ProcessCpu
from PIL import Image
from ray_data_floor import fresh_floor, start_local_ray

from pipeline.label.job import LabelOptions, run_label_job
from pipeline.output_shards import shard_files
from pipeline.outputs import RunOutput

ROOT = Path(__file__).resolve().parents[1]
# (width, height) of the mixed-aspect set: 4:3, 3:4, 16:9, 1:1, short side 480.
MIXED_SIZES = [(640, 480), (480, 640), (853, 480), (480, 480)]
LOOP_STEPS = ["read", "decode", "resize", "null model", "PNG", "RLE and boxes"]
DEFAULT_SHARD_SIZE = LabelOptions.shard_size  # the job's own default: rows per file


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


def plain_loop(images: Path, vocab: Path) -> dict[str, float]:
    """The job's per-image work in one loop, one image at a time: images/s and CPU ms per image. Each image is
    decoded and resized as the decode stage does it (``decode_with``, the resize in PIL, one array of the resized
    image, counted in "resize")."""
    from pipeline.label.images import decode_with
    from pipeline.label.inputs import read_bytes
    from pipeline.label.model_stage import NullPredictor
    from pipeline.segments import encode_label_map_png, label_map_segments
    from pipeline.vocabulary import load_vocabulary
    from san.settings import PredictionSettings

    vocabulary = load_vocabulary(str(vocab))
    resize = PredictionSettings().resize
    null = NullPredictor(len(vocabulary))
    files = sorted(images.iterdir())
    steps = dict.fromkeys(LOOP_STEPS, 0.0)
    decoded: dict[str, Any] = {}  # the CPU clock once decoded, and the decoded size

    def resized(image: Image.Image) -> np.ndarray:  # as the decode stage: resized in PIL, then one array
        decoded.update(clock=time.process_time(), size=(image.height, image.width))
        return np.asarray(resize.resize_image(image))

    wall, cpu = time.perf_counter(), time.process_time()
    for path in files:
        clock = time.process_time()
        data = read_bytes(str(path))
        clock = _add(steps, "read", clock)
        pixels = decode_with(data, resized)
        steps["decode"] += decoded["clock"] - clock
        clock = _add(steps, "resize", decoded["clock"])
        [labels] = null.predict([pixels], [decoded["size"]])
        clock = _add(steps, "null model", clock)
        encode_label_map_png(labels.label_map, ignore_value=labels.unlabeled)
        clock = _add(steps, "PNG", clock)
        label_map_segments(  # as the job's encode stage: each class's score from the model's class_scores
            labels.label_map,
            None,
            vocabulary.names,
            vocabulary.category_ids,
            ignore_value=labels.unlabeled,
            class_scores=labels.class_scores,
        )
        _add(steps, "RLE and boxes", clock)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    breakdown = {step: 1000 * seconds / len(files) for step, seconds in steps.items()}
    return {"images_per_second": len(files) / wall, "cpu_ms_per_image": 1000 * cpu / len(files), "steps": breakdown}


def _add(steps: dict[str, float], step: str, since: float) -> float:
    """Add the CPU seconds since ``since`` to ``steps[step]``; the CPU clock now."""
    now = time.process_time()
    steps[step] += now - since
    return now


def run(
    images: Path,
    output: Path,
    cpus: int,
    batch_size: int,
    by_process: float | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> dict[str, Any]:
    """The null-model job on a fresh local Ray of ``cpus`` CPUs: images/s (whole job, and after the first
    result), the driver's CPU seconds per wall second, images per model call, and the 1-minute load average
    at the end; with ``by_process`` (the loop's CPU ms per image), also ``processes``: the Markdown rows of
    :class:`ProcessCpu` (from Ray's start to the job's end, and after the first file written), and
    ``steady_cpu_ms``: all processes' CPU ms per image after the first file (None when it was the only one)."""
    if by_process is None:
        return _run(images, output, cpus, batch_size, shard_size)
    with ProcessCpu() as processes, FirstFileMark(output, processes) as first:
        result = _run(images, output, cpus, batch_size, shard_size)
    after = result["labeled"] - first.images_then if processes.after_mark else 0  # 0: one file, written at the end
    result["processes"] = processes.table(result["labeled"], by_process, images_after_mark=after or None)
    result["steady_cpu_ms"] = processes.ms_per_image_after_mark(after) if after else None
    return result


class FirstFileMark:
    """Context manager: a thread that marks ``processes`` (:meth:`ProcessCpu.mark`) as soon as the job writing to
    ``output`` has written its first predictions or errors file (polled every :data:`POLL_S`), and counts the
    images in the files there at that moment (``images_then``)."""

    POLL_S = 0.02

    def __init__(self, output: Path, processes: ProcessCpu):
        run = RunOutput(str(output))
        self.folders = [run.predictions_dir, run.errors_dir]
        self.processes = processes
        self.images_then = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="first-file-mark", daemon=True)

    def __enter__(self) -> FirstFileMark:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(self.POLL_S):
            files = [shard for folder in self.folders for shard in shard_files(folder)]
            if files:
                self.processes.mark()
                self.images_then = sum(pq.read_metadata(shard).num_rows for shard in files)
                return


def _run(images: Path, output: Path, cpus: int, batch_size: int, shard_size: int) -> dict[str, Any]:
    """:func:`run` less the CPU by process."""
    start_local_ray(cpus)
    options = LabelOptions(
        vocab=str(ROOT / "samples" / "vocab.txt"),
        input=str(images),
        output=str(output),
        model="null",
        batch_size=batch_size,
        shard_size=shard_size,
        progress=False,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        manifest = run_label_job(options)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        ray.shutdown()
    return {
        "labeled": manifest["counts"]["labeled"],
        "images_per_second": manifest["counts"]["labeled"] / wall,
        "steady_images_per_second": manifest["timings"]["images_per_second_after_first_result"],
        "first_result_seconds": manifest["timings"]["first_result_seconds"],
        "driver_cpu_share": cpu / wall,
        "images_per_model_call": manifest["timings"]["images_per_model_call"],
        "seconds": wall,
        "load": os.getloadavg()[0],
    }


def _ratio(steady_ms: float | None, loop_ms: float) -> str:
    """A run's CPU per image after its first result beside the loop's, in the table."""
    return f"{steady_ms / loop_ms:.2f}x" if steady_ms else "n/a: one file, written at the end"


def _floor_cells(result: dict[str, Any], images: int, loop_rate: float) -> str:
    """A run's columns on Ray Data's start: its record of one file (load average), and the whole job's ratio to the
    loop had the job started as fast (``images`` passing at the run's rate after its first result)."""
    floor = result["floor"]
    best = images / (floor["first_record"] + images / result["steady_images_per_second"])
    return f" {floor['first_record']:.1f} s (load {floor['load']:.2f}) | {best / loop_rate:.2f}x |"


def _fill_line(fill: dict[str, Any], images: int, batch_size: int) -> list[str]:
    """The report's line on the batch-fill run (``images`` of mixed aspect ratios, at ``batch_size``)."""
    calls = fill["images_per_model_call"]
    return [
        f"Batch fill: {images} JPEGs cycling 4:3, 3:4, 16:9 and 1:1 (short side 480), batch {batch_size}: {calls:.2f} "
        f"images per model call ({calls / batch_size:.0%}; load average {fill['load']:.2f}).",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="640x480 JPEGs for the throughput runs")
    parser.add_argument(
        "--mixed-images", type=int, default=1024, help="JPEGs of mixed aspect ratios (0: no batch-fill run)"
    )
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2], help="Ray CPUs of each throughput run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="rows per file of the runs (the job's default)"
    )
    parser.add_argument("--write", type=Path, help="append the tables to this Markdown file")
    parser.add_argument(
        "--by-process", action="store_true", help="also a table per run of the CPU of each Ray process (Linux)"
    )
    parser.add_argument(
        "--floor", action="store_true", help="also Ray Data's start beside each run (ray_data_floor.py)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file (benchmarks/gpu_checks.sh)")
    args = parser.parse_args()
    from _report import cpu_description

    command = shlex.join(["python", *sys.argv])
    rows, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        images = write_jpegs(Path(tmp) / "photos", args.images, [(640, 480)])
        loop = plain_loop(images, ROOT / "samples" / "vocab.txt")
        by_process = loop["cpu_ms_per_image"] if args.by_process else None
        for batch_size in args.batch_sizes:
            for cpus in args.cpus:
                output = Path(tmp) / f"out-{cpus}-{batch_size}"
                result = run(images, output, cpus, batch_size, by_process, args.shard_size)
                if args.floor:
                    result["floor"] = fresh_floor(args.shard_size, cpus, batch_size, args.shard_size)
                rows.append((batch_size, cpus, result))
        fill = None
        if args.mixed_images:
            mixed = write_jpegs(Path(tmp) / "mixed", args.mixed_images, MIXED_SIZES)
            fill = run(mixed, Path(tmp) / "out-mixed", max(args.cpus), max(args.batch_sizes))
    rate = loop["images_per_second"]
    table = [
        f"### Labeling pipeline with `--model null` beside a plain loop ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"{args.images} JPEGs of 640x480, local Ray; CPU: {cpu_description()}, {os.cpu_count()} CPUs; load average "
        f"before: {load_before:.2f}. Command: `{command}`",
        "",
        f"Plain loop, one process on one core: {rate:.1f} img/s, {loop['cpu_ms_per_image']:.1f} ms of CPU per image ("
        + ", ".join(f"{step} {ms:.2f}" for step, ms in loop["steps"].items())
        + " ms).",
        "",
        "| batch | Ray CPUs | img/s, whole job | after first result | whole job / loop | CPU per image / loop's "
        + ("| CPU per image after first result, all processes / loop's " if args.by_process else "")
        + "| first result | driver CPU share (of one core) | load average |"
        + (" Ray Data's start: one file, no work | whole job / loop, starting as fast |" if args.floor else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        + (" --- |" if args.by_process else "")
        + (" --- | --- |" if args.floor else ""),
        *[
            f"| {batch} | {cpus} | {r['images_per_second']:.1f} | {r['steady_images_per_second']:.1f} | "
            f"{r['images_per_second'] / rate:.2f}x | {cpus * rate / r['images_per_second']:.2f}x | "
            + (f"{_ratio(r['steady_cpu_ms'], loop['cpu_ms_per_image'])} | " if args.by_process else "")
            + f"{r['first_result_seconds']:.1f} s | {r['driver_cpu_share']:.1%} | {r['load']:.2f} |"
            + (_floor_cells(r, args.images, rate) if args.floor else "")
            for batch, cpus, r in rows
        ],
        "",
        *(_fill_line(fill, args.mixed_images, max(args.batch_sizes)) if fill else []),
    ]
    for batch, cpus, r in rows if args.by_process else []:
        table += [
            f"CPU by process, batch {batch}, {cpus} Ray CPUs, from Ray's start to the job's end:",
            "",
            *r["processes"],
            "",
        ]
    emit(table, args.write)
    if args.json:
        runs = [{"batch": batch, "cpus": cpus, **result} for batch, cpus, result in rows]
        args.json.write_text(json.dumps({"loop": loop, "runs": runs, "fill": fill}))


if __name__ == "__main__":
    main()
