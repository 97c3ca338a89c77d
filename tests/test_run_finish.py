"""The end of a labeling run (``RunOutput.finalize``, ``pipeline.output_finish``): COCO stitched from the files'
annotation text, as one file, one per predictions file or none; each image once, its newest job's row; the same
bytes as the COCO built in memory; and driver memory that does not grow with the run."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

from pipeline import output_finish
from pipeline.exports.coco import build_coco
from pipeline.label.inputs import image_id
from pipeline.output_shards import ANNOTATIONS_COLUMN, ERROR_SCHEMA, PREDICTION_SCHEMA, shard_files
from pipeline.outputs import RunOutput
from pipeline.segments import label_map_segments
from pipeline.vocabulary import parse_vocabulary
from san.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = parse_vocabulary("sky\ncat\ndog\n")


def row(rng: np.random.Generator, path: str, generation: int | None = 1, width: int = 7) -> dict:
    label_map = rng.integers(-1, 3, (5, width))
    segments = label_map_segments(
        label_map, rng.random((5, width)), VOCABULARY.names, VOCABULARY.category_ids, ignore_value=-1
    )
    return {
        "image_path": path,
        "image_id": image_id(path),
        "width": width,
        "height": 5,
        "label_map_png": b"",
        "segments": segments,
        "generation": generation,
    }


def expected_coco(output: RunOutput, target: Path) -> None:
    """What finalize must write, by the rules it had when it built COCO in memory: the files in name order, each
    path's rows of its newest job (prediction or error rows), the first of them, written as JSON."""
    files = [pq.read_table(shard).to_pylist() for shard in shard_files(output.predictions_dir)]
    errors = [pq.read_table(shard).to_pylist() for shard in shard_files(output.errors_dir)]
    newest: dict[str, int] = {}
    for rows in [*files, *errors]:
        for r in rows:
            newest[r["image_path"]] = max(newest.get(r["image_path"], 0), r.get("generation") or 0)
    kept, seen = [], set()
    for rows in files:
        for r in rows:
            if (r.get("generation") or 0) == newest[r["image_path"]] and r["image_path"] not in seen:
                seen.add(r["image_path"])
                kept.append(r)
    write_json_atomic(build_coco(kept, VOCABULARY.names, VOCABULARY.category_ids), target)


def older_version_file(output: RunOutput, rows: list[dict]) -> None:
    """A predictions file as versions before the annotation column (and before ``generation``) wrote it."""
    table = pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA).drop_columns(["generation"])
    output.predictions_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output.predictions_dir / "part-0older.parquet")


@pytest.fixture
def mixed_run(tmp_path: Path) -> RunOutput:
    """Shards that hold an image twice (an interrupted write), an image labeled again by a later job (changed),
    one a later job failed on, one that failed and was labeled later, and a file of an older version."""
    rng = np.random.default_rng(3)
    output = RunOutput(tmp_path / "run")
    output.write_shard([row(rng, "a.png"), row(rng, "b.png")], [{"image_path": "e.png", "error": "x", "generation": 1}])
    output.write_shard([row(rng, "b.png"), row(rng, "c.png"), row(rng, "d.png")], [])
    output.write_shard([row(rng, "c.png", 2, width=9), row(rng, "e.png", 2)], [])
    output.write_shard([], [{"image_path": "d.png", "error": "cannot decode image", "generation": 2}])
    older_version_file(output, [row(rng, "old.png", None), row(rng, "a.png", None)])
    return output


