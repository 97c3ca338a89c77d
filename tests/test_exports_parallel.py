"""Exports in Ray tasks (pipeline.exports.parallel). A run of several prediction files with each case of the run's
row rules (an image written twice, one labeled again by a later job, one a later job failed on) and two names that
clash is exported in every format, and each export is compared, file by file, with what a plain loop over the files
computes here; a partial review dataset is exported with the rest of its run (``run+fiftyone:``); and the driver's
Python allocations stay small while a run of thousands of images is exported (tracemalloc)."""

from __future__ import annotations

import io
import json
import os
import runpy
import time
import tracemalloc
import urllib.parse
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_ray import own_ray
from PIL import Image
from run_builder import _prediction_row, build_run, isolate_fiftyone

isolate_fiftyone()  # before anything imports fiftyone

from pipeline.exports.cvat import palette  # noqa: E402
from pipeline.exports.yolo_seg import polygon_lines  # noqa: E402
from pipeline.output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA  # noqa: E402
from pipeline.outputs import RunOutput  # noqa: E402
from pipeline.sources import LabeledImage  # noqa: E402
from pipeline.vocabulary import parse_vocabulary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = parse_vocabulary("cat\nsky\ngrass\n")
EXPORT_JOB = runpy.run_path(str(ROOT / "jobs" / "export.py"))


@pytest.fixture(scope="module", autouse=True)
def two_cpu_ray():
    """A private local Ray of 2 CPUs for the exports' tasks, whatever cluster this machine runs (as test_cluster.py)
    and whatever its CPUs (the suite's shared local Ray, tests/local_ray.py, has them all)."""
    import ray

    own_ray()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _export(source, fmt: str, output: Path, *extra: str) -> dict:
    args = EXPORT_JOB["parse_args"]([str(source), "--format", fmt, "--output", str(output), *extra])
    return EXPORT_JOB["main"](args)[fmt]


def _write_run(root: Path, shards: list[list[tuple[str, int]]], errors: list[tuple[str, int]], seed: int) -> Path:
    """A run's folder whose prediction files hold ``shards`` (per file: ``(image name, generation)``, each row with
    its own random label map) and one error file ``errors``; the images are PNG files under ``root/images``."""
    rng = np.random.default_rng(seed)
    output = RunOutput(root / "out")
    for shard in shards:
        rows = []
        for name, generation in shard:
            path = root / "images" / name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)).save(path, format="PNG")
            label_map = rng.integers(0, len(VOCABULARY), size=(10, 12)).astype(np.uint8)
            label_map[rng.random(label_map.shape) < 0.1] = 255
            rows.append({**_prediction_row(rng, str(path), label_map, VOCABULARY), "generation": generation})
        output.write_tables(pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA), ERROR_SCHEMA.empty_table())
    failed = [{"image_path": str(root / "images" / n), "error": "cannot decode", "generation": g} for n, g in errors]
    output.write_tables(PREDICTION_SCHEMA.empty_table(), pa.Table.from_pylist(failed, schema=ERROR_SCHEMA))
    spec = str(root / "images")
    output.write_manifest({"vocabulary": VOCABULARY.to_json(), "input": spec, "options": {"input": spec}})
    return output.root


