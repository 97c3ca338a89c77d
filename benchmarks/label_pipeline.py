"""Throughput of the Ray labeling pipeline against a plain loop over the same model and images.

Both sides decode the same files, run the same randomly initialised model (same torch threads on CPU,
same dtype on GPU), and encode the same outputs; the ratio shows what Ray Data costs (or saves) per
image. On a GPU the peak GPU memory of each side is reported too (``nvidia-smi``, every 0.2 s).

    python benchmarks/label_pipeline.py --images 50 --model san_vit_b_16 --write BENCHMARKS.md
    python benchmarks/label_pipeline.py --images 2000 --model san_vit_b_16 --device cuda --dtype bf16 \
        --batch-size 16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import ray
import torch
from _report import emit
from PIL import Image

import san
from pipeline.label.images import read_image_file
from pipeline.label.job import LabelOptions, run_label_job
from pipeline.segments import encode_label_map_png, label_map_segments
from pipeline.vocabulary import load_vocabulary
from san.predictor import Predictor
from san.settings import PredictionSettings

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int, short_side: int) -> list[Path]:
    """4:3 images with the short side at ``short_side`` (crops of the sample photos, resized)."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted((ROOT / "samples" / "images").iterdir())
    paths = []
    for i in range(count):
        photo = Image.open(photos[i % len(photos)]).convert("RGB")
        image = photo.resize((short_side * 4 // 3, short_side), Image.BILINEAR)
        pixels = np.asarray(image).copy()
        pixels[i % short_side] = 255  # make every image distinct
        path = folder / f"bench_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=92)
        paths.append(path)
    return paths


@contextlib.contextmanager
def gpu_memory_peak() -> Iterator[list[float]]:
    """Within the block, sample the GPU memory in use (all processes, ``nvidia-smi``) every 0.2 s; the yielded
    list holds the peak in GiB after the block (empty without a GPU)."""
    peak: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        while not stop.is_set():
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                used = max(float(v) for v in subprocess.run(query, capture_output=True, text=True).stdout.split())
                peak[:] = [max(peak[0] if peak else 0.0, used / 1024)]
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def plain_loop(
    paths: list[Path], preset: str, vocab_path: Path, threads: int, batch_size: int, device: str, dtype: str
) -> float:
    torch.set_num_threads(threads)
    vocabulary = load_vocabulary(vocab_path)
    torch.manual_seed(0)
    predictor = Predictor(
        san.build_san(preset),
        vocabulary.prompts,
        vocabulary.prompt_to_class,
        device=device,
        settings=PredictionSettings(dtype=dtype, batch_size=batch_size),
    )
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        images = [read_image_file(p) for p in paths[start : start + batch_size]]
        for prediction in predictor.predict(images):
            encode_label_map_png(prediction.label_map, ignore_value=prediction.unlabeled)
            label_map_segments(  # as the job's encode stage: each class's score from the model's class_scores
                prediction.label_map,
                None,
                vocabulary.names,
                vocabulary.category_ids,
                prediction.unlabeled,
                class_scores=prediction.class_scores,
            )
    return len(paths) / (time.perf_counter() - started)


def pipeline_run(
    folder: Path, preset: str, vocab_path: Path, output: Path, batch_size: int, device: str, dtype: str
) -> tuple[float, float, float]:
    """images/s over the whole job (Ray start-up included), from the first request for results (actor
    start-up and model load included), and after the first result arrived (the pool running)."""
    options = LabelOptions(
        vocab=str(vocab_path),
        input=str(folder),
        output=str(output),
        model=f"random:{preset}",
        batch_size=batch_size,
        other="none",  # the plain loop's work: the vocabulary's classes only
        gpus_per_worker=1.0 if device == "cuda" else 0.0,
        dtype=dtype,
        progress=False,
    )
    started = time.perf_counter()
    manifest = run_label_job(options)
    elapsed = time.perf_counter() - started
    timings = manifest["timings"]
    return (
        manifest["counts"]["labeled"] / elapsed,
        timings["images_per_second"],
        timings["images_per_second_after_first_result"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--model", nargs="+", default=["san_vit_b_16", "san_tiny"], help="presets (random weights)")
    parser.add_argument("--short-side", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="reduced: GPU only")
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    vocab = ROOT / "samples" / "vocab.txt"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp) / "images", args.images, args.short_side)
        for preset in args.model:
            with gpu_memory_peak() as loop_memory:
                loop = plain_loop(paths, preset, vocab, threads, args.batch_size, args.device, args.dtype)
            torch.cuda.empty_cache()
            out = Path(tmp) / f"out-{preset}"
            with gpu_memory_peak() as job_memory:
                whole, streaming, steady = pipeline_run(
                    Path(tmp) / "images", preset, vocab, out, args.batch_size, args.device, args.dtype
                )
            shutil.rmtree(out)
            memory = f"{loop_memory[0]:.2f} / {job_memory[0]:.2f}" if loop_memory and job_memory else "-"
            rows.append((preset, loop, whole, streaming, steady, streaming / loop, steady / loop, memory))
    ray.shutdown()
    table = [
        f"### Labeling pipeline vs plain loop ({time.strftime('%Y-%m-%d')})",
        "",
        f"{args.images} JPEG images {args.short_side * 4 // 3}x{args.short_side} (4:3, short side {args.short_side}), "
        f"batch {args.batch_size}, random weights, {args.device} {args.dtype} ({_device_name(args.device)}, "
        f"{threads} CPUs, torch {torch.__version__}, {threads} threads in the loop); load average "
        f"{os.getloadavg()[0]:.2f}.",
        "",
        "| model | loop img/s | pipeline img/s: whole job | streaming | steady | streaming / loop | steady / loop "
        "| peak GPU GiB: loop / job |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {m} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} | {r:.2f} | {q:.2f} | {g} |"
            for m, a, b, c, d, r, q, g in rows
        ],
        "",
        "The loop's model is built before the clock starts. 'whole job' includes starting Ray, listing inputs "
        "and the final merge; 'streaming' counts from the first request for results (worker start-up, model "
        "build and text embeddings included) to the last image; 'steady' from the first result to the last.",
        "",
    ]
    emit(table, args.write)


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