def test_a_run_with_repeats_and_superseded_rows_gives_the_coco_built_in_memory(mixed_run: RunOutput) -> None:
    output = mixed_run
    expected = output.root.parent / "expected.json"
    expected_coco(output, expected)
    counts = output.finalize(VOCABULARY, {"status": "complete"})
    assert counts == {"labeled": 5, "failed": 1, "duplicates": 1}
    assert json.loads((output.root / "manifest.json").read_text())["duplicate_paths"] == ["b.png"]
    written = (output.root / "coco.json").read_bytes()
    assert written == expected.read_bytes(), "the same bytes as build_coco + write_json_atomic"
    api = COCO(str(output.root / "coco.json"))
    assert sorted(image["file_name"] for image in api.dataset["images"]) == [
        "a.png",
        "b.png",
        "c.png",
        "e.png",
        "old.png",
    ]
    assert next(i["width"] for i in api.dataset["images"] if i["file_name"] == "c.png") == 9, "the newest job's row"
    ids = [annotation["id"] for annotation in api.dataset["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    assert pq.read_table(output.root / "errors.parquet").to_pylist() == [
        {"image_path": "d.png", "error": "cannot decode image"}
    ]
    assert output.finalize(VOCABULARY, {"status": "complete"}) == counts
    assert (output.root / "coco.json").read_bytes() == written, "finishing again writes the identical file"


def test_coco_per_shard_files_load_alone_and_together_are_the_single_file(mixed_run: RunOutput) -> None:
    output = mixed_run
    output.finalize(VOCABULARY, {"status": "complete"})
    single = json.loads((output.root / "coco.json").read_text())
    output.finalize(VOCABULARY, {"status": "complete"}, coco="shards")
    assert not (output.root / "coco.json").exists(), "the other choice's file is removed"
    parts = sorted((output.root / "coco").glob("part-*.json"))
    names = {shard.stem for shard in shard_files(output.predictions_dir)}
    assert parts and {part.stem for part in parts} <= names, "named after their predictions files"
    images, annotations = [], []
    for part in parts:
        api = COCO(str(part))
        assert api.dataset["categories"] == single["categories"]
        images += api.dataset["images"]
        annotations += api.dataset["annotations"]
    assert images == single["images"] and annotations == single["annotations"]
    output.finalize(VOCABULARY, {"status": "complete"}, coco="none")
    assert not (output.root / "coco.json").exists() and not (output.root / "coco").exists()
    output.finalize(VOCABULARY, {"status": "complete"})
    assert json.loads((output.root / "coco.json").read_text()) == single


def test_the_write_tasks_store_each_image_s_annotations(tmp_path: Path) -> None:
    output = RunOutput(tmp_path)
    output.write_shard([row(np.random.default_rng(0), "a.png")], [])
    [shard] = shard_files(output.predictions_dir)
    lines = pq.read_table(shard, columns=[ANNOTATIONS_COLUMN]).column(0)[0].as_py().split("\n")
    assert [json.loads(line)["category_id"] for line in lines] == [
        s["category_id"] for s in pq.read_table(shard).column("segments")[0].as_py()
    ]
    assert all("id" not in json.loads(line) for line in lines), "the finish numbers them"


def test_while_coco_is_written_the_finish_holds_a_byte_per_image(tmp_path: Path, monkeypatch) -> None:
    """The finish's state per image is fixed-width NumPy (:mod:`pipeline.row_rules`), and while COCO is written it
    holds only which rows are kept, a byte per row: neither the ids nor their sorted copy (before: 22 bytes per
    image, as ids, generations and the sorted ids stayed alive)."""
    images, per_file = 20_000, 1000
    output = RunOutput(tmp_path / "run")
    for start in range(0, images, per_file):
        paths = [f"{i}.png" for i in range(start, start + per_file)]
        rows = {
            "image_path": paths,
            "image_id": [image_id(p) for p in paths],
            "width": [7] * per_file,
            "height": [5] * per_file,
            "label_map_png": [b""] * per_file,
            "segments": [[]] * per_file,
            "image_fingerprint": [""] * per_file,
            "generation": [1] * per_file,
        }
        output.write_tables(pa.Table.from_pydict(rows, schema=PREDICTION_SCHEMA), ERROR_SCHEMA.empty_table())
    held: list[int] = []
    write_coco = output_finish._write_coco

    def measured(*args: object, **kwargs: object) -> None:
        held.append(tracemalloc.get_traced_memory()[0] - before)
        write_coco(*args, **kwargs)

    monkeypatch.setattr(output_finish, "_write_coco", measured)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert output.finalize(VOCABULARY, {"status": "complete"})["labeled"] == images
    finally:
        tracemalloc.stop()
    assert held and held[0] < 3 * images, f"{held[0]} bytes held for {images} images while COCO is written"


MEASURE = """
import json, sys, tracemalloc
import pyarrow as pa, pyarrow.dataset
sys.path.insert(0, {benchmarks!r})
from synthetic_run import write_synthetic_run
output = write_synthetic_run(sys.argv[1], int(sys.argv[2]), pool=8, shard_size=100, workers=1, size=(160, 120))
vocabulary = output.read_vocabulary(RuntimeError)
tracemalloc.start()
output.finalize(vocabulary, {{"status": "complete"}})
print(json.dumps({{"python": tracemalloc.get_traced_memory()[1], "arrow": pa.default_memory_pool().max_memory()}}))
"""


@pytest.mark.slow
def test_the_finish_does_not_hold_the_run(tmp_path: Path) -> None:
    """Finishing a run of 4x the images takes no more memory, Python objects (tracemalloc) or Arrow buffers (its
    memory pool's peak), but for the ids (a few bytes per image). Building COCO in memory took about 12 KB of Python
    objects per image of these 160x120 maps."""
    script = MEASURE.format(benchmarks=str(ROOT / "benchmarks"))
    peaks = {}
    for images in (600, 2400):
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / str(images)), str(images)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        peaks[images] = json.loads(done.stdout.strip().splitlines()[-1])
    for kind in ("python", "arrow"):
        growth = peaks[2400][kind] - peaks[600][kind]
        assert growth < 1_000_000, f"{kind} peak grew by {growth} bytes for 1800 more images: {peaks}"
    coco = json.loads((tmp_path / "2400" / "coco.json").read_text())
    assert len(coco["images"]) == pq.read_table(tmp_path / "2400" / "predictions", columns=["width"]).num_rows