@pytest.fixture(scope="module")
def rules_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five files: ``b.png`` twice in generation 1 (a duplicate row), ``c.png`` labeled again by generation 2,
    ``d.png`` failed in generation 2; ``sub/e.png`` and ``sub/E.jpg`` clash (case-insensitively, without suffix)."""
    shards = [
        [("a.png", 1), ("b.png", 1), ("c.png", 1), ("d.png", 1)],
        [("sub/e.png", 1), ("b.png", 1)],
        [("c.png", 2)],
        [("sub/E.jpg", 1), ("deep/er/f.png", 1)],
        [("g.png", 1)],
    ]
    return _write_run(tmp_path_factory.mktemp("rules"), shards, [("d.png", 2)], seed=4)


def _expected(run: Path) -> list[tuple[dict, str]]:
    """The rows an export holds, by a plain loop over the run's files (newest generation of each image, counting
    its error rows; then its first row in the files' order), each with its file name (its path below the images'
    common folder, without suffix; a later name that clashes case-insensitively gets ``.<image_id>``)."""
    rows = [r for f in sorted((run / "predictions").glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    errors = [r for f in sorted((run / "errors").glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    newest: dict[str, int] = {}
    for row in rows + errors:
        newest[row["image_path"]] = max(newest.get(row["image_path"], 0), row["generation"])
    kept, seen = [], set()
    for row in rows:
        if row["generation"] == newest[row["image_path"]] and row["image_path"] not in seen:
            kept.append(row)
            seen.add(row["image_path"])
    common = os.path.commonpath([os.path.dirname(row["image_path"]) for row in kept])
    named, used = [], set()
    for row in kept:
        name = os.path.splitext(os.path.relpath(row["image_path"], common))[0]
        if name.casefold() in used:
            name = f"{name}.{row['image_id']}"
        used.add(name.casefold())
        named.append((row, name))
    return named


def _label_map(row: dict) -> np.ndarray:
    return LabeledImage(row["image_path"], row["image_id"], row["label_map_png"], row["segments"]).label_map()


def test_the_expected_rows_hold_each_rule(rules_run: Path) -> None:
    names = {Path(row["image_path"]).name: name for row, name in _expected(rules_run)}
    assert sorted(names) == ["E.jpg", "a.png", "b.png", "c.png", "e.png", "f.png", "g.png"]  # d.png failed last
    assert {names["e.png"], names["E.jpg"]} & {"sub/e", "sub/E"} and len({names["e.png"], names["E.jpg"]}) == 2
    assert any(name.startswith("sub/") and name.count(".") == 1 for name in (names["e.png"], names["E.jpg"]))


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_yolo_seg_of_several_files(rules_run: Path, tmp_path: Path) -> None:
    expected = _expected(rules_run)
    summary = _export(rules_run, "yolo-seg", tmp_path / "yolo")
    assert summary["images"] == len(expected)
    images = {f"images/{name}{Path(row['image_path']).suffix}": row for row, name in expected}
    labels = {f"labels/{name}.txt": row for row, name in expected}
    assert _files(tmp_path / "yolo") == {*images, *labels, "data.yaml"}  # no staging or temporary file left
    for file, row in images.items():
        assert (tmp_path / "yolo" / file).read_bytes() == Path(row["image_path"]).read_bytes(), file
    polygons = 0
    for file, row in labels.items():
        lines = polygon_lines(_label_map(row))
        assert (tmp_path / "yolo" / file).read_text() == "".join(f"{line}\n" for line in lines), file
        polygons += len(lines)
    assert summary["polygons"] == polygons


def test_cvat_of_several_files(rules_run: Path, tmp_path: Path) -> None:
    expected = _expected(rules_run)
    _export(rules_run, "cvat", tmp_path / "cvat.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cvat.zip"]  # the pieces' folder is gone
    colours = palette(len(VOCABULARY) + 1)
    with zipfile.ZipFile(tmp_path / "cvat.zip") as archive:
        listed = archive.read("ImageSets/Segmentation/default.txt").decode()
        assert listed == "".join(f"{name}\n" for _, name in expected)
        masks = [n for n in archive.namelist() if n.startswith("SegmentationClass/")]
        assert masks == [f"SegmentationClass/{name}.png" for _, name in expected]
        for row, name in expected:
            rgb = np.asarray(Image.open(io.BytesIO(archive.read(f"SegmentationClass/{name}.png"))).convert("RGB"))
            assert np.array_equal(rgb, colours[_label_map(row) + 1]), name


def test_label_studio_of_several_files(rules_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("label_studio_sdk", reason="label-studio-sdk is the exports extra: pip install -e '.[exports]'")
    from pipeline.exports.label_studio import _task

    expected = _expected(rules_run)
    summary = _export(rules_run, "label-studio", tmp_path / "ls", "--image-url", "u/")
    root = os.path.commonpath([os.path.dirname(row["image_path"]) for row, _ in expected])
    assert summary["image_root"] == root
    tasks = [
        _task(
            _label_map(row),
            row["segments"],
            VOCABULARY.names,
            "u/" + urllib.parse.quote(os.path.relpath(row["image_path"], root)),
        )
        for row, _ in expected
    ]
    assert json.loads((tmp_path / "ls" / "tasks.json").read_text()) == json.loads(json.dumps(tasks))
    assert _files(tmp_path / "ls") == {"tasks.json", "label_config.xml"}


def test_hf_of_several_files_loads_with_datasets(rules_run: Path, tmp_path: Path) -> None:
    import datasets

    expected = _expected(rules_run)
    _export(rules_run, "hf", tmp_path / "hf")
    dataset = datasets.load_from_disk(str(tmp_path / "hf"))
    assert dataset.features["segments"].feature["label"].names == list(VOCABULARY.names)
    assert dataset["image_path"] == [row["image_path"] for row, _ in expected]
    raw = dataset.cast_column("image", datasets.Image(decode=False)).cast_column(
        "label_map", datasets.Image(decode=False)
    )
    for stored, (row, _) in zip(raw, expected, strict=True):
        assert stored["image"]["bytes"] == Path(row["image_path"]).read_bytes()
        assert stored["label_map"]["bytes"] == row["label_map_png"]
        assert [s["area"] for s in stored["segments"]] == [s["area"] for s in row["segments"]]
    assert not [p for p in (tmp_path / "hf").iterdir() if p.name.startswith(".")]


def test_a_partial_dataset_with_its_run(tmp_path: Path) -> None:
    """``run+fiftyone:NAME`` of a partial dataset: its images as edited (first), then the run's others as the run
    wrote them; ``fiftyone:NAME`` its images alone."""
    import fiftyone as fo

    from pipeline.review.dataset import load_run
    from pipeline.review.selection import parse_select

    run = build_run(tmp_path / "run", VOCABULARY, n_images=7, seed=5)
    dataset = load_run(run.out, select=[parse_select("random:3:seed=1")], max_class_views=0)
    try:
        sample = dataset.first()
        mask = sample.predictions.get_mask().copy()
        mask[:3, :3] = 2  # "sky" (class index 1)
        sample.predictions = fo.Segmentation(mask=mask)
        sample.save()
        edited = {sample.image_path}
        reviewed = [s.image_path for s in dataset]
        _export(f"run+fiftyone:{dataset.name}", "cvat", tmp_path / "whole.zip")
        _export(f"fiftyone:{dataset.name}", "cvat", tmp_path / "alone.zip")
    finally:
        fo.delete_dataset(dataset.name)
    colours = palette(len(VOCABULARY) + 1)
    with zipfile.ZipFile(tmp_path / "alone.zip") as archive:
        assert len(archive.read("ImageSets/Segmentation/default.txt").decode().splitlines()) == 3
    with zipfile.ZipFile(tmp_path / "whole.zip") as archive:
        listed = archive.read("ImageSets/Segmentation/default.txt").decode().splitlines()
        assert len(listed) == len(run.predictions)
        assert [Path(n).name for n in listed[:3]] == [Path(p).stem for p in reviewed]
        by_stem = {Path(p).stem: (p, m) for p, m in run.predictions.items()}
        for name in listed:
            path, stored = by_stem[Path(name).name]
            rgb = np.asarray(Image.open(io.BytesIO(archive.read(f"SegmentationClass/{name}.png"))).convert("RGB"))
            label_map = np.where(stored == 255, -1, stored.astype(np.int64))
            if path in edited:
                assert (rgb[:3, :3] == colours[2]).all()
                label_map[:3, :3] = 1
            assert np.array_equal(rgb, colours[label_map + 1]), name


IMAGES_FOR_MEMORY = 3000


@pytest.fixture(scope="module")
def thousands(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 3,000 small images in 30 files."""
    names = [f"folder_{i // 500}/image_{i:05d}.png" for i in range(IMAGES_FOR_MEMORY)]
    shards = [[(name, 1) for name in names[i : i + 100]] for i in range(0, len(names), 100)]
    return _write_run(tmp_path_factory.mktemp("thousands"), shards, [], seed=6)


