"""Load time and database size of ``jobs/review.py`` (``pipeline.review.dataset.load_run``), with masks in the
database and as mask files, for runs of 300 and 3,000 images of 640x480.

    python benchmarks/review_load.py --smoke-run out/smoke300 --sizes 300 3000 --write BENCHMARKS.md

Two kinds of label maps:

- ``smoke``: the rows of a real ``jobs/label.py --smoke-test`` run (``--smoke-run``, 640x480 images), repeated
  with new image paths up to each size. The smoke model's random weights give every pixel one class, so
  these masks are as small as masks get.
- ``regions``: 300 generated label maps with 8 classes in irregular regions (the argmax of smooth random
  score maps, like a real segmentation), repeated up to each size, written through the run-writing code
  (``RunOutput.write_shard`` + ``finalize``) without a model.

Loading runs in a private FiftyOne database (a temporary folder); "samples/s" is ``load_run`` after
start-up (imports and the database started by a first, untimed load). Database: the BSON size of the
sample documents (``dataset.stats()["samples_bytes"]``) per sample (MongoDB's compressed storage is not
reported: it is only updated at its next checkpoint); mask files: their bytes on disk per sample.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="review-bench-db-"))
os.environ.setdefault("FIFTYONE_DATABASE_NAME", f"review-bench-{uuid.uuid4().hex[:8]}")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
from _report import emit  # noqa: E402
from scipy import ndimage  # noqa: E402

from pipeline.label.inputs import image_id  # noqa: E402
from pipeline.outputs import RunOutput  # noqa: E402
from pipeline.review.dataset import load_run  # noqa: E402
from pipeline.segments import encode_label_map_png, label_map_segments  # noqa: E402
from pipeline.vocabulary import parse_vocabulary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, CLASSES = 480, 640, 8


def smoke_rows(run: Path) -> tuple[list[dict], object]:
    """The prediction rows and vocabulary of a labeling run."""
    output = RunOutput(run)
    return list(output.iter_predictions()), output.read_vocabulary(RuntimeError)


def region_rows(count: int, seed: int = 0) -> tuple[list[dict], object]:
    """``count`` rows of 640x480 label maps with ``CLASSES`` classes in irregular regions."""
    vocabulary = parse_vocabulary("".join(f"class {i}\n" for i in range(CLASSES)))
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        coarse = rng.random((CLASSES, HEIGHT // 40, WIDTH // 40))
        scores = ndimage.zoom(coarse, (1, 40, 40), order=1)
        label_map = scores.argmax(axis=0).astype(np.uint8)
        path = f"/bench/regions/{i:05d}.jpg"
        rows.append(
            {
                "image_path": path,
                "image_id": image_id(path),
                "width": WIDTH,
                "height": HEIGHT,
                "label_map_png": encode_label_map_png(label_map),
                "segments": label_map_segments(
                    label_map, scores.max(axis=0), vocabulary.names, vocabulary.category_ids
                ),
            }
        )
    return rows, vocabulary


def write_run(folder: Path, rows: list[dict], vocabulary, size: int) -> Path:
    """A run folder of ``size`` rows: ``rows`` repeated, each copy under new image paths."""
    output = RunOutput(folder)
    batch = []
    for i in range(size):
        row = dict(rows[i % len(rows)])
        row["image_path"] = f"{row['image_path']}.copy{i // len(rows)}"
        row["image_id"] = image_id(row["image_path"])
        batch.append(row)
        if len(batch) == 256:
            output.write_shard(batch, [])
            batch = []
    output.write_shard(batch, [])
    output.finalize(vocabulary, {"vocabulary": vocabulary.to_json()})
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(run: Path, mask_files: bool) -> dict:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    dataset = load_run(run, name=name, mask_files=mask_files)
    seconds = time.perf_counter() - started
    n = len(dataset)
    stats = dataset.stats()
    folder = dataset.info.get("mask_folder")
    files = folder_bytes(Path(folder)) if folder else 0
    fo.delete_dataset(name)
    if folder:
        shutil.rmtree(folder)
    return {
        "n": n,
        "seconds": seconds,
        "rate": n / seconds,
        "bson": stats["samples_bytes"] / n,
        "files": files / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-run", type=Path, required=True, help="output folder of a --smoke-test run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 3000])
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="review-bench-"))
    try:
        sources = {"smoke": smoke_rows(args.smoke_run), "regions": region_rows(300)}
        load_run(write_run(work / "warmup", *sources["smoke"], 4), name="warmup", max_class_views=0)  # start-up
        results = []
        for kind, (rows, vocabulary) in sources.items():
            for size in args.sizes:
                run = write_run(work / f"{kind}-{size}", rows, vocabulary, size)
                for mask_files in (False, True):
                    results.append((kind, size, mask_files, measure(run, mask_files)))
                    print(results[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()
    lines = [
        f"### Review load time and database size ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"`benchmarks/review_load.py`; {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) at the end; FiftyOne {fo.constants.VERSION}. "
        "Images 640x480. KB = 1000 bytes, per sample.",
        "",
        "| label maps | images | masks | load s | samples/s | database KB | mask files KB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, size, mask_files, r in results:
        lines.append(
            f"| {kind} | {size} | {'files' if mask_files else 'database'} | {r['seconds']:.1f} | {r['rate']:.0f} | "
            f"{r['bson'] / 1000:.2f} | {r['files'] / 1000:.2f} |"
        )
    emit(lines, args.write)


if __name__ == "__main__":
    main()
