"""The exports' driver memory does not grow with the run (issue 24): what a driver step holds per image, measured
with tracemalloc (Python objects and NumPy arrays) and, where Arrow reads, its memory pool's peak, each in a fresh
process (``MEASURE``) so that no earlier test's peak counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from run_builder import isolate_fiftyone

isolate_fiftyone()  # before anything imports fiftyone

from pipeline.output_shards import image_id  # noqa: E402
from pipeline.vocabulary import parse_vocabulary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = parse_vocabulary("cat\nsky\ngrass\n")

# A run of ``images`` rows in files of 1,000 (no label maps: the steps measured read ids and paths only), then the
# step STEP, measured: tracemalloc's peak and the growth of Arrow's pool peak, as JSON on the last line.
MEASURE = """
import json, sys, tracemalloc
from pathlib import Path
import pyarrow as pa
from pipeline.output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA, image_id
from pipeline.outputs import RunOutput
from pipeline.vocabulary import parse_vocabulary

root, images, per_file = Path(sys.argv[1]), int(sys.argv[2]), 1000
output = RunOutput(root)
for start in range(0, images, per_file):
    paths = [f"/data/images/folder_{{i // 1000}}/image_{{i:07d}}.png" for i in range(start, start + per_file)]
    rows = {{
        "image_path": paths, "image_id": [image_id(p) for p in paths], "width": [7] * per_file,
        "height": [5] * per_file, "label_map_png": [b""] * per_file, "segments": [[]] * per_file,
        "image_fingerprint": [""] * per_file, "generation": [1] * per_file,
    }}
    output.write_tables(pa.Table.from_pydict(rows, schema=PREDICTION_SCHEMA), ERROR_SCHEMA.empty_table())
output.write_manifest({{"vocabulary": parse_vocabulary("cat\\nsky\\n").to_json()}})
{imports}
pool = pa.default_memory_pool()
arrow_before = pool.max_memory()
tracemalloc.start()
result = {step}
print(json.dumps({{"result": result, "python": tracemalloc.get_traced_memory()[1],
                  "arrow": pool.max_memory() - arrow_before}}))
"""


def _measure(tmp_path: Path, images: int, imports: str, step: str) -> dict:
    script = MEASURE.format(imports=imports, step=step)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run"), str(images)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_opening_a_run_counts_its_images_without_a_table_of_paths(tmp_path: Path) -> None:
    """A run's source counts its images on their ids in NumPy (about 25 bytes per image at its peak): before, it read
    every path into an Arrow table and grouped it by path, about 640 bytes per image (5.3 MB of Python objects and
    7.2 MB of Arrow buffers for 20,000 images), which the export of a million images held before its Ray tasks
    began."""
    images = 20_000
    measured = _measure(
        tmp_path, images, "from pipeline.sources import open_label_source", "open_label_source(str(root)).count"
    )
    assert measured["result"] == images
    held = measured["python"] + measured["arrow"]
    assert held < 50 * images, f"{held} bytes for {images} images: {measured}"


def test_the_cvat_zip_keeps_its_central_directory_out_of_memory(tmp_path: Path, monkeypatch) -> None:
    """While the cvat zip is written from the tasks' masks, the driver holds no entry's record (a ``ZipInfo``, about
    570 bytes per mask before: 570 MB at a million images): zipfile's list of entries is spooled to a temporary file
    (``pipeline.exports.cvat``). The zip reads back whole, with zipfile and ``unzip -t``, here with ZIP64's end
    records (forced at 1,000 entries rather than 65,535)."""
    import zipfile

    import numpy as np

    from pipeline.exports import cvat
    from pipeline.exports.parallel import ExportItem, Layout
    from pipeline.segments import encode_label_map_png
    from pipeline.sources import LabeledImage, LabelSource
    from pipeline.vocabulary import parse_vocabulary

    images = 5000
    label_png = encode_label_map_png(np.array([[0, 1], [1, 0]]))
    held: list[int] = []

    def pieces(source, writer_for, staging=None, desc=""):
        """The tasks' work, done here: every mask and the listing of one piece."""
        items = (
            ExportItem(LabeledImage(f"{i}.png", i, label_png, []), f"folder_{i // 1000}/image_{i:05d}", None)
            for i in range(images)
        )
        counts = writer_for(Layout(images, "", False)).write(0, items)
        tracemalloc.start()
        held.append(tracemalloc.get_traced_memory()[0])
        return counts, Layout(images, "", False), 1

    monkeypatch.setattr(cvat, "export_pieces", pieces)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1000)
    source = LabelSource("a test", tmp_path, parse_vocabulary("cat\nsky\n"), images, lambda: iter(()))
    try:
        assert cvat.write_cvat(source, tmp_path / "masks.zip") == {"images": images}
        peak = tracemalloc.get_traced_memory()[1] - held[0]
    finally:
        tracemalloc.stop()
    # What the zip costs whatever its size: a deflate compressor's state (about 270 KB, at times two alive until
    # garbage is collected), one batch of pickled ZipInfos and the copy buffers: 0.4 to 0.6 MB here. A ZipInfo kept
    # per entry adds 570 bytes each, 2.9 MB here.
    assert peak < 300 * images, f"{peak} bytes held while the zip of {images} masks was written"
    with zipfile.ZipFile(tmp_path / "masks.zip") as archive:
        names = archive.namelist()
        assert len(names) == images + 2 and names[:2] == ["labelmap.txt", "ImageSets/Segmentation/default.txt"]
        listed = archive.read("ImageSets/Segmentation/default.txt").decode().splitlines()
        assert [f"SegmentationClass/{n}.png" for n in listed] == names[2:]
        assert archive.testzip() is None
    with open(tmp_path / "masks.zip", "rb") as zipped:
        assert b"PK\x06\x06" in zipped.read()[-200:], "ZIP64's end of central directory"
    tested = subprocess.run(["unzip", "-tq", str(tmp_path / "masks.zip")], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _run_of_small_images(root: Path, images: int) -> Path:
    """A run's folder of ``images`` tiny images (PNG files under ``root/images``, ten folders) in files of 500 rows,
    every row with the same 4x5 label map."""
    import numpy as np
    import pyarrow as pa
    from PIL import Image
    from run_builder import _prediction_row

    from pipeline.output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA
    from pipeline.outputs import RunOutput

    rng = np.random.default_rng(0)
    label_map = rng.integers(0, len(VOCABULARY), size=(4, 5)).astype(np.uint8)
    template = _prediction_row(rng, "x.png", label_map, VOCABULARY)
    pixels = Image.fromarray(rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8))
    output = RunOutput(root / "out")
    for start in range(0, images, 500):
        rows = []
        for i in range(start, min(images, start + 500)):
            path = root / "images" / f"folder_{i % 10}" / f"image_{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels.save(path)
            rows.append({**template, "image_path": str(path), "image_id": image_id(str(path)), "generation": 1})
        output.write_tables(pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA), ERROR_SCHEMA.empty_table())
    spec = str(root / "images")
    output.write_manifest({"vocabulary": VOCABULARY.to_json(), "input": spec, "options": {"input": spec}})
    return output.root


