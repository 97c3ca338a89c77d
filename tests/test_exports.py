"""Exports to other tools' formats (pipeline.exports, ``jobs/export.py --format``), each read back and compared
with the run's label maps: yolo-seg against the Ultralytics format's published rules (label lines, data.yaml;
polygons drawn as Ultralytics' ``polygon2mask`` draws them), cvat against the "Segmentation mask 1.1" layout
(labelmap.txt colours), label-studio with label-studio-sdk's own RLE decoder, hf with ``datasets.load_from_disk``.
The reviewed source (``fiftyone:DATASET``) is exported with an edit made in FiftyOne."""

from __future__ import annotations

import io
import json
import os
import re
import runpy
import urllib.parse
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import yaml
from local_ray import own_ray
from PIL import Image
from run_builder import build_embedded_run, build_run, isolate_fiftyone

isolate_fiftyone()  # before anything imports fiftyone

from pipeline.exports.run import ExportError, FormatOptions, export_format  # noqa: E402
from pipeline.exports.yolo_seg import polygon_lines, rasterize  # noqa: E402
from pipeline.run_images import RunImagesError  # noqa: E402
from pipeline.vocabulary import parse_vocabulary  # noqa: E402
from san.errors import OptionError, UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = parse_vocabulary("cat\nsky: heaven\ngrass\ntraffic light\nboat\n")
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


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    return build_run(tmp_path_factory.mktemp("exports"), VOCABULARY, n_images=4, seed=7)


def _class_maps(run) -> dict[str, np.ndarray]:
    """image path -> label map with -1 where unlabeled (the builder's maps are uint8, 255 = unlabeled)."""
    return {path: np.where(m == 255, -1, m.astype(np.int64)) for path, m in run.predictions.items()}


def _export(source, fmt: str, output: Path, *extra: str) -> dict:
    args = EXPORT_JOB["parse_args"]([str(source), "--format", fmt, "--output", str(output), *extra])
    return EXPORT_JOB["main"](args)[fmt]


def test_yolo_polygons_keep_holes_and_parts() -> None:
    label_map = np.full((60, 80), -1)
    label_map[5:50, 5:50] = 0
    label_map[15:30, 15:30] = -1  # a hole
    label_map[35:45, 35:45] = 1  # an island of another class: a second hole
    label_map[10:20, 60:75] = 0  # a second part
    label_map[55, 70] = 1  # a single pixel
    label_map[2:40, 55] = 2  # a line one pixel wide
    lines = polygon_lines(label_map, tolerance=0)
    assert sorted(int(line.split()[0]) for line in lines) == [0, 0, 1, 1, 2]
    for line in lines:
        numbers = [float(v) for v in line.split()[1:]]
        assert len(numbers) >= 6 and len(numbers) % 2 == 0 and all(0 <= v <= 1 for v in numbers)
    drawn = rasterize(lines, 60, 80, 3)
    for value in range(3):
        assert np.array_equal(drawn[value], label_map == value), value  # exact without simplification


def ultralytics_dataset_root(data: dict, yaml_file: Path, datasets_dir: Path) -> Path:
    """Where Ultralytics looks for a dataset (``ultralytics.data.utils.check_det_dataset``, its documented rule): the
    yaml's ``path``, else the yaml's folder, a relative one joined to its ``datasets_dir`` setting."""
    path = Path(data.get("path") or yaml_file.parent)
    return path if path.is_absolute() else (datasets_dir / path).resolve()


def test_yolo_seg_layout(run, tmp_path: Path) -> None:
    summary = _export(run.out, "yolo-seg", tmp_path / "yolo", "--tolerance", "0")
    assert summary["images"] == len(run.predictions)
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(VOCABULARY.names)) and data["train"] == "images"
    # `yolo train data=yolo/data.yaml` from another folder, whatever Ultralytics' datasets_dir is, finds the export
    root = ultralytics_dataset_root(data, Path("yolo/data.yaml"), tmp_path / "elsewhere")
    assert root == (tmp_path / "yolo").resolve() and (root / data["train"]).is_dir()
    labels = sorted((tmp_path / "yolo" / "labels").rglob("*.txt"))
    assert len(labels) == len(run.predictions)
    maps = {Path(path).stem: m for path, m in _class_maps(run).items()}
    for label in labels:
        # Ultralytics finds an image's label by replacing /images/ with /labels/ and the suffix with .txt.
        relative = label.relative_to(tmp_path / "yolo" / "labels").with_suffix("")
        (image,) = (tmp_path / "yolo" / "images" / relative.parent).glob(f"{relative.name}.*")
        original = next(p for p in run.predictions if Path(p).stem == label.stem)
        assert image.read_bytes() == Path(original).read_bytes()
        label_map = maps[label.stem]
        drawn = rasterize(label.read_text().splitlines(), *label_map.shape, len(VOCABULARY))
        for value in np.unique(label_map[label_map >= 0]):
            truth = label_map == value
            assert (drawn[value] & truth).sum() / (drawn[value] | truth).sum() > 0.99, (label.stem, value)
        assert not drawn[:, label_map < 0].all(axis=0).any()


