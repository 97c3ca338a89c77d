"""How closely bf16 on CPU labels real photos like fp32: label-map agreement per photo (scikit-image's
photos), the worst photo, and the seconds of each precision.

Each model runs through the labeling workers' ``Predictor`` twice: fp32, and ``dtype="bf16"`` on CPU
(the image trunk cast to bf16, see ``SAN.cast_image_trunk``). Models: ``parity`` (the tiny SAN of
``tests/data/parity`` in the official release layout) and ``vit_b_16`` (ViT-B/16 shape, random weights,
seed 0). On a CPU without bf16 matrix units the bf16 run is emulated: the agreement still holds, the
seconds do not say anything about a CPU with AMX.

    python benchmarks/cpu_bf16_agreement.py --models parity vit_b_16 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from _report import emit
from skimage import data

import san
from san.precision import cpu_bf16_units
from san.predictor import Predictor
from san.settings import PredictionSettings

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "stereo_motorcycle")
VOCABULARY = ["person", "cat", "coffee cup", "rocket", "sky", "flag", "wood", "smoke", "grass", "road"]
PARITY = Path(__file__).resolve().parents[1] / "tests" / "data" / "parity"


def build(name: str) -> san.SAN:
    if name == "parity":
        return san.load_official(PARITY / "checkpoint.pth", PARITY / "config.json")
    torch.manual_seed(0)
    return san.build_san(f"san_{name}").eval()


def photo(name: str) -> np.ndarray:
    image = getattr(data, name)()
    return np.ascontiguousarray(image[0] if isinstance(image, tuple) else image)  # stereo pairs: the left view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=["parity", "vit_b_16"], default=["parity", "vit_b_16"])
    parser.add_argument("--photos", nargs="+", choices=PHOTOS, default=list(PHOTOS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model_name in args.models:
        fp32_model = build(model_name)
        fp32 = Predictor(fp32_model, VOCABULARY, device="cpu")
        bf16 = Predictor(copy.deepcopy(fp32_model), VOCABULARY, device="cpu", settings=PredictionSettings(dtype="bf16"))
        for photo_name in args.photos:
            image = photo(photo_name)
            started = time.perf_counter()
            reference = fp32.class_scores([image])[0]
            middle = time.perf_counter()
            reduced = bf16.class_scores([image])[0]
            seconds = (middle - started, time.perf_counter() - middle)
            labels = reference.argmax(0)
            agreement = (reduced.argmax(0) == labels).double().mean().item()
            majority = labels.flatten().bincount().max().item() / labels.numel()
            difference = (reduced - reference).abs().max().item() / max(1.0, reference.abs().max().item())
            rows.append((model_name, photo_name, image.shape, agreement, majority, difference, *seconds))
            print(rows[-1], flush=True)
    lines = [
        f"### bf16 on CPU against fp32: label maps of real photos ({time.strftime('%Y-%m-%d')})",
        "",
        f"`Predictor(..., device='cpu', dtype='bf16')` against fp32, {args.threads} threads, "
        f"{len(VOCABULARY)} classes, "
        f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()} with bf16 units: "
        f"{', '.join(cpu_bf16_units()) or 'none (bf16 emulated)'}; load average {os.getloadavg()[0]:.2f} at the end. "
        "Label map = argmax of the class scores at the photo's size; 'largest class' is the share of the fp32 "
        "map's most frequent class (near 100% the agreement says little); score difference is relative to the "
        "largest fp32 score.",
        "",
        "| model | photo | size | label map = fp32's | largest class | max score difference | fp32 s | bf16 s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model_name, photo_name, shape, agreement, majority, difference, fp32_s, bf16_s in rows:
        lines.append(
            f"| {model_name} | {photo_name} | {shape[1]}x{shape[0]} | {agreement:.3%} | {majority:.1%} "
            f"| {difference:.1e} | {fp32_s:.2f} | {bf16_s:.2f} |"
        )
    for model_name in args.models:
        worst = min((r for r in rows if r[0] == model_name), key=lambda r: r[3])
        lines.append(f"| {model_name} | worst: {worst[1]} | | {worst[3]:.3%} | | | | |")
    emit(lines, args.write)


if __name__ == "__main__":
    main()
