"""Evaluation of a labeling run against ground truth (PNG folder and COCO JSON), checked against an
independent per-class computation with boolean masks."""

from __future__ import annotations

import json
import math
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from local_ray import local_ray  # noqa: F401
from PIL import Image
from pycocotools import mask as mask_utils
from reference_evaluate import reference_evaluate

import pipeline.evaluate
from pipeline.evaluate import EvaluationError, _Merged, evaluate_run
from pipeline.evaluate_tasks import PixelCounter, Scoring
from pipeline.ground_truth.base import IGNORE, GroundTruth, GroundTruthError, LabelValues
from pipeline.ground_truth.classes import read_class_names
from pipeline.ground_truth.png import PngFolderGroundTruth, read_label_image
from pipeline.label.inputs import image_id
from pipeline.outputs import RunOutput
from pipeline.segments import encode_label_map_png, label_map_segments
from pipeline.vocabulary import parse_vocabulary
from san.metrics import ConfusionMatrix

ROOT = Path(__file__).resolve().parents[1]
VOCAB = parse_vocabulary("cat\nsky: heaven\ngrass\ntraffic light\nboat\n")  # "boat" is in no ground truth
# PNG ground truth: another order, other case/spacing, a gap value (1) and a class ("road") not in the vocabulary.
GT_CLASSES_TEXT = "Grass\n# void\n  Traffic   Light \nsky\ncat\nroad\n"
GT_VALUE_NAMES = {0: "grass", 2: "traffic light", 3: "sky", 4: "cat", 5: "road"}
GT_VALUES_PRESENT = [0, 2, 3, 5]  # "cat" (4) never occurs in the PNG ground truth, but is predicted
UNLABELED = 255
N_IMAGES = 5
pytestmark = pytest.mark.usefixtures("local_ray")


def _key(name: str) -> str:
    return " ".join(name.split()).lower()


