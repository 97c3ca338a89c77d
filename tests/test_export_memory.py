"""The exports' driver memory does not grow with the run (issue 24): what a driver step holds per image, measured
with tracemalloc (Python objects and NumPy arrays) and, where Arrow reads, its memory pool's peak, each in a fresh
process (``MEASURE``) so that no earlier test's peak counts."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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
    assert peak < 100 * images, f"{peak} bytes held while the zip of {images} masks was written"
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
