"""The label quality controls on the sample photos: the share of pixels labeled and the classes, and the time
per image, with ``--other none|coco-stuff|coco-all`` and with ``--tta`` (the official 12 passes).

Runs the labeling job's ``Predictor`` (no Ray) on ``samples/images`` with ``samples/vocab.txt``. The default
model is the smoke-test model (``random:san_tiny``, seed 0, as ``jobs/label.py --smoke-test`` builds it):
its labels are meaningless, the table shows what each setting does to them and what it costs.

    python benchmarks/label_quality.py --write BENCHMARKS.md
    python benchmarks/label_quality.py --model /path/to/san_vit_b_16.pth --config san_vit_b_16
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from _report import emit

import san
from pipeline.label.images import read_image_file
from pipeline.vocabulary import load_vocabulary
from san.other_names import read_other_names
from san.predictor import Predictor
from san.settings import PredictionSettings, TestTimeAugmentation

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "--other none": {"other": "none", "tta": False},
    "--other coco-stuff": {"other": "coco-stuff", "tta": False},
    "--other coco-all": {"other": "coco-all", "tta": False},
    "--other none --tta": {"other": "none", "tta": True},
}


def load(model: str, config: str | None) -> san.SAN:
    """``random:<preset>`` (seed 0, as the labeling job's smoke test), or a checkpoint."""
    if model.startswith("random:"):
        torch.manual_seed(0)
        return san.build_san(model.removeprefix("random:"))
    return san.load_model(model, config)


def describe(label_map: np.ndarray, unlabeled: int, names: tuple[str, ...]) -> tuple[float, str]:
    """Percent of pixels labeled, and the classes present with their share of the image, largest first."""
    classes, counts = np.unique(label_map[label_map != unlabeled], return_counts=True)
    shares = sorted(zip(counts, classes, strict=True), reverse=True)
    text = ", ".join(f"{names[c]} {100 * n / label_map.size:.0f}%" for n, c in shares) or "-"
    return 100 * float((label_map != unlabeled).mean()), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:san_tiny")
    parser.add_argument("--config", default=None)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    vocabulary = load_vocabulary(ROOT / "samples" / "vocab.txt")
    photos = sorted((ROOT / "samples" / "images").iterdir())
    model = load(args.model, args.config)
    rows = []
    for setting in args.settings:
        other, tta = SETTINGS[setting]["other"], SETTINGS[setting]["tta"]
        predictor = Predictor(
            model,
            vocabulary.prompts,
            vocabulary.prompt_to_class,
            device="cpu",
            settings=PredictionSettings(other=read_other_names(other), tta=TestTimeAugmentation() if tta else None),
        )
        predictor.predict([np.zeros((64, 64, 3), np.uint8)])  # warm-up: first-call overheads
        for photo in photos:
            image = read_image_file(str(photo))
            started = time.perf_counter()
            prediction = predictor.predict([image])[0]
            seconds = time.perf_counter() - started
            labeled, classes = describe(prediction.label_map, prediction.unlabeled, vocabulary.names)
            size = f"{image.shape[1]}x{image.shape[0]}"
            rows.append(f"| {setting} | {photo.name} ({size}) | {seconds:.2f} | {labeled:.1f} | {classes} |")
    load_average = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"### Label quality controls on the sample photos ({time.strftime('%Y-%m-%d')})",
        "",
        f"Model {args.model}; `samples/vocab.txt`; `Predictor.predict` one image at a time, CPU {platform.machine()} "
        f"with {torch.get_num_threads()} threads, torch {torch.__version__}; load average {load_average} "
        "(1, 5, 15 min) when the table was written. Labeled: percent of the image's pixels given a class.",
        "",
        "| setting | image | seconds | labeled % | classes (share of the image) |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