def _random_case(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A predicted label map (vocabulary indices, 255 = unlabeled) and a raw PNG ground truth."""
    gt = rng.choice(GT_VALUES_PRESENT, size=(h, w)).astype(np.uint8)
    gt[rng.random((h, w)) < 0.08] = 1  # gap value: ignored
    gt[rng.random((h, w)) < 0.08] = 255  # ignored
    by_name = {_key(n): i for i, n in enumerate(VOCAB.names)}
    pred = np.vectorize(lambda v: by_name.get(_key(GT_VALUE_NAMES.get(int(v), "")), 4))(gt).astype(np.uint8)
    noise = rng.random((h, w)) < 0.35
    pred[noise] = rng.integers(0, len(VOCAB), size=int(noise.sum()))
    pred[rng.random((h, w)) < 0.05] = UNLABELED
    return pred, gt


def _prediction_row(path: str, pred: np.ndarray) -> dict:
    return {
        "image_path": path,
        "image_id": image_id(path),
        "width": pred.shape[1],
        "height": pred.shape[0],
        "label_map_png": encode_label_map_png(pred, ignore_value=UNLABELED),
        "segments": label_map_segments(pred, None, VOCAB.names, VOCAB.category_ids, ignore_value=UNLABELED),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fake labeling run (two shards, one image without ground truth) and a PNG ground-truth folder."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    out = RunOutput(root / "out")
    cases = {}
    rows = []
    for i in range(N_IMAGES):
        h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        pred, gt = _random_case(rng, h, w)
        path = f"/data/images/{'sub/' if i % 2 else ''}img_{i}.jpg"
        cases[path] = (pred, gt)
        rows.append(_prediction_row(path, pred))
    extra_pred, _ = _random_case(rng, 10, 10)
    rows.append(_prediction_row("/data/images/no_ground_truth.jpg", extra_pred))
    out.write_shard(rows[:3], [])
    out.write_shard(rows[3:], [{"image_path": "/data/images/broken.jpg", "error": "cannot decode"}])
    out.finalize(VOCAB, {"vocabulary": VOCAB.to_json()})

    gt_dir = root / "gt"
    for path, (_, gt) in cases.items():
        target = gt_dir / ("nested" if "sub/" in path else "") / (Path(path).stem + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(target)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gt_dir / "no_prediction.png")
    classes = root / "gt_classes.txt"
    classes.write_text(GT_CLASSES_TEXT)
    return {"root": root, "out": root / "out", "cases": cases, "gt_dir": gt_dir, "classes": classes}


def _reference(pairs: list[tuple[np.ndarray, np.ndarray]], gt_names: list[str], protocol: str) -> dict[str, float]:
    """Per-class IoU/ACC with boolean masks. ``pairs``: (predicted GT index, -9 = wrong; GT index, -1 = ignore)."""
    preds = np.concatenate([p.ravel() for p, _ in pairs])
    gts = np.concatenate([g.ravel() for _, g in pairs])
    valid = gts >= 0
    res: dict[str, float] = {}
    ious, accs, weights = {}, {}, {}
    for c, name in enumerate(gt_names):
        g = (gts == c) & valid
        p = (preds == c) & valid
        inter, union = int((g & p).sum()), int((g | p).sum())
        if protocol == "detectron2":
            ious[name] = inter / union if g.sum() else math.nan
        else:
            ious[name] = inter / union if union else math.nan
        accs[name] = inter / g.sum() if g.sum() else math.nan
        weights[name] = g.sum() / valid.sum()
    res["mIoU"] = 100 * np.nanmean(list(ious.values()))
    res["fwIoU"] = 100 * sum(weights[n] * ious[n] for n in gt_names if weights[n] > 0)
    res["mACC"] = 100 * np.nanmean(list(accs.values()))
    res["pACC"] = 100 * float(((preds == gts) & valid).sum() / valid.sum())
    for name in gt_names:
        res[f"IoU-{name}"] = 100 * ious[name]
        res[f"ACC-{name}"] = 100 * accs[name]
    return res


def _to_gt_indices(pred: np.ndarray, gt_names: list[str]) -> np.ndarray:
    """Vocabulary index -> GT class index by name; unlabeled or unmatched -> -9."""
    gt_index = {_key(n): i for i, n in enumerate(gt_names)}
    table = {v: gt_index.get(_key(n), -9) for v, n in enumerate(VOCAB.names)}
    return np.vectorize(lambda v: table.get(int(v), -9))(pred)


def _assert_close(result: dict, expected: dict) -> None:
    for key, value in expected.items():
        got = result[key]
        if math.isnan(value):
            assert math.isnan(got), key
        else:
            assert got == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("protocol", ["detectron2", "mmseg"])
def test_png_folder_matches_reference(run: dict, protocol: str, capsys: pytest.CaptureFixture) -> None:
    metrics_path = run["root"] / f"metrics-{protocol}.json"
    result = evaluate_run(run["out"], str(run["gt_dir"]), run["classes"], protocol, metrics_path=metrics_path)

    gt_names = ["Grass", "Traffic Light", "sky", "cat", "road"]  # gap line 1 dropped, names normalised
    compact = {0: 0, 2: 1, 3: 2, 4: 3, 5: 4}
    pairs = []
    for pred, raw in run["cases"].values():
        gt = np.vectorize(lambda v: compact.get(int(v), -1))(raw)
        pairs.append((_to_gt_indices(pred, gt_names), gt))
    expected = _reference(pairs, gt_names, protocol)
    _assert_close(result, expected)
    assert math.isnan(result["IoU-cat"]) == (protocol == "detectron2")  # predicted, absent from the GT
    assert result["IoU-road"] == 0.0  # in the GT, not in the vocabulary: never right
    assert result["num_images"] == N_IMAGES
    assert result["protocol"] == protocol

    alignment = result["class_alignment"]
    assert alignment["vocabulary_not_in_ground_truth"] == ["boat"]
    assert alignment["ground_truth_not_in_vocabulary"] == ["road"]
    assert alignment["matched"] == 4
    matching = result["matching"]
    assert matching["predictions_without_ground_truth"] == 1
    assert matching["predictions_without_ground_truth_examples"] == ["/data/images/no_ground_truth.jpg"]
    assert matching["ground_truth_without_prediction"] == 1
    assert matching["ground_truth_without_prediction_examples"] == ["no_prediction.png"]
    err = capsys.readouterr().err
    assert "boat" in err and "road" in err and "no_ground_truth.jpg" in err

    written = json.loads(metrics_path.read_text())
    assert written["mIoU"] == pytest.approx(result["mIoU"])
    assert written["num_images"] == N_IMAGES
    if protocol == "detectron2":
        assert written["IoU-cat"] is None  # NaN is written as null (strict JSON)


def test_default_classes_are_vocabulary_order_and_default_metrics_path(run: dict, tmp_path: Path) -> None:
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    pairs = []
    for path, (pred, _) in run["cases"].items():
        gt = pred.copy()  # vocabulary indices, 255 = ignore: a perfect prediction where labeled
        Image.fromarray(gt).save(gt_dir / (Path(path).stem + ".png"))
        pairs.append((pred, gt))
    result = evaluate_run(run["out"], str(gt_dir))
    assert result["class_alignment"]["vocabulary_not_in_ground_truth"] == []
    assert result["pACC"] == 100.0 and result["mIoU"] == 100.0
    assert json.loads((run["out"] / "metrics.json").read_text())["pACC"] == 100.0


def test_size_mismatch_names_image_and_sizes(run: dict, tmp_path: Path) -> None:
    path, (pred, _) = next(iter(run["cases"].items()))
    gt = np.zeros((pred.shape[0] + 3, pred.shape[1]), np.uint8)
    Image.fromarray(gt).save(tmp_path / (Path(path).stem + ".png"))
    with pytest.raises(EvaluationError) as info:
        evaluate_run(run["out"], str(tmp_path), run["classes"], metrics_path=tmp_path / "m.json")
    message = str(info.value)
    h, w = pred.shape
    assert path in message and f"{w}x{h}" in message and f"{w}x{h + 3}" in message


def test_gt_value_without_class_is_an_error(run: dict, tmp_path: Path) -> None:
    path, (pred, _) = next(iter(run["cases"].items()))
    Image.fromarray(np.full(pred.shape, 9, np.uint8)).save(tmp_path / (Path(path).stem + ".png"))
    with pytest.raises(GroundTruthError, match="name no class: 9"):
        evaluate_run(run["out"], str(tmp_path), run["classes"], metrics_path=tmp_path / "m.json")


def test_nothing_matches_and_no_common_class(run: dict, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "unrelated.png")
    with pytest.raises(GroundTruthError, match="no predicted image matches"):
        evaluate_run(run["out"], str(tmp_path), metrics_path=tmp_path / "m.json")
    classes = tmp_path / "classes.txt"
    classes.write_text("zebra\ngiraffe\n")
    with pytest.raises(EvaluationError, match="no vocabulary class matches"):
        evaluate_run(run["out"], str(tmp_path), classes, metrics_path=tmp_path / "m.json")


def test_ambiguous_stem_is_an_error(run: dict, tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / folder / "img_0.png")
    with pytest.raises(GroundTruthError, match="ambiguous"):
        evaluate_run(run["out"], str(tmp_path), metrics_path=tmp_path / "m.json")


def test_class_names_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\ufeffa\n\n#x\n  b   c \n\n")
    assert read_class_names(path) == ["a", None, None, "b c"]
    path.write_text("a\nA\n")
    with pytest.raises(GroundTruthError, match=r"c\.txt:2: class 'A' is also on line 1 as 'a'$"):
        read_class_names(path)
    path.write_text("traffic_light\ntraffic light\n")
    with pytest.raises(GroundTruthError, match="twice"):
        read_class_names(path)


def test_label_values_map_classes_ignore_and_refuse_the_rest() -> None:
    values = LabelValues([3, 0, 255], ignored_values=[255, 7, -1, 70000])  # a class value wins over "ignored"
    raw = np.array([[0, 3, 255], [7, 0, 3]])
    np.testing.assert_array_equal(values.classes(raw, "gt.png", "hint"), [[1, 0, 2], [IGNORE, 1, 0]])
    with pytest.raises(GroundTruthError, match=r"^gt\.png has values that name no class: 1, 9 \(classes 0, 3\)$"):
        values.classes(np.array([[1, 9, 0]]), "gt.png", "classes 0, 3")
    with pytest.raises(GroundTruthError, match=r"gt\.png has values outside 0\.\.65535"):
        values.classes(np.array([[-1]]), "gt.png", "hint")


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def test_coco_json_matches_reference(run: dict, tmp_path: Path) -> None:
    """RLE (compressed and uncompressed) and a polygon; unannotated pixels ignored; an overlap of two
    categories ignored; file names relative, matched by stem."""
    categories = [{"id": 10, "name": "grass"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "Sky"}]
    categories.append({"id": 12, "name": "water"})  # not in the vocabulary
    gt_names = ["cat", "Sky", "grass", "water"]  # sorted by category id
    cat_ids = [3, 7, 10, 12]
    rng = np.random.default_rng(1)
    images, annotations, pairs = [], [], []
    for n, (path, (pred, _)) in enumerate(run["cases"].items()):
        h, w = pred.shape
        gt = rng.integers(-1, 4, size=(h, w))  # -1 = no annotation
        images.append({"id": 100 + n, "file_name": f"val/{Path(path).name}", "height": h, "width": w})
        for c in range(4):
            mask = gt == c
            if not mask.any():
                continue
            if n == 0 and c == 1:
                segmentation = _uncompressed_rle(mask)
            else:
                rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
                segmentation = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            annotations.append({"image_id": 100 + n, "category_id": cat_ids[c], "segmentation": segmentation})
        if n == 1:  # a polygon of "grass" covering a rectangle; where another category is, it is ignored
            polygon = [2.0, 2.0, 9.0, 2.0, 9.0, 8.0, 2.0, 8.0]
            annotations.append({"image_id": 100 + n, "category_id": 10, "segmentation": [polygon]})
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))
            poly_mask = mask_utils.decode(rle).astype(bool)
            assert poly_mask.any()
            conflict = poly_mask & (gt >= 0) & (gt != 2)
            gt = np.where(poly_mask & (gt == -1), 2, gt)
            gt[conflict] = -1
        pairs.append((_to_gt_indices(pred, gt_names), gt))
    for i, ann in enumerate(annotations):
        ann.update({"id": i + 1, "iscrowd": 0, "area": 0, "bbox": [0, 0, 0, 0]})
    coco_path = tmp_path / "gt.json"
    coco_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))

    result = evaluate_run(run["out"], str(coco_path), metrics_path=tmp_path / "m.json")
    _assert_close(result, _reference(pairs, gt_names, "detectron2"))
    assert result["num_images"] == N_IMAGES
    assert result["class_alignment"]["vocabulary_not_in_ground_truth"] == ["traffic light", "boat"]
    assert result["class_alignment"]["ground_truth_not_in_vocabulary"] == ["water"]
    assert result["matching"]["predictions_without_ground_truth"] == 1

    with pytest.raises(GroundTruthError, match="does not apply"):
        evaluate_run(run["out"], str(coco_path), gt_classes=run["classes"])


@pytest.mark.slow
def test_cli_writes_metrics_and_prints_table(run: dict, tmp_path: Path) -> None:
    metrics = tmp_path / "cli" / "metrics.json"
    command = [sys.executable, "jobs/evaluate.py", "--predictions", str(run["out"]), "--gt", str(run["gt_dir"])]
    command += ["--gt-classes", str(run["classes"]), "--metrics", str(metrics)]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own local Ray, whatever cluster runs on the machine
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "mIoU" in done.stdout and "Traffic Light" in done.stdout
    assert "warning:" in done.stderr and "boat" in done.stderr
    assert json.loads(metrics.read_text())["num_images"] == N_IMAGES


def test_cli_user_error_exits_2(run: dict, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    """The script's __main__ block, run in-process (a subprocess would re-import torch for nothing)."""
    missing = str(tmp_path / "missing")
    monkeypatch.setattr(sys, "argv", ["jobs/evaluate.py", "--predictions", str(run["out"]), "--gt", missing])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / "jobs" / "evaluate.py"), run_name="__main__")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and missing in err and "Traceback" not in err


