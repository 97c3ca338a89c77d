"""Peak memory and time of turning SAN's outputs into a label map at a large original size.

A labeling worker gets the image resized to 640 on the short side and maps the result back to the
original size. "all class scores" holds every class's score map at that size
(``Predictor.class_scores`` then the max); "best class" is what ``Predictor.predict`` does
(``SAN.predict_best``: the best class in bands of output columns); "best class, PNG and segments" adds
the rest of a labeling worker's work on the image (``ModelStage``: the label map PNG and the per-class
COCO segments). Each row runs in a fresh subprocess so that its peak resident memory is its own.

    python benchmarks/postprocess_memory.py --write BENCHMARKS.md
    python benchmarks/postprocess_memory.py --size 9000 12000 --classes 10 --methods predict worker
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

import numpy as np
import torch
from _report import emit
from PIL import Image

import san
from pipeline.segments import encode_label_map_png, label_map_segments
from san.predictor import Predictor

METHODS = {"class_scores": "all class scores", "predict": "best class", "worker": "best class, PNG and segments"}


def measure(preset: str, classes: int, output_size: tuple[int, int], method: str) -> dict:
    """One configuration, in this process: seconds and peak resident memory (GiB)."""
    torch.manual_seed(0)
    predictor = Predictor(san.build_san(preset), [f"class {i}" for i in range(classes)], device="cpu")
    height, width = output_size
    model_height, model_width = predictor.resize.output_size(height, width)  # as the decode stage resizes
    image = np.asarray(Image.new("RGB", (model_width, model_height), (90, 140, 200)))
    started = time.perf_counter()
    if method == "class_scores":
        predictor.class_scores([image], original_sizes=[output_size])[0].max(dim=0)
    else:
        [prediction] = predictor.predict([image], original_sizes=[output_size])
        if method == "worker":
            encode_label_map_png(prediction.label_map, ignore_value=prediction.unlabeled)
            names = [f"class {i}" for i in range(classes)]
            label_map_segments(
                prediction.label_map, None, names, range(1, classes + 1), 255, class_scores=prediction.class_scores
            )
    return {
        "seconds": time.perf_counter() - started,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="san_tiny", help="the model (post-processing cost hardly depends on it)")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--size", type=int, nargs=2, default=[6000, 8000], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["class_scores", "predict"])
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration (JSON) and print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    rows = []
    for classes in args.classes:
        for method in args.methods:
            name = METHODS[method]
            spec = {"preset": args.preset, "classes": classes, "output_size": args.size, "method": method}
            out = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True, check=True
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((classes, name, result))
            print(classes, name, result, flush=True)
    height, width = args.size
    lines = [
        f"### Label map at a large original size ({time.strftime('%Y-%m-%d')})",
        "",
        f"{args.preset}, random weights; a 640-short-side model input mapped back to {width}x{height}; CPU "
        f"{platform.machine()} with {torch.get_num_threads()} threads, torch {torch.__version__}. Peak memory: "
        "resident set of the process, model included.",
        "",
        "| classes | method | seconds | peak memory GiB |",
        "| --- | --- | --- | --- |",
        *[f"| {c} | {name} | {r['seconds']:.1f} | {r['peak_gib']:.2f} |" for c, name, r in rows],
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
