"""Inference speed and memory of the SAN model (random weights), as the labeling workers run it.

For each size (640x640, and 640 short side on a 4:3 image) and batch size (1, 8): images/s of
``model.predict_scores`` (the whole forward plus post-processing to class scores at the image size),
and peak memory: the process's resident memory on CPU, ``torch.cuda.max_memory_allocated`` on GPU.
Text embeddings are timed apart (they are computed once per vocabulary and cached). Each
configuration runs in a fresh subprocess so that peak memory is its own.

    python benchmarks/inference.py --write BENCHMARKS.md
    python benchmarks/inference.py --devices cuda --write BENCHMARKS.md   # GPU only
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _report import emit

import san

VOCABULARY = ["person", "cat", "coffee cup", "rocket", "sky", "flag", "wood", "smoke", "grass", "road"]
SIZES = {"640x640": (640, 640), "640x853 (4:3)": (640, 853)}


def measure(preset: str, size: tuple[int, int], batch: int, device: str, dtype: str, repeats: int) -> dict:
    """One configuration, in this process: returns timings and peak memory."""
    torch.manual_seed(0)
    model = san.build_san(preset).to(device).eval()
    started = time.perf_counter()
    with torch.inference_mode():
        model.text_classifier(VOCABULARY)
    text_seconds = time.perf_counter() - started
    images = [torch.randint(0, 256, (3, *size), dtype=torch.uint8, device=device) for _ in range(batch)]
    autocast = torch.autocast(device, dtype=getattr(torch, dtype)) if dtype != "float32" else None

    def run() -> None:
        if autocast is None:
            model.predict_scores(images, VOCABULARY, batch_size=batch)
        else:
            with autocast:
                model.predict_scores(images, VOCABULARY, batch_size=batch)
        if device == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    elapsed = time.perf_counter() - started
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "images_per_second": batch * repeats / elapsed,
        "seconds_per_batch": elapsed / repeats,
        "text_embedding_seconds": text_seconds,
        "peak_memory_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="san_vit_b_16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
        help="where to measure (default: the CPU, and the GPU when there is one)",
    )
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file (benchmarks/gpu_checks.sh)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration (JSON) and print JSON
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(measure(**spec)))
        return
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: torch sees no CUDA GPU")
    configs = [("cpu", "float32")] if "cpu" in args.devices else []
    if "cuda" in args.devices:
        configs += [("cuda", "float32"), ("cuda", "bfloat16"), ("cuda", "float16")]
    rows = []
    for device, dtype in configs:
        for name, size in SIZES.items():
            for batch in args.batches:
                spec = {"preset": args.preset, "size": size, "batch": batch, "device": device, "dtype": dtype}
                spec["repeats"] = args.repeats if device == "cpu" else 10
                out = subprocess.run(
                    [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True, check=True
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append((device, dtype, name, batch, result))
                print(device, dtype, name, batch, result, flush=True)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    lines = [
        f"### SAN inference, {args.preset}, random weights ({time.strftime('%Y-%m-%d')})",
        "",
        f"CPU: {platform.machine()}, {torch.get_num_threads()} torch threads; GPU: {gpu}; "
        f"torch {torch.__version__}. `predict_scores` = normalise, pad, CLIP, side adapter, recognition head, "
        "class scores at the image size. Peak memory: resident set of the process (CPU) or "
        "`torch.cuda.max_memory_allocated` (GPU).",
        "",
        "| device | dtype | image | batch | images/s | s/batch | peak memory MiB | text embeddings s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for device, dtype, name, batch, r in rows:
        lines.append(
            f"| {device} | {dtype} | {name} | {batch} | {r['images_per_second']:.3f} | {r['seconds_per_batch']:.3f} "
            f"| {r['peak_memory_mib']:.0f} | {r['text_embedding_seconds']:.3f} |"
        )
    emit(lines, args.write)
    if args.json:
        keys = ("device", "dtype", "image", "batch")
        args.json.write_text(json.dumps([{**dict(zip(keys, row[:4], strict=True)), **row[4]} for row in rows]))


if __name__ == "__main__":
    main()