def test_large_class_list_uses_65535_as_ignore(tmp_path: Path) -> None:
    """With more than 255 classes 255 is a class, so ignore becomes 65535 (16-bit label images)."""
    names = [f"class {i}" for i in range(300)]
    raw = np.array([[0, 255, 299, 65535]], dtype=np.uint16)
    Image.fromarray(raw).save(tmp_path / "x.png")
    gt = PngFolderGroundTruth(tmp_path, names)
    assert gt.raw_ignore == [65535]
    assert gt.read("x.png").tolist() == [[0, 255, 299, IGNORE]]
    assert gt.match("/somewhere/x.jpg") == "x.png" and gt.match("/somewhere/y.jpg") is None


def test_an_ignore_index_that_names_a_class_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(GroundTruthError, match="ignore_index 0 is the value of class 'sky'"):
        PngFolderGroundTruth(tmp_path, ["sky", "grass"], ignore_index=0)
    assert PngFolderGroundTruth(tmp_path, [None, "sky", "grass"], ignore_index=0).raw_ignore == [0, 65535]


def test_class_names_align_across_case_spaces_and_underscores() -> None:
    from pipeline.ground_truth.classes import normalise_class_name

    assert normalise_class_name(" Traffic_Light ") == normalise_class_name("traffic  light") == "traffic light"
    assert normalise_class_name("coffee cup") != normalise_class_name("coffeecup")