@pytest.mark.slow
def test_the_masks_of_a_run_with_its_review_are_named_without_a_name_per_image(tmp_path: Path, monkeypatch) -> None:
    """``--masks`` of ``run+fiftyone:NAME`` (a partial dataset with every other image of its run): the driver names
    each mask when it hands it to a task, from the renamed images' ids, and picks the run's other rows by their ids
    in NumPy. Its Python allocations then grow by about 90 bytes per image (NumPy arrays of ids and name keys; 200
    at their peak here, with what does not grow); before, a dict of every image's path and name and a set of every
    path read were held, about 560 bytes per image. The tasks' work is done here (no Ray), and masks are not
    written; the modules are warmed up on a first export."""
    import fiftyone as fo

    from pipeline.exports import reviewed
    from pipeline.review.dataset import load_run
    from pipeline.review.selection import parse_select

    images = 3000
    run = _run_of_small_images(tmp_path, images)
    written: list[str] = []

    def tasks(folder: Path, chunks):
        for chunk in chunks:
            written.extend(name for name, _ in chunk)
            yield len(chunk)

    monkeypatch.setattr(reviewed, "init_ray", lambda: None)
    monkeypatch.setattr(reviewed, "_mask_tasks", tasks)
    monkeypatch.setattr(reviewed, "ordered_results", lambda refs, total, desc, window: list(refs))
    monkeypatch.setattr(reviewed, "task_window", lambda: 2)
    dataset = load_run(run, select=[parse_select("random:3:seed=1")], max_class_views=0)
    try:
        reviewed.export_dataset(f"run+fiftyone:{dataset.name}", None, tmp_path / "warm-up")
        written.clear()
        tracemalloc.start()
        try:
            summary = reviewed.export_dataset(f"run+fiftyone:{dataset.name}", None, tmp_path / "masks")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        fo.delete_dataset(dataset.name)
    assert summary["images"] == images == len(set(written))
    assert sorted(written) == sorted(f"folder_{i % 10}/image_{i:05d}.png" for i in range(images))
    assert peak < 300 * images, f"the driver allocated {peak} bytes at its peak for {images} images"


def test_the_plan_of_an_export_finds_repeats_on_a_sorted_copy() -> None:
    """The driver's plan of a parallel export (``pipeline.exports.pieces.plan_rows``) holds, besides the surveys' ids
    and name keys (16 bytes per row), at most a concatenation and a sorted copy of one of them at a time: repeats
    (rows left out, names that clash) are found on a sorted copy, never with a sort index: about 23 bytes per row at its
    peak (before: 46, an index, a sorted copy and a range of the rows at once). The plan is the same: a row of an
    image written twice and a clashing name are found."""
    import numpy as np

    from pipeline.exports.pieces import Survey, plan_rows

    rows, per_file = 200_000, 1000
    ids = np.arange(rows, dtype=np.int64) * 7919
    keys = np.arange(rows, dtype=np.int64) * 104729
    ids[-1], keys[-3] = ids[5], keys[2]  # the last row repeats row 5's image, row -3 row 2's name
    surveys = [
        Survey(ids[i : i + per_file].copy(), np.ones(1, np.int64), keys[i : i + per_file].copy(), ("d",), "/d")
        for i in range(0, rows, per_file)
    ]
    del ids, keys
    tracemalloc.start()
    try:
        plan, wanted = plan_rows(surveys, [])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.drop.tolist() == [rows - 1] and plan.with_id.tolist() == [rows - 3]
    assert len(wanted) == rows - 1 and (np.diff(wanted) > 0).all()
    assert peak < 30 * rows, f"{peak / rows:.1f} bytes per row at the plan's peak"


