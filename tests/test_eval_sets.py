"""Readers of SAN's evaluation sets (pipeline.eval_sets): class lists, prepared layouts on tiny fake datasets,
the vocabulary / image-list writer and ``evaluate_run`` with ``--gt NAME:ROOT``."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from local_ray import local_ray  # noqa: F401
from PIL import Image

from pipeline.eval_sets import EVAL_SETS, EvalSetError, EvalSetSpec, get_eval_set, write_eval_set_inputs
from pipeline.eval_sets.reader import EvalSetGroundTruth
from pipeline.evaluate import evaluate_run
from pipeline.ground_truth import open_ground_truth
from pipeline.ground_truth.base import IGNORE, GroundTruthError
from pipeline.ground_truth.classes import normalise_class_name
from pipeline.label.containers import expand_container
from pipeline.label.inputs import image_id, resolve_inputs
from pipeline.outputs import RunOutput
from pipeline.segments import encode_label_map_png, label_map_segments
from pipeline.vocabulary import Vocabulary, load_vocabulary

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("jobs_benchmark_inputs", ROOT / "jobs" / "eval_set_inputs.py")
eval_set_inputs = importlib.util.module_from_spec(_spec)  # jobs/eval_set_inputs.py, under a name of its own
_spec.loader.exec_module(eval_set_inputs)

EXPECTED = {  # name: (classes, ignore, label extension, official image count)
    "ade150": (150, 255, ".png", 2000),
    "ade847": (847, 65535, ".tif", 2000),
    "pc59": (59, 255, ".png", 5105),
    "pc459": (459, 65535, ".tif", 5105),
    "voc20": (20, 255, ".png", 1449),
    "cocostuff171": (171, 255, ".png", 5000),
}
N_IMAGES = 3


def make_fake(spec: EvalSetSpec, root: Path, seed: int = 0, n: int = N_IMAGES) -> dict[Path, np.ndarray]:
    """A prepared split under ``root``: ``n`` jpgs with labels (random classes incl. the highest, ignore
    pixels), plus for VOC-20 extra JPEGImages without a label. Returns image path -> raw label array."""
    rng = np.random.default_rng(seed)
    images = root / spec.folder / spec.image_dir
    labels = root / spec.folder / spec.label_dir
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if spec.ignore_value == 255 else np.uint16
    made = {}
    for i in range(n):
        h, w = int(rng.integers(10, 24)), int(rng.integers(10, 24))
        stem = f"{spec.name}_val_{i:08d}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{stem}.jpg")
        raw = rng.integers(0, spec.num_classes, (h, w)).astype(dtype)
        raw[0, 0] = spec.num_classes - 1
        raw[rng.random((h, w)) < 0.1] = spec.ignore_value
        Image.fromarray(raw).save(labels / f"{stem}{spec.label_ext}")
        made[images / f"{stem}.jpg"] = raw
    if spec.name == "voc20":
        for i in range(2):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / f"2012_unlabeled_{i}.jpg")
    return made


def test_registry_facts() -> None:
    assert list(EVAL_SETS) == list(EXPECTED)
    for name, (classes, ignore, label_ext, count) in EXPECTED.items():
        spec = get_eval_set(name.upper())
        assert (len(spec.class_names), spec.num_classes, spec.ignore_value) == (classes, classes, ignore)
        assert (spec.label_ext, spec.image_ext, spec.expected_count) == (label_ext, ".jpg", count)
        keys = [normalise_class_name(n) for n in spec.class_names]
        assert len(set(keys)) == classes, "duplicate class names"
        assert not any(":" in n or "#" in n or n != " ".join(n.split()) for n in spec.class_names)
        text = (ROOT / "pipeline" / "eval_sets" / f"{name}.txt").read_text(encoding="utf-8")
        assert text.split("\n")[:-1] == list(spec.class_names) and text.endswith("\n")
    ade150, ade847 = EVAL_SETS["ade150"].class_names, EVAL_SETS["ade847"].class_names
    assert ade150[:3] == ("wall", "building", "sky") and ade150[8] == "window" and ade150[-1] == "flag"
    assert ade150[6] == "road, route"  # comma-separated synonyms stay one name, as SAN encodes them
    assert ade847[:2] == ("wall", "building, edifice") and ade847[-1] == "adding machine, totalizer, totaliser"
    coco = EVAL_SETS["cocostuff171"].class_names
    assert coco[0] == "person" and coco[79] == "toothbrush" and coco[80] == "banner" and coco[-1] == "wood"
    assert "building-other" in coco and "desk-stuff" in coco
    assert EVAL_SETS["voc20"].class_names[-1] == "tv" and EVAL_SETS["pc59"].class_names[-1] == "wood"
    assert EVAL_SETS["pc459"].class_names[:2] == ("accordion", "aeroplane")
    with pytest.raises(EvalSetError, match="unknown benchmark"):
        get_eval_set("ade151")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_pairs_and_reader(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = EVAL_SETS[name]
    made = make_fake(spec, tmp_path)
    pairs = spec.pairs(tmp_path)
    assert [image for image, _ in pairs] == sorted(made) == spec.image_paths(tmp_path)
    for image, label in pairs:
        assert label == spec.label_path(image, tmp_path) and label.suffix == EXPECTED[name][2] and label.is_file()
    assert "official" in capsys.readouterr().err  # 3 images, not the official count

    gt = open_ground_truth(f"{name}:{tmp_path}")
    assert isinstance(gt, EvalSetGroundTruth) and gt.class_names == spec.class_names
    assert gt.raw_ignore == [spec.ignore_value] and len(gt.keys()) == N_IMAGES
    for image, raw in made.items():
        key = gt.match(str(image))
        labels = gt.read(key)
        assert labels.dtype == np.int32 and labels.shape == raw.shape
        assert np.array_equal(labels == IGNORE, raw == spec.ignore_value)
        keep = raw != spec.ignore_value
        assert np.array_equal(labels[keep], raw[keep].astype(np.int32))
    assert gt.match(str(tmp_path / "elsewhere" / "unrelated.jpg")) is None
    # the dataset's own folder works as the root too
    assert len(open_ground_truth(f"{name}:{tmp_path / spec.folder}").keys()) == N_IMAGES


def test_reader_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = EVAL_SETS["pc459"]
    make_fake(spec, tmp_path)
    with pytest.raises(GroundTruthError, match="gt_classes does not apply"):
        open_ground_truth(f"pc459:{tmp_path}", gt_classes="classes.txt")
    with pytest.raises(GroundTruthError, match="ignore_index 0"):
        open_ground_truth(f"pc459:{tmp_path}", ignore_index=0)
    assert open_ground_truth(f"pc459:{tmp_path}", ignore_index=65535).raw_ignore == [65535]
    with pytest.raises(EvalSetError, match="datasets root"):
        open_ground_truth(f"pc459:{tmp_path / 'missing'}")
    with pytest.raises(GroundTruthError, match="no label folder"):
        open_ground_truth(f"ade150:{tmp_path}")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    gt = open_ground_truth("pc459:")  # empty location: $DETECTRON2_DATASETS
    label_folder = spec.label_folder(tmp_path)
    bad = np.array([[0, 459, 65535]], dtype=np.uint16)  # 459 is no class (0..458)
    Image.fromarray(bad).save(label_folder / "bad.tif")
    Image.fromarray(np.array([[3, -1]], dtype=np.int32)).save(label_folder / "signed.tif")  # -1 = 0 - 1
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(label_folder / "rgb.tif")
    with pytest.raises(GroundTruthError, match=r"name no class: 459 \(pc459 classes are 0..458"):
        gt.read("bad.tif")
    assert gt.read("signed.tif").tolist() == [[3, IGNORE]]
    with pytest.raises(GroundTruthError, match="'RGB' image"):
        gt.read("rgb.tif")


@pytest.mark.parametrize("name", ["voc20", "ade847"])
def test_write_inputs_and_cli(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = EVAL_SETS[name]
    made = make_fake(spec, tmp_path / "datasets")
    written = write_eval_set_inputs(name, tmp_path / "datasets", tmp_path / "work")
    assert written.num_images == N_IMAGES and written.warnings and "official" in written.warnings[0]
    vocabulary = load_vocabulary(written.vocab_path)
    assert vocabulary.names == spec.class_names and not any(vocabulary.synonyms)
    lines = written.images_path.read_text(encoding="utf-8").splitlines()
    assert lines == [str(p.absolute()) for p in sorted(made)]  # VOC: unlabeled JPEGImages left out
    [listing] = resolve_inputs(str(written.images_path)).containers  # a list file: expanded in Ray tasks
    assert [item.image_path for item in expand_container(listing)] == lines

    args = eval_set_inputs.parse_args([name, "--root", str(tmp_path / "datasets"), "--out", str(tmp_path / "c")])
    assert eval_set_inputs.main(args) == 0
    out = capsys.readouterr()
    assert f"{N_IMAGES} images" in out.out and f"--gt {name}:" in out.out and "official" in out.err
    assert (tmp_path / "c" / "vocab.txt").read_text() == written.vocab_path.read_text()
    assert eval_set_inputs.main(eval_set_inputs.parse_args(["--list"])) == 0
    assert "cocostuff171" in capsys.readouterr().out
    with pytest.raises(EvalSetError, match="no label folder"):
        write_eval_set_inputs("pc59", tmp_path / "datasets", tmp_path / "w2")


@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("name", ["ade150", "ade847"])
def test_evaluate_run_with_benchmark_scheme(name: str, tmp_path: Path) -> None:
    """A fake run over the benchmark's images, predictions = ground truth with some pixels wrong, scored
    through ``--gt NAME:ROOT`` and checked against per-class IoUs computed with boolean masks."""
    spec = EVAL_SETS[name]
    made = make_fake(spec, tmp_path / "datasets", seed=1)
    vocabulary = Vocabulary(spec.class_names, tuple(() for _ in spec.class_names))
    rng = np.random.default_rng(2)
    dtype = np.uint8 if spec.num_classes < 255 else np.uint16
    unlabeled = int(np.iinfo(dtype).max)
    rows, preds, gts = [], [], []
    for image, raw in made.items():
        pred = np.where(raw == spec.ignore_value, 0, raw).astype(dtype)
        wrong = rng.random(raw.shape) < 0.2
        pred[wrong] = rng.integers(0, spec.num_classes, int(wrong.sum()))
        pred[rng.random(raw.shape) < 0.05] = unlabeled
        h, w = pred.shape
        rows.append(
            {
                "image_path": str(image),
                "image_id": image_id(str(image)),
                "width": w,
                "height": h,
                "label_map_png": encode_label_map_png(pred, ignore_value=unlabeled),
                "segments": label_map_segments(
                    pred, None, vocabulary.names, vocabulary.category_ids, ignore_value=unlabeled
                ),
            }
        )
        preds.append(np.where(pred == unlabeled, -9, pred.astype(np.int64)).ravel())
        gts.append(np.where(raw == spec.ignore_value, -1, raw.astype(np.int64)).ravel())
    output = RunOutput(tmp_path / "out")
    output.write_shard(rows, [])
    output.finalize(vocabulary, {"vocabulary": vocabulary.to_json()})

    result = evaluate_run(tmp_path / "out", f"{name}:{tmp_path / 'datasets'}")
    p, g = np.concatenate(preds), np.concatenate(gts)
    valid = g >= 0
    ious = []
    for c in np.unique(g[valid]):
        inter = int(((p == c) & (g == c) & valid).sum())
        union = int((((p == c) | (g == c)) & valid).sum())
        ious.append(inter / union)
        assert result[f"IoU-{spec.class_names[c]}"] == pytest.approx(100 * inter / union)
    assert result["mIoU"] == pytest.approx(100 * float(np.mean(ious)))
    assert result["pACC"] == pytest.approx(100 * float(((p == g) & valid).sum() / valid.sum()))
    assert result["num_images"] == N_IMAGES and result["pixels"] == int(valid.sum())
    assert result["ignore_values"] == [spec.ignore_value]
    assert result["class_alignment"]["matched"] == spec.num_classes
    assert not result["class_alignment"]["vocabulary_not_in_ground_truth"]
    absent = next(n for c, n in enumerate(spec.class_names) if c not in set(g[valid].tolist()))
    assert math.isnan(result[f"IoU-{absent}"])  # detectron2 protocol: classes absent from the ground truth