def test_a_class_matches_ground_truth_by_a_synonym_when_its_name_does_not() -> None:
    from pipeline.evaluate import align_classes

    vocabulary = parse_vocabulary("coffee cup: mug\nsky: heaven\ncat\n")
    alignment = align_classes(vocabulary.names, ("Mug", "sky", "heaven", "dog"), vocabulary.synonyms)
    assert alignment["info"]["pairs"] == [["coffee cup", "Mug"], ["sky", "sky"]]  # the name wins over a synonym
    assert alignment["lookup"][:3].tolist() == [0, 1, 4]  # cat matches nothing: K = 4 means "wrong"
    assert alignment["info"]["ground_truth_not_in_vocabulary"] == ["heaven", "dog"]


def test_trailing_gap_lines_of_gt_classes_are_dropped_as_the_help_says(tmp_path: Path) -> None:
    """--gt-classes: a '#' line inside the file makes its value ignored; trailing ones name nothing (an error)."""
    (tmp_path / "classes.txt").write_text("cat\n# other\ndog\n# unused\n\n")
    names = read_class_names(tmp_path / "classes.txt")
    assert names == ["cat", None, "dog"]
    folder = tmp_path / "gt"
    folder.mkdir()
    Image.fromarray(np.array([[0, 1, 2]], np.uint8)).save(folder / "a.png")
    Image.fromarray(np.array([[3]], np.uint8)).save(folder / "b.png")
    gt = PngFolderGroundTruth(folder, names)
    assert gt.read("a.png").tolist() == [[0, IGNORE, 1]]
    with pytest.raises(GroundTruthError, match="name no class: 3"):
        gt.read("b.png")