def test_cvat_zip_reads_back_losslessly(run, tmp_path: Path) -> None:
    target = tmp_path / "cvat.zip"
    assert _export(run.out, "cvat", target)["images"] == len(run.predictions)
    with zipfile.ZipFile(target) as archive:
        lines = archive.read("labelmap.txt").decode().splitlines()
        assert lines[0].startswith("# label:color_rgb")
        colours = {}
        for line in lines[1:]:
            name, rgb, parts, actions = line.split(":")
            colours[tuple(int(v) for v in rgb.split(","))] = name
        assert list(colours.values()) == ["background", *VOCABULARY.names] and len(colours) == len(lines) - 1
        names = archive.read("ImageSets/Segmentation/default.txt").decode().split()
        assert len(names) == len(run.predictions)
        by_stem = {Path(path).stem: m for path, m in _class_maps(run).items()}
        index = {name: i - 1 for i, name in enumerate(colours.values())}  # background -> -1
        for name in names:
            rgb = np.asarray(Image.open(io.BytesIO(archive.read(f"SegmentationClass/{name}.png"))).convert("RGB"))
            decoded = np.vectorize(lambda r, g, b: index[colours[(r, g, b)]])(rgb[..., 0], rgb[..., 1], rgb[..., 2])
            assert np.array_equal(decoded, by_stem[Path(name).name]), name


def test_label_studio_brushes_decode_bit_for_bit(run, tmp_path: Path) -> None:
    brush = pytest.importorskip(
        "label_studio_sdk.converter.brush", reason="label-studio-sdk is the exports extra: pip install -e '.[exports]'"
    )

    summary = _export(run.out, "label-studio", tmp_path / "ls", "--image-url", "https://data.example/img/")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    config = ElementTree.fromstring((tmp_path / "ls" / "label_config.xml").read_text())
    assert [label.get("value") for label in config.iter("Label")] == list(VOCABULARY.names)
    maps = _class_maps(run)
    assert len(tasks) == len(maps) == summary["images"]
    for task in tasks:
        url = task["data"]["image"]
        assert url.startswith("https://data.example/img/")
        path = os.path.join(summary["image_root"], urllib.parse.unquote(url.removeprefix("https://data.example/img/")))
        label_map = maps[path]
        results = task["predictions"][0]["result"]
        assert [r["value"]["brushlabels"][0] for r in results] == [
            VOCABULARY.names[v] for v in np.unique(label_map[label_map >= 0])
        ]
        for result in results:
            assert (result["original_height"], result["original_width"]) == label_map.shape
            alpha = brush.decode_rle(result["value"]["rle"]).reshape(*label_map.shape, 4)[..., 3]
            value = VOCABULARY.names.index(result["value"]["brushlabels"][0])
            assert np.array_equal(alpha == 255, label_map == value) and set(np.unique(alpha)) <= {0, 255}


@pytest.mark.parametrize("classes", [5, 300], ids=["uint8", "uint16"])
def test_hf_dataset_loads_back_with_the_same_pixels(tmp_path: Path, classes: int) -> None:
    import datasets

    vocabulary = VOCABULARY if classes == 5 else parse_vocabulary("".join(f"class {i}\n" for i in range(classes)))
    built = build_run(tmp_path / "run", vocabulary, n_images=2, seed=8)
    _export(built.out, "hf", tmp_path / "hf")
    dataset = datasets.load_from_disk(str(tmp_path / "hf"))
    assert dataset.features["segments"].feature["label"].names == list(vocabulary.names)
    assert len(dataset) == 2
    for row in dataset:
        stored = built.predictions[row["image_path"]]
        assert np.array_equal(np.asarray(row["label_map"]), stored)  # 255 / 65535 = unlabeled, as the run
        with Image.open(row["image_path"]) as original:
            assert np.array_equal(np.asarray(row["image"]), np.asarray(original))
        present = np.unique(stored[stored != np.iinfo(stored.dtype).max])
        assert [s["label"] for s in row["segments"]] == present.tolist()
        assert [s["area"] for s in row["segments"]] == [int((stored == v).sum()) for v in present]