def test_the_driver_does_not_hold_the_run(rules_run: Path, thousands: Path, tmp_path: Path) -> None:
    """Python's allocations on the driver (tracemalloc: the tasks run in other processes) while 3,000 images are
    exported in yolo-seg stay under 3 MB, 1 KB per image (measured: 1.2 MB, about the same at 1,000 and 4,000 images):
    an export that lists the run's images on the driver, each with its label map and segments, took 9.5 MB. The
    modules are imported first."""
    _export(rules_run, "yolo-seg", tmp_path / "warm-up")
    tracemalloc.start()
    try:
        summary = _export(thousands, "yolo-seg", tmp_path / "yolo")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["images"] == IMAGES_FOR_MEMORY
    assert peak < 3_000_000, f"the driver allocated {peak / 1e6:.1f} MB at its peak"


def test_a_failed_task_leaves_no_other_task_running(tmp_path: Path) -> None:
    """When one task fails, the tasks still in flight have ended before the error reaches the caller, who may delete
    the folder they write into (an export's temporary folder); a task that wrote after that would bring it back."""
    import ray

    from pipeline.exports.parallel import finished_results

    started, ended = tmp_path / "started", tmp_path / "ended"

    @ray.remote
    def slow_writer() -> None:
        started.write_text("")
        try:
            time.sleep(3)
        finally:  # written as the task ends, whether cancelling interrupts the sleep or not
            ended.write_text("ended")

    @ray.remote
    def failing() -> None:
        while not started.exists():  # fail only once the other task runs
            time.sleep(0.05)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        list(finished_results(iter([slow_writer.remote(), failing.remote()]), 2, "test", window=2))
    assert ended.read_text() == "ended", "the slow task had ended when the error was raised"