def _coco_of(cases: dict[str, np.ndarray], path: Path) -> None:
    """A COCO JSON of raw PNG-style ground truths (values of GT_VALUE_NAMES; others unannotated), by file name."""
    categories = [{"id": 20 + v, "name": name} for v, name in GT_VALUE_NAMES.items()]
    images, annotations = [], []
    for n, (name, raw) in enumerate(cases.items()):
        h, w = raw.shape
        images.append({"id": n + 1, "file_name": name, "height": h, "width": w})
        for value in GT_VALUE_NAMES:
            mask = raw == value
            if mask.any():
                rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
                segmentation = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
                annotations.append({"image_id": n + 1, "category_id": 20 + value, "segmentation": segmentation})
    for i, ann in enumerate(annotations):
        ann.update({"id": i + 1, "iscrowd": 0, "area": 0, "bbox": [0, 0, 0, 0]})
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run as an interrupted, resumed job leaves it (not finalized): a path written twice by one job with other
    label maps, images labeled again by a later job (or failed on by it, or failed on by the same job), two
    predicted images that share one ground truth, images without ground truth and ground truth without image;
    in five files. Its ground truth as a PNG folder and as a COCO JSON."""
    root = tmp_path_factory.mktemp("unfinished")
    rng = np.random.default_rng(7)
    out = RunOutput(root / "out")
    gt: dict[str, np.ndarray] = {}  # file name -> raw ground truth

    def row(path: str, generation: int, shape: tuple[int, int]) -> dict:
        pred, raw = _random_case(rng, *shape)
        gt.setdefault(Path(path).stem, raw)
        return {**_prediction_row(path, pred), "generation": generation}

    shapes = [(int(rng.integers(10, 30)), int(rng.integers(10, 30))) for _ in range(12)]
    files: list[tuple[list[dict], list[dict]]] = [([], []) for _ in range(5)]
    for i, shape in enumerate(shapes):
        files[i % 5][0].append(row(f"/data/run/img_{i}.jpg", 1, shape))
    files[4][0].append(row("/data/run/img_0.jpg", 1, shapes[0]))  # written twice, other bytes: the first counts
    files[3][0].append(row("/data/run/img_1.jpg", 2, shapes[1]))  # labeled again: the newest counts
    files[2][1].append({"image_path": "/data/run/img_2.jpg", "error": "gone", "generation": 2})  # none counts
    files[1][1].append({"image_path": "/data/run/img_3.jpg", "error": "twice", "generation": 1})  # the row counts
    files[0][0].extend([row("/data/a/shared.jpg", 1, (12, 14)), row("/data/b/shared.jpg", 1, (12, 14))])
    for i in range(7):
        files[i % 5][0].append(row(f"/data/run/no_gt_{i}.jpg", 1, (8, 9)))
    for predictions, errors in files:
        out.write_shard(predictions, errors)
    out.write_manifest({"vocabulary": VOCAB.to_json()})
    for i in range(7):
        del gt[f"no_gt_{i}"]
    gt["no_prediction"] = np.zeros((5, 5), np.uint8)

    gt_dir = root / "gt"
    gt_dir.mkdir()
    for stem, raw in gt.items():
        Image.fromarray(raw).save(gt_dir / f"{stem}.png")
    classes = root / "classes.txt"
    classes.write_text(GT_CLASSES_TEXT)
    _coco_of({f"{stem}.jpg": raw for stem, raw in gt.items()}, root / "gt.json")
    return {"out": root / "out", "png": (str(gt_dir), classes), "coco": (str(root / "gt.json"), None)}


@pytest.mark.parametrize("layout", ["png", "coco"])
@pytest.mark.parametrize("protocol", ["detectron2", "mmseg"])
def test_ray_tasks_equal_the_single_process_evaluation(
    unfinished_run: dict, layout: str, protocol: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The same integer confusion matrix, metrics.json and warnings as the single-process code, on the rows a
    resumed run counts (newest generation, a path once) and on the matching's corner cases."""
    spec, classes = unfinished_run[layout]
    expected = reference_evaluate(unfinished_run["out"], spec, classes, protocol, tmp_path / "reference.json")
    expected_warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    result = evaluate_run(unfinished_run["out"], spec, classes, protocol, metrics_path=tmp_path / "ray.json")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]

    np.testing.assert_array_equal(result["confusion_matrix"], expected["confusion_matrix"])
    assert result["confusion_matrix"].dtype == np.int64
    reference_file = json.loads((tmp_path / "reference.json").read_text())
    written = json.loads((tmp_path / "ray.json").read_text())
    assert reference_file.pop("metrics_path") != written.pop("metrics_path")
    assert written == reference_file
    assert warnings == expected_warnings and len(warnings) >= 3
    matching = written["matching"]
    assert matching["matched"] == written["num_images"] == 13  # 12 images but img_2 (failed since), shared twice
    assert matching["ground_truth_matched_by_several_predictions"] == 1
    assert matching["predictions_without_ground_truth"] == 7
    assert list(matching["ground_truth_matched_by_several_predictions_examples"].values()) == [
        ["/data/a/shared.jpg", "/data/b/shared.jpg"]
    ]