def test_reviewed_dataset_exports_its_edits(run, tmp_path: Path) -> None:
    import fiftyone as fo

    from pipeline.review.dataset import load_run

    dataset = load_run(run.out, name=f"exports-{os.getpid()}", max_class_views=0)
    try:
        sample = dataset.first()
        mask = sample.predictions.get_mask().copy()
        mask[:4, :6] = 3  # "grass" (class index 2)
        sample.predictions = fo.Segmentation(mask=mask)
        sample.save()
        _export(f"fiftyone:{dataset.name}", "cvat", tmp_path / "reviewed.zip")
        with zipfile.ZipFile(tmp_path / "reviewed.zip") as archive:
            name = Path(sample.image_path).stem
            member = next(n for n in archive.namelist() if n.startswith("SegmentationClass/") and Path(n).stem == name)
            rgb = np.asarray(Image.open(io.BytesIO(archive.read(member))).convert("RGB"))
        from pipeline.exports.cvat import palette

        assert (rgb[:4, :6] == palette(4)[3]).all()
    finally:
        fo.delete_dataset(dataset.name)


def test_export_options_and_targets_are_checked(run, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="needs output"):
        FormatOptions(format="hf")
    with pytest.raises(OptionError, match="image_url belongs to an export format"):
        FormatOptions(image_url="x")
    used = tmp_path / "used"
    used.mkdir()
    (used / "old").write_text("x")
    with pytest.raises(ExportError, match="is not empty"):
        export_format(run.out, FormatOptions(format="yolo-seg", output=str(used)))
    with pytest.raises(ExportError, match="cvat writes a .zip file"):
        export_format(run.out, FormatOptions(format="cvat", output=str(used)))
    # A missing image is named, with the run's input, and nothing is left behind.
    gone = sorted(run.predictions)[0]
    kept = Path(gone).read_bytes()
    os.remove(gone)
    try:
        for fmt in ("yolo-seg", "hf"):
            with pytest.raises(RunImagesError, match=rf"no longer in its input .*\(e\.g\. {re.escape(repr(gone))}"):
                export_format(run.out, FormatOptions(format=fmt, output=str(tmp_path / fmt)))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]
    finally:
        Path(gone).write_bytes(kept)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory):
    return build_embedded_run(tmp_path_factory.mktemp("embedded"), VOCABULARY, seed=3)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _format_suffix(path: Path) -> str:
    with Image.open(path) as image:
        return {"PNG": ".png", "JPEG": ".jpg"}[image.format]