def test_images_listed_by_one_container_are_located_without_a_sort_on_the_driver() -> None:
    """A run's input of one container (a folder, a list file) is located as that container's task returns it, its
    ids sorted by the task: the driver adds only the owner of each image (4 bytes per image, 5 at the peak here;
    before: a sort index and a sorted copy of every id, 53 bytes per image at the peak here). Several containers
    are combined as before: an image listed twice is read where it is listed first."""
    import numpy as np

    from pipeline.exports.image_files import FILE, combine_locations

    images = 200_000
    ids = np.arange(images, dtype=np.int64) * 7919
    embedded = np.zeros(images, bool)
    nothing = (np.zeros(0, np.int64), np.zeros(0, bool))
    tracemalloc.start()
    try:
        where = combine_locations([nothing, (ids, embedded)], "/staging")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(where.ids, ids) and (where.owners == FILE).all() and not where.embedded
    assert peak < 8 * images, f"{peak / images:.1f} bytes per image"
    twice = combine_locations([nothing, (ids[:3], np.zeros(3, bool)), (ids[1:4], np.ones(3, bool))], "/staging")
    assert twice.ids.tolist() == ids[:4].tolist() and twice.owners.tolist() == [FILE, FILE, FILE, 1]


# Two runs of 2,000 and 30,000 tiny images (the same PNG, hard links in folders of 1,000 under the run's input) with
# empty label maps, each exported by ``export_pieces`` in a local Ray of this process, with a writer that only counts
# its rows (a class of ``__main__``, which Ray sends by value); the driver's tracemalloc peak of each export (after a
# warm-up export: Ray's start and imports), as JSON on the last line.
DRIVER = """
import json, os, sys, tracemalloc
from pathlib import Path
import numpy as np
import pyarrow as pa
from PIL import Image
from pipeline.exports.parallel import export_pieces
from pipeline.output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA, image_id
from pipeline.outputs import RunOutput
from pipeline.sources import open_label_source
from pipeline.vocabulary import parse_vocabulary


class Counting:
    def write(self, part, items):
        return {"images": sum(1 for _ in items)}


def run(root, images, files):
    pixel = root / "pixel.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(pixel)
    output = RunOutput(root / "out")
    per_file = images // files
    for start in range(0, images, per_file):
        paths = [str(root / "images" / f"{i // 1000}" / f"{i}.png") for i in range(start, start + per_file)]
        for path in paths:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.link(pixel, path)
        rows = {
            "image_path": paths, "image_id": [image_id(p) for p in paths], "width": [1] * per_file,
            "height": [1] * per_file, "label_map_png": [b""] * per_file, "segments": [[]] * per_file,
            "image_fingerprint": [""] * per_file, "generation": [1] * per_file,
        }
        output.write_tables(pa.Table.from_pydict(rows, schema=PREDICTION_SCHEMA), ERROR_SCHEMA.empty_table())
    spec = str(root / "images")
    vocabulary = parse_vocabulary("cat\\nsky\\n").to_json()
    output.write_manifest({"vocabulary": vocabulary, "input": spec, "options": {"input": spec}})
    return open_label_source(str(output.root))


peaks = {}
for name, images, files in (("warm-up", 2000, 10), ("small", 2000, 10), ("large", 30000, 150)):
    root = Path(sys.argv[1]) / name
    root.mkdir()
    source = run(root, images, files)
    tracemalloc.start()
    counts, layout, parts = export_pieces(source, lambda layout: Counting(), staging=root / "staging")
    peaks[name] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert counts == {"images": images} and layout.images == images and parts == files, (counts, layout, parts)
print(json.dumps(peaks))
"""


@pytest.mark.slow
def test_the_export_driver_holds_no_array_of_every_image(tmp_path: Path) -> None:
    """A parallel export's driver holds records per file, never per image: the plan (surveys' ids and name keys, the
    ids of the images exported), the images' locations and the check for images no longer in the input are made by
    Ray tasks and stay in the object store, and the write tasks' counts are summed as they arrive. From 2,000 images
    in 10 files to 30,000 in 150, the driver's Python allocations at their peak grow by less than 8 bytes per image
    (measured: 2.5, what grows with the files); before, the plan and the locations were made on the driver: 51 bytes
    per image, 1.4 MB more here."""
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "RAY_ADDRESS": "local"},  # its own local Ray, whatever cluster runs on the machine
    )
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    growth = peaks["large"] - peaks["small"]
    assert growth < 8 * 28_000, f"{growth / 28_000:.1f} bytes per image more at the peak: {peaks}"