@pytest.mark.parametrize("group", [2, 3, 16])
def test_merges_keep_the_order_and_hold_a_few_items(group: int) -> None:
    """Joined ``group`` at a time, the items held are always the whole sequence in order, and as many as the digit
    sum of its length in base ``group``: at most ``group - 1`` per digit, whatever the length."""
    merges = []

    def merge(items: list[list[int]]) -> list[int]:
        merges.append(len(items))
        return [x for item in items for x in item]

    merged = _Merged(group, merge)
    for n in range(1, 1001):
        merged.add([n - 1])
        digits = np.base_repr(n, group)
        assert len(merged.held()) == sum(int(d, group) for d in digits) <= (group - 1) * len(digits)
    assert [x for item in merged.held() for x in item] == list(range(1000))
    assert set(merges) == {group}


class _Recording:
    """A Ray remote function whose calls' arguments are recorded before they are made."""

    def __init__(self, function, calls: list):
        self._function = function
        self._calls = calls

    def remote(self, *args):
        self._calls.append(args)
        return self._function.remote(*args)


def test_the_driver_holds_a_few_references_to_the_files_matches(
    unfinished_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files' matches are merged in tasks, two files' at a time here: the summary receives two references for
    the run's five files, not five, and metrics.json (matching summary and seeded sample estimate included) and the
    confusion matrix are those of the files' matches unmerged."""
    spec, classes = unfinished_run["png"]
    results = {}
    for group in (2, 6):  # 6: more than the run's 5 files, nothing merged
        merges: list = []
        summaries: list = []
        monkeypatch.setattr(pipeline.evaluate, "MERGE_GROUP", group)
        monkeypatch.setattr(pipeline.evaluate, "merge_matches", _Recording(pipeline.evaluate.merge_matches, merges))
        monkeypatch.setattr(pipeline.evaluate, "summarise", _Recording(pipeline.evaluate.summarise, summaries))
        metrics = tmp_path / f"{group}.json"
        result = evaluate_run(
            unfinished_run["out"], spec, classes, metrics_path=metrics, sample_estimate=True, seed=3, progress=False
        )
        monkeypatch.undo()
        [(_, files, matches, *_)] = summaries
        results[group] = (result["confusion_matrix"], json.loads(metrics.read_text()), len(matches), merges)
        assert len(files) == 5
    merged_matrix, merged_file, held, merges = results[2]
    matrix, written, unmerged_held, no_merges = results[6]
    assert (held, unmerged_held) == (2, 5)  # 5 = 101 in base 2: a merge of the first four files' and the fifth's
    assert [len(args) for args in merges] == [2, 2, 2] and no_merges == []
    np.testing.assert_array_equal(merged_matrix, matrix)
    assert merged_file.pop("metrics_path") != written.pop("metrics_path")
    assert merged_file == written and merged_file["sample_estimate"]["sample_images"] == 13


def test_sample_estimate_through_the_job(run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``jobs/evaluate.py --sample-estimate`` on a run whose ground truth covers 5 of its 6 images: the estimate
    with its interval, the sample and run sizes, printed and in metrics.json; without the flag, a note."""
    job = runpy.run_path(str(ROOT / "jobs" / "evaluate.py"))
    command = ["--predictions", str(run["out"]), "--gt", str(run["gt_dir"]), "--gt-classes", str(run["classes"])]
    metrics = tmp_path / "metrics.json"
    result = job["main"](job["parse_args"]([*command, "--metrics", str(metrics), "--sample-estimate", "--seed", "5"]))
    printed = capsys.readouterr()
    estimate = json.loads(metrics.read_text())["sample_estimate"]
    assert estimate == _json_rounded(result["sample_estimate"])
    assert (estimate["sample_images"], estimate["run_images"]) == (N_IMAGES, N_IMAGES + 1)
    assert (estimate["resamples"], estimate["seed"], estimate["confidence"]) == (1000, 5, 0.95)
    for name in ("mIoU", "pACC"):
        assert estimate[name]["estimate"] == pytest.approx(result[name], abs=1e-9)
        assert estimate[name]["low"] <= estimate[name]["estimate"] <= estimate[name]["high"]
    assert f"sample estimate from {N_IMAGES} of the run's {N_IMAGES + 1} images (95% confidence" in printed.out
    assert f"mIoU  {estimate['mIoU']['estimate']:6.2f}   [{estimate['mIoU']['low']:6.2f}," in printed.out
    assert "note:" not in printed.err

    job["main"](job["parse_args"]([*command, "--metrics", str(tmp_path / "plain.json")]))
    assert "--sample-estimate gives confidence intervals" in capsys.readouterr().err
    assert "sample_estimate" not in json.loads((tmp_path / "plain.json").read_text())


def _json_rounded(value: dict) -> dict:
    return json.loads(json.dumps(value))


class _Truths(GroundTruth):
    """Ground truth of given label maps (class indices, IGNORE), by key."""

    class_names = ("a", "b", "c")
    description = "test"

    def __init__(self, maps: dict[str, np.ndarray]):
        self._maps = maps

    def keys(self) -> list:
        return list(self._maps)

    def path_of(self, key) -> str:
        return str(key)

    def read(self, key) -> np.ndarray:
        return self._maps[key]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_pixel_counts_equal_the_confusion_matrix_and_refuse_what_it_refuses(dtype: type) -> None:
    """One bincount per image (ignored pixels in a row of their own) counts what ConfusionMatrix.update counts:
    classes mapped to the ground truth's, vocabulary classes without one and "unlabeled" (255 of an 8-bit map,
    65535 of a 16-bit one, where 255 is a class) as wrong; a ground-truth value outside the classes is refused
    with ConfusionMatrix's message."""
    rng = np.random.default_rng(3)
    k = 3
    lookup = np.full(65536, k, np.int64)
    lookup[[0, 1, 2, 255]] = [2, 0, 1, 1]  # vocabulary class -> ground-truth class; 3, 4, ... have none
    unlabeled = np.iinfo(dtype).max
    values = [0, 1, 2, 3, 4, unlabeled] + ([255] if dtype == np.uint16 else [])
    label_map = rng.choice(values, size=(23, 31)).astype(dtype)
    truth = rng.choice([0, 1, 2, IGNORE], size=(23, 31)).astype(np.int32)
    gt = _Truths({"t": truth, "big": np.full((23, 31), k, np.int32), "low": np.full((23, 31), -5, np.int32)})
    counter = PixelCounter(Scoring(lookup, k, IGNORE, per_image=False))

    expected = ConfusionMatrix(k, IGNORE)
    predicted = lookup[label_map]
    predicted[label_map == unlabeled] = k
    expected.update(predicted, truth)
    counts = counter.count(gt, "t", "t.jpg", label_map)
    assert counts.shape == (counter.bins,) and counts.sum() == truth.size, "ignored pixels counted apart"
    np.testing.assert_array_equal(counter.matrix(counts), expected.matrix)
    assert counter.matrix(counts).dtype == np.int64
    for key, value in (("big", k), ("low", -5)):
        message = f"ground truth '{key}': ground_truth has values outside [0, {k}) that are not ignore_index=-1: "
        message += str(value)
        with pytest.raises(GroundTruthError, match=f"^{re.escape(message)}$"):
            counter.count(gt, key, f"{key}.jpg", label_map)


def test_label_images_are_mapped_in_their_stored_type(tmp_path: Path) -> None:
    """8- and 16-bit label images stay in their stored type (no int64 copy of every pixel): the class lookup
    of the stored values equals the lookup of the same values widened."""
    values = LabelValues([3, 0, 255, 300], ignored_values=[7, 65535])
    rng = np.random.default_rng(0)
    for dtype, choices in ((np.uint8, [0, 3, 7, 255]), (np.uint16, [0, 3, 7, 255, 300, 65535])):
        raw = rng.choice(choices, size=(9, 11)).astype(dtype)
        Image.fromarray(raw).save(tmp_path / "label.png")
        stored = read_label_image(tmp_path / "label.png", "single-channel")
        assert stored.dtype == dtype
        np.testing.assert_array_equal(stored, raw)
        classes = values.classes(stored, "label.png", "hint")
        np.testing.assert_array_equal(classes, values.classes(raw.astype(np.int64), "label.png", "hint"))
        assert classes.dtype == np.int32
    with pytest.raises(GroundTruthError, match=r"name no class: 1 \(hint\)$"):
        values.classes(np.array([[1, 0]], np.uint8), "label.png", "hint")