def test_embedded_images_are_exported_from_their_bytes(
    embedded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose input embeds its images (a Parquet image-bytes column whose path column names a real file,
    a relative path and a name without extension; WebDataset members, one named ``../../decoy.png``) exports
    each image's bytes from the input, under its format's extension: never the file a path names, whatever
    the current folder holds (here ``rel/pic.jpg``)."""
    import datasets

    (tmp_path / "cwd" / "rel").mkdir(parents=True)
    (tmp_path / "cwd" / "rel" / "pic.jpg").write_bytes(b"not the labeled image")
    monkeypatch.chdir(tmp_path / "cwd")
    expected = sorted(embedded.images.values())

    assert _export(embedded.out, "yolo-seg", tmp_path / "yolo")["images"] == len(expected)
    images = _files(tmp_path / "yolo" / "images")
    assert sorted(p.read_bytes() for p in images) == expected
    assert all(p.suffix == _format_suffix(p) for p in images)
    labels = {p.relative_to(tmp_path / "yolo" / "labels").with_suffix("") for p in _files(tmp_path / "yolo" / "labels")}
    assert labels == {p.relative_to(tmp_path / "yolo" / "images").with_suffix("") for p in images}

    _export(embedded.out, "hf", tmp_path / "hf")
    dataset = datasets.load_from_disk(str(tmp_path / "hf")).cast_column("image", datasets.Image(decode=False))
    assert {row["image_path"]: row["image"]["bytes"] for row in dataset} == embedded.images
    assert {Path(row["image"]["path"]).suffix for row in dataset} <= {".png", ".jpg"}

    pytest.importorskip("label_studio_sdk", reason="label-studio-sdk is the exports extra: pip install -e '.[exports]'")
    summary = _export(embedded.out, "label-studio", tmp_path / "ls")
    assert summary["image_root"] == str((tmp_path / "ls").resolve())
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    shown = [
        tmp_path / "ls" / urllib.parse.unquote(t["data"]["image"].removeprefix("/data/local-files/?d=")) for t in tasks
    ]
    assert sorted(p.read_bytes() for p in shown) == expected and all(p.parent != tmp_path for p in shown)
    with pytest.raises(UserError, match=r"embeds its images .* leave out image_root"):
        _export(embedded.out, "label-studio", tmp_path / "ls-root", "--image-root", str(tmp_path))
    assert not (tmp_path / "ls-root").exists()
    assert all(decoy.read_bytes() not in expected for decoy in embedded.decoys)


CONTROL_NAMES = {"two\nlines.png": "two%0Alines", "tab\tand\x7fdel\u2028.png": "tab%09and%7Fdel%E2%80%A8"}


def test_control_characters_in_names_are_escaped_alike_in_every_format(tmp_path: Path) -> None:
    """Image names with a newline, a tab, DEL and a line separator: every file name an export writes (yolo-seg,
    cvat's list and masks, label-studio, hf's image file name, --masks) percent-encodes them the one way
    (``exports.files.escape_name``: ``\\n`` -> ``%0A``), so no listing splits a name; fields that hold the path
    as data (COCO ``file_name``, hf ``image_path``) keep it exactly."""
    import datasets
    import fiftyone as fo

    from pipeline.exports.reviewed import export_dataset
    from pipeline.review.dataset import load_run

    built = build_run(tmp_path / "run", VOCABULARY, n_images=3, seed=9, names=[*CONTROL_NAMES, "plain.png"])
    paths = sorted(built.predictions)
    escaped = {p: CONTROL_NAMES.get(Path(p).name, "plain") for p in paths}

    _export(built.out, "yolo-seg", tmp_path / "yolo")
    stems = {
        p.relative_to(tmp_path / "yolo" / "images").with_suffix("").name for p in _files(tmp_path / "yolo" / "images")
    }
    labels = {
        p.relative_to(tmp_path / "yolo" / "labels").with_suffix("").name for p in _files(tmp_path / "yolo" / "labels")
    }
    assert stems == labels == set(escaped.values())

    _export(built.out, "cvat", tmp_path / "cvat.zip")
    with zipfile.ZipFile(tmp_path / "cvat.zip") as archive:
        listed = archive.read("ImageSets/Segmentation/default.txt").decode().splitlines()
        masks = [n for n in archive.namelist() if n.startswith("SegmentationClass/")]
    assert len(listed) == len(paths) and {Path(n).name for n in listed} == set(escaped.values())
    assert {Path(n).stem for n in masks} == set(escaped.values())

    _export(built.out, "hf", tmp_path / "hf")
    dataset = datasets.load_from_disk(str(tmp_path / "hf")).cast_column("image", datasets.Image(decode=False))
    assert sorted(dataset["image_path"]) == paths
    assert {Path(row["image"]["path"]).stem for row in dataset} == set(escaped.values())

    coco = json.loads((built.out / "coco.json").read_text())
    assert sorted(image["file_name"] for image in coco["images"]) == paths

    reviewed = load_run(built.out, name=f"control-{os.getpid()}", max_class_views=0)
    try:
        export_dataset(reviewed, tmp_path / "reviewed.json", tmp_path / "masks")
    finally:
        fo.delete_dataset(reviewed.name)
    assert {p.stem for p in _files(tmp_path / "masks") if p.suffix == ".png"} == set(escaped.values())
    coco = json.loads((tmp_path / "reviewed.json").read_text())
    assert sorted(image["file_name"] for image in coco["images"]) == paths

    pytest.importorskip("label_studio_sdk", reason="label-studio-sdk is the exports extra: pip install -e '.[exports]'")
    _export(built.out, "label-studio", tmp_path / "ls", "--image-url", "https://data.example/img/")
    urls = [task["data"]["image"] for task in json.loads((tmp_path / "ls" / "tasks.json").read_text())]
    assert {Path(url).stem for url in urls} == set(escaped.values())  # URL-quoting gives the same %0A
