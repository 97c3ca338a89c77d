"""Relabeling against labeling: images/s of ``jobs/label.py --keep-regions fp32`` and of ``jobs/relabel.py`` over the
same photos, each a whole job in its own process with its own local Ray (as a user runs them); the regions' storage
per image (fp32 and fp16, the Parquet files as written); and how the labels relabeled from fp32 and from fp16
regions agree with a fresh ``jobs/label.py`` run with the new vocabulary (share of equal pixels).

    python benchmarks/relabel.py --images 200 --write BENCHMARKS.md
    python benchmarks/relabel.py --images 4 --model random:san_tiny   # a check that it runs

Five jobs run one after the other on the same 640x480 JPEGs (crops of the sample photos): label with the sample
vocabulary and ``--keep-regions fp32``, the same with ``fp16``, relabel each with a new vocabulary (synonyms, two
new classes, a class's own minimum score), and a fresh label run with the new vocabulary (no regions). A model with
random weights labels most photos with few classes (and, with ``--other`` names, leaves nearly every pixel to
one of them: hence ``--other none`` by default); ``--model`` takes any ``jobs/label.py --model`` (e.g. the
released ``san_vit_b_16``) for agreement numbers on real masks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import cpu_description, emit
from label_pipeline import write_images

from pipeline.outputs import RunOutput
from pipeline.segments import decode_label_map_png

ROOT = Path(__file__).resolve().parents[1]
NEW_VOCABULARY = """\
person: astronaut, woman, man
cat: kitten
coffee cup: mug @ 0.3
rocket
sky
flag
wood: table
smoke
tree
forklift
"""


def run_job(script: str, *args: str) -> float:
    """Seconds that ``python jobs/<script> args`` took, start to exit (its own local Ray)."""
    env = {**os.environ, "RAY_ADDRESS": "local"}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, f"jobs/{script}", *args, "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"jobs/{script} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return elapsed


def label_maps(run: Path) -> dict[str, tuple[bytes, list]]:
    """Each image's label-map PNG bytes and segments in ``run``."""
    rows = RunOutput(run).read_predictions(["image_path", "label_map_png", "segments"]).to_pylist()
    return {row["image_path"]: (row["label_map_png"], row["segments"]) for row in rows}


def agreement(ours: dict[str, tuple[bytes, list]], fresh: dict[str, tuple[bytes, list]]) -> tuple[float, int, float]:
    """Share of pixels with the fresh run's label, images whose label map and segments are the fresh run's, and the
    fresh run's share of labeled pixels."""
    equal = total = labeled = identical = 0
    for path, (png, segments) in fresh.items():
        theirs, mine = decode_label_map_png(png), decode_label_map_png(ours[path][0])
        equal += int((theirs == mine).sum())
        total += theirs.size
        labeled += int((theirs != np.iinfo(theirs.dtype).max).sum())
        identical += int(ours[path] == (png, segments))
    return equal / total, identical, labeled / total


def regions_bytes(run: Path) -> int:
    return sum(f.stat().st_size for f in (run / "regions").glob("part-*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="random:san_vit_b_16", help="as jobs/label.py --model")
    parser.add_argument("--config", help="as jobs/label.py --config")
    parser.add_argument("--short-side", type=int, default=480, help="images are 4:3: 640x480 at 480")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--other", default="none", help="as jobs/label.py --other (none: random weights leave every pixel to one)"
    )
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    model = ["--model", args.model, *(["--config", args.config] if args.config else [])]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images", args.images, args.short_side)
        (root / "new.txt").write_text(NEW_VOCABULARY)
        source = ["--vocab", str(ROOT / "samples" / "vocab.txt"), "--input", str(root / "images")]
        label = [*model, "--batch-size", str(args.batch_size), "--other", args.other]
        seconds = {}
        for dtype in ("fp32", "fp16"):
            out = str(root / f"label-{dtype}")
            seconds[f"label --keep-regions {dtype}"] = run_job(
                "label.py", *source, "--output", out, *label, "--keep-regions", dtype
            )
        for dtype in ("fp32", "fp16"):
            out = str(root / f"relabel-{dtype}")
            seconds[f"relabel ({dtype} regions)"] = run_job(
                "relabel.py", str(root / f"label-{dtype}"), "--vocab", str(root / "new.txt"), "--output", out
            )
        fresh_args = ["--vocab", str(root / "new.txt"), "--input", str(root / "images"), *label]
        seconds["label, new vocabulary (no regions)"] = run_job(
            "label.py", *fresh_args, "--output", str(root / "fresh")
        )
        fresh = label_maps(root / "fresh")
        count = len(fresh)
        storage = {dtype: regions_bytes(root / f"label-{dtype}") / count for dtype in ("fp32", "fp16")}
        agree = {dtype: agreement(label_maps(root / f"relabel-{dtype}"), fresh) for dtype in ("fp32", "fp16")}
        threads = json.loads((root / "label-fp32" / "manifest.json").read_text())["resources"]["threads_per_worker"]
    rate = {job: count / s for job, s in seconds.items()}
    speedup = rate["relabel (fp32 regions)"] / rate["label --keep-regions fp32"]
    table = [
        f"### Relabeling vs labeling ({time.strftime('%Y-%m-%d')})",
        "",
        f"{count} JPEG images {args.short_side * 4 // 3}x{args.short_side}, model {args.model}, --other {args.other}, "
        "CPU "
        f"({cpu_description()}, {os.cpu_count()} CPUs, {threads} torch threads per label worker, torch "
        f"{torch.__version__}); whole jobs, each in its own process with its own Ray; load average "
        f"{os.getloadavg()[0]:.2f}.",
        "",
        "| job | seconds | images/s |",
        "| --- | --- | --- |",
        *[f"| {job} | {s:.1f} | {rate[job]:.3f} |" for job, s in seconds.items()],
        "",
        "| measure | goal | measured |",
        "| --- | --- | --- |",
        f"| relabel (fp32 regions) / label --keep-regions fp32, images/s | >= 5x | {speedup:.1f}x |",
        f"| regions per image, fp32 (Parquet) | - | {storage['fp32'] / 1e6:.3f} MB |",
        f"| regions per image, fp16 (Parquet) | - | {storage['fp16'] / 1e6:.3f} MB |",
        f"| pixels equal to the fresh run, fp32 regions | 100% | {100 * agree['fp32'][0]:.4f}% "
        f"({agree['fp32'][1]} of {count} images identical) |",
        f"| pixels equal to the fresh run, fp16 regions | >= 99.9% | {100 * agree['fp16'][0]:.4f}% "
        f"({agree['fp16'][1]} of {count} images identical) |",
        "",
        f"The fresh run labels {100 * agree['fp32'][2]:.1f}% of the pixels (the rest: `--other` names or below a "
        "minimum score).",
        "",
    ]
    emit(table, args.write)


if __name__ == "__main__":
    main()
