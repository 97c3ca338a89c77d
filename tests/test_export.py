"""Export from FiftyOne: a run's COCO goes into a dataset (pipeline.review.dataset.load_run) and back out
(pipeline.exports.reviewed) without losing a pixel, for 8-bit and 16-bit label maps; an edit made in FiftyOne
shows up in the export, with scores kept only for untouched segments."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from run_builder import build_run, isolate_fiftyone

isolate_fiftyone()  # before anything imports fiftyone

import fiftyone as fo  # noqa: E402
import fiftyone.utils.image as foui  # noqa: E402
from local_ray import local_ray  # noqa: E402, F401
from pycocotools.coco import COCO  # noqa: E402

from pipeline.evaluate import evaluate_run  # noqa: E402
from pipeline.exports.files import mask_file_names  # noqa: E402
from pipeline.exports.reviewed import export_dataset  # noqa: E402
from pipeline.review.dataset import default_dataset_name, load_run  # noqa: E402
from pipeline.review.errors import ReviewError  # noqa: E402
from pipeline.review.reviewed import resolve_dataset  # noqa: E402
from pipeline.segments import decode_label_map_png  # noqa: E402
from pipeline.vocabulary import parse_vocabulary  # noqa: E402

SMALL = parse_vocabulary("cat\nsky: heaven\ngrass\ntraffic light\nboat\n")
LARGE = parse_vocabulary("".join(f"class {i}\n" for i in range(300)))  # indices above 254: 16-bit PNGs
pytestmark = pytest.mark.usefixtures("local_ray")  # --masks writes in Ray tasks


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _decoded(coco: COCO) -> dict[tuple[int, int], tuple[np.ndarray, float]]:
    """(image id, category id) -> (mask decoded by pycocotools, score); one annotation per pair."""
    out = {}
    for ann in coco.dataset["annotations"]:
        key = (ann["image_id"], ann["category_id"])
        assert key not in out
        out[key] = (coco.annToMask(ann).astype(bool), ann["score"])
    return out


@pytest.fixture(
    scope="module",
    params=[("small", SMALL, False), ("large", LARGE, True)],
    ids=["uint8-masks-in-database", "uint16-mask-files"],
)
def loaded(request, tmp_path_factory: pytest.TempPathFactory):
    label, vocabulary, mask_files = request.param
    run = build_run(tmp_path_factory.mktemp(f"export-{label}"), vocabulary, n_images=5, seed=2)
    dataset = load_run(run.out, name=f"export-{label}-{os.getpid()}", max_class_views=0, mask_files=mask_files)
    assert (dataset.first().predictions.mask_path is not None) == mask_files
    yield run, dataset
    fo.delete_dataset(dataset.name)


def test_round_trip_is_pixel_exact(loaded, tmp_path: Path) -> None:
    run, dataset = loaded
    large = len(run.vocabulary) > 255
    assert {m.dtype for m in run.predictions.values()} == {np.dtype(np.uint16 if large else np.uint8)}
    summary = export_dataset(dataset.name, tmp_path / "reviewed.json", tmp_path / "masks")
    assert summary["edited_segments"] == 0 and summary["images"] == len(run.predictions)

    original, exported = _coco(run.out / "coco.json"), _coco(tmp_path / "reviewed.json")
    assert exported.dataset["categories"] == original.dataset["categories"]
    assert exported.dataset["images"] == original.dataset["images"]
    before, after = _decoded(original), _decoded(exported)
    assert before.keys() == after.keys() and len(before) == summary["annotations"] > 0
    for key, (mask, score) in before.items():
        assert np.array_equal(after[key][0], mask), key
        assert after[key][1] == score, key  # unedited: the run's score is kept
    # The whole JSON is the run's, except "info".
    raw_before = json.loads((run.out / "coco.json").read_text())
    raw_after = json.loads((tmp_path / "reviewed.json").read_text())
    assert raw_after["annotations"] == raw_before["annotations"]

    # The PNG folder holds the run's label maps and reads back as ground truth that matches perfectly.
    names = mask_file_names([(img["file_name"], img["id"]) for img in original.dataset["images"]])
    for path, label_map in run.predictions.items():
        assert np.array_equal(decode_label_map_png((tmp_path / "masks" / names[path]).read_bytes()), label_map)
    classes = tmp_path / "masks" / "classes.txt"
    assert classes.read_text().splitlines() == list(run.vocabulary.names)
    if not large:  # (a 300-class PNG folder would need --ignore-index 65535; nothing more to learn)
        metrics = evaluate_run(run.out, str(tmp_path / "masks"), classes, metrics_path=tmp_path / "m.json")
        assert metrics["mIoU"] == pytest.approx(100.0) and metrics["num_images"] == len(run.predictions)


def test_edit_in_fiftyone_shows_up_in_export(loaded, tmp_path: Path) -> None:
    run, dataset = loaded
    n = len(run.vocabulary)
    sample = dataset.first()
    original = sample.predictions.get_mask().copy()
    edited = original.copy()
    new_class = n  # the last class (category id n)
    edited[2:9, 3:12] = new_class
    edited[0, :] = 0  # unlabel the first row
    try:
        sample.predictions.mask = edited
        sample.save()
        reloaded = fo.load_dataset(dataset.name)  # the edit is in the database, not only in this object
        assert np.array_equal(reloaded[sample.id].predictions.get_mask(), edited)

        summary = export_dataset(dataset.name, tmp_path / "edited.json")
        exported = _coco(tmp_path / "edited.json")
        run_coco = _coco(run.out / "coco.json")
        image_id = sample.image_id
        anns = {a["category_id"]: a for a in exported.dataset["annotations"] if a["image_id"] == image_id}
        rebuilt = np.zeros(edited.shape, dtype=np.int64)
        for category_id, ann in anns.items():
            mask = exported.annToMask(ann).astype(bool)
            assert not rebuilt[mask].any()  # annotations of one image do not overlap
            rebuilt[mask] = category_id
        assert np.array_equal(rebuilt, edited.astype(np.int64))  # every pixel of the edit, 0 = unlabeled

        run_scores = {
            a["category_id"]: (a["score"], run_coco.annToMask(a).astype(bool))
            for a in run_coco.dataset["annotations"]
            if a["image_id"] == image_id
        }
        changed = 0
        for category_id, ann in anns.items():
            before = run_scores.get(category_id)
            if before is not None and np.array_equal(before[1], edited == category_id):
                assert ann["score"] == before[0]
            else:
                assert ann["score"] == 1.0
                changed += 1
        assert changed >= 1 and summary["edited_images"] == 1

        # Other images are untouched.
        def others(coco: COCO) -> list[dict]:  # annotation ids are renumbered: compare the rest
            return [{**a, "id": None} for a in coco.dataset["annotations"] if a["image_id"] != image_id]

        assert others(exported) == others(run_coco)
    finally:
        sample.predictions.mask = original
        sample.save()


def test_edited_mask_file_shows_up_in_export(loaded, tmp_path: Path) -> None:
    """A mask file rewritten in place (as a tool that edits masks on disk does; FiftyOne's own PNG writer) is
    what the export writes, pixel for pixel; the mask PNG of every other image is the run's."""
    run, dataset = loaded
    sample = dataset.last()
    if sample.predictions.mask_path is None:
        pytest.skip("masks are in the database: no mask file to edit")
    path = Path(sample.predictions.mask_path)
    original = path.read_bytes()
    edited = sample.predictions.get_mask().copy()
    edited[1:6, 2:9] = len(run.vocabulary)  # the last class
    edited[-1, :] = 0  # unlabel the last row
    try:
        foui.write(edited, str(path))
        summary = export_dataset(dataset.name, None, tmp_path / "masks")
        names = mask_file_names(list(zip(dataset.values("image_path"), dataset.values("image_id"), strict=True)))
        for other in dataset:
            exported = decode_label_map_png((tmp_path / "masks" / names[other.image_path]).read_bytes())
            if other.id != sample.id:
                assert np.array_equal(exported, run.predictions[other.image_path])
                continue
            expected = edited.astype(np.int64) - 1  # mask value -> class index, 0 -> unlabeled (the dtype max)
            expected[edited == 0] = np.iinfo(exported.dtype).max
            assert np.array_equal(exported, expected)
        assert summary["edited_images"] == 1
    finally:
        path.write_bytes(original)


def test_invalid_mask_value_is_reported(loaded, tmp_path: Path) -> None:
    run, dataset = loaded
    sample = dataset.last()
    original = sample.predictions.get_mask().copy()
    bad = original.astype(np.uint16)
    bad[0, 0] = len(run.vocabulary) + 1  # no vocabulary class
    try:
        sample.predictions.mask = bad
        sample.save()
        with pytest.raises(ReviewError, match=rf"values {len(run.vocabulary) + 1} are no vocabulary class"):
            export_dataset(dataset.name, tmp_path / "bad.json")
        assert not (tmp_path / "bad.json").exists()
    finally:
        sample.predictions.mask = original
        sample.save()


def test_export_refuses_a_folder_and_the_runs_own_coco(loaded, tmp_path: Path) -> None:
    run, dataset = loaded
    original = (run.out / "coco.json").read_bytes()
    with pytest.raises(ReviewError, match="is a folder; give the path of a .json file"):
        export_dataset(dataset, tmp_path)
    with pytest.raises(ReviewError, match="the labeling run's own coco.json"):
        export_dataset(dataset, run.out / "coco.json")
    assert (run.out / "coco.json").read_bytes() == original


def test_masks_go_to_a_new_folder_whole_or_not_at_all(loaded, tmp_path: Path, monkeypatch) -> None:
    run, dataset = loaded
    with pytest.raises(ReviewError, match="nothing to export"):
        export_dataset(dataset, None, None)
    used = tmp_path / "used"
    used.mkdir()
    (used / "old.png").write_bytes(b"x")
    with pytest.raises(ReviewError, match="is not empty; choose a new or empty folder"):
        export_dataset(dataset, None, used)
    assert sorted(p.name for p in used.iterdir()) == ["old.png"]

    import pipeline.exports.reviewed

    def blocked_after_the_first(ds, with_run: bool) -> dict[str, str]:
        """Mask names of which the second cannot be written: its folder would be the file classes.txt."""
        names = mask_names(ds, with_run)
        second = sorted(names)[1]
        return {**names, second: "classes.txt/blocked.png"}

    mask_names = pipeline.exports.reviewed._mask_names
    monkeypatch.setattr(pipeline.exports.reviewed, "_mask_names", blocked_after_the_first)
    monkeypatch.setattr(pipeline.exports.reviewed, "MASKS_PER_TASK", 1)
    with pytest.raises(ReviewError, match=f"cannot write the export to '{tmp_path / 'masks'}': File exists"):
        export_dataset(dataset, None, tmp_path / "masks")  # a task's OSError: the user's to fix, in one line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"], "no folder, no temporary folder left"
    monkeypatch.undo()

    empty = tmp_path / "empty"
    empty.mkdir()
    summary = export_dataset(dataset, None, empty)
    assert summary["coco"] is None and summary["masks"] == str(empty)
    assert len(list(empty.rglob("*.png"))) == summary["images"] and (empty / "classes.txt").is_file()


def test_export_job_resolves_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import runpy

    run = build_run(tmp_path / "run", SMALL, n_images=2, seed=3)
    job = runpy.run_path(str(Path(__file__).resolve().parents[1] / "jobs" / "export.py"))
    with pytest.raises(ReviewError, match="run jobs/review.py first"):
        resolve_dataset(run.out)
    dataset = load_run(run.out, max_class_views=0)  # default name, which the folder resolves to
    try:
        assert dataset.name == default_dataset_name(run.out)
        summary = job["main"](job["parse_args"]([str(run.out), "--coco", str(tmp_path / "c.json")]))
        assert summary["dataset"] == dataset.name and summary["images"] == 2
        assert f"exported 2 images, {summary['annotations']} annotations" in capsys.readouterr().out
        exported = json.loads((tmp_path / "c.json").read_text())
        assert exported["annotations"] == json.loads((run.out / "coco.json").read_text())["annotations"]
    finally:
        fo.delete_dataset(dataset.name)


def test_mask_file_names_keep_folders_and_avoid_clashes() -> None:
    names = mask_file_names([("/d/a/x.jpg", 1), ("/d/b/x.jpg", 2), ("/d/a/x.png", 3), ("/d/y.jpg", 4)])
    assert names == {"/d/a/x.jpg": "a/x.png", "/d/b/x.jpg": "b/x.png", "/d/a/x.png": "a/x.3.png", "/d/y.jpg": "y.png"}


def test_masks_are_encoded_and_written_in_ray_tasks(loaded, tmp_path: Path, monkeypatch) -> None:
    """--masks: the driver only reads the dataset; tasks encode and write each PNG, byte for byte what the
    driver's encoder gives (encoding on the driver fails here), in chunks of MASKS_PER_TASK."""
    import pipeline.exports.reviewed
    from pipeline.review.reviewed import iter_reviewed_images
    from pipeline.segments import encode_label_map_png

    run, dataset = loaded
    expected = {
        item["image_path"]: encode_label_map_png(item["label_map"], ignore_value=-1)
        for item in iter_reviewed_images(dataset)
    }

    def on_the_driver(*args, **kwargs):
        raise AssertionError("a mask was encoded on the driver")

    monkeypatch.setattr(pipeline.exports.reviewed, "encode_label_map_png", on_the_driver)
    monkeypatch.setattr(pipeline.exports.reviewed, "MASKS_PER_TASK", 2)  # several tasks, the last one short
    summary = export_dataset(dataset.name, None, tmp_path / "masks")
    names = mask_file_names(list(zip(dataset.values("image_path"), dataset.values("image_id"), strict=True)))
    assert summary["images"] == len(expected) == len(names) == 5 and summary["annotations"] > 0
    assert {path: (tmp_path / "masks" / names[path]).read_bytes() for path in expected} == expected
    assert sorted(p.name for p in (tmp_path / "masks").rglob("*") if p.is_file()) == sorted(
        [*(Path(name).name for name in names.values()), "classes.txt"]
    )
