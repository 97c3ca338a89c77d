"""Kept regions and relabeling (issue 27): SAN's vocabulary-free outputs of a labeling run give another vocabulary's
label maps without the image model, bit for bit those of a fresh run from fp32 regions; what keeps them and what
refuses to."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from local_ray import local_ray  # noqa: F401
from skimage import data
from varied_model import varied_tiny_model, write_photos

import san
from pipeline.label.inputs import image_id
from pipeline.label.options import LabelOptions
from pipeline.output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA, set_aside_name, shard_files, write_shard_file
from pipeline.outputs import MANIFEST, OutputConflictError, RunOutput
from pipeline.region_shards import REGION_SCHEMA, regions_row, stored_regions
from pipeline.relabel.options import RelabelOptions
from pipeline.relabel.source import SourceRun
from pipeline.vocabulary import parse_vocabulary
from san.errors import OptionError
from san.modeling.postprocess import ImageRegions
from san.predictor import Predictor, PromptClasses, RegionLabeler
from san.settings import PredictionSettings
from san.transforms import ResizeShortestEdge

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "tests" / "data" / "parity"
SOURCE_PROMPTS = ["person", "cat", "cup"]
# The new vocabulary: synonyms, a class's own minimum score, distractors, other templates.
NEW_VOCABULARY = "person: astronaut\ncat @ 0.3\ncoffee cup: mug\nflag\n"
NEW_OTHER = ("sky", "grass", "wall", "tree")
# Photos labeled at this short side: fast, and several classes per photo on both models.
RESIZE = ResizeShortestEdge(160, 2560)


def models() -> dict[str, san.SAN]:
    return {
        "parity": san.load_official(PARITY / "checkpoint.pth", PARITY / "config.json"),
        "varied": varied_tiny_model(),
    }


def photos() -> list[np.ndarray]:
    return [data.astronaut(), data.coffee(), data.chelsea()]


def kept(regions: ImageRegions, size: tuple[int, int], dtype: str) -> ImageRegions:
    """``regions`` through a ``REGION_SCHEMA`` row stored in ``dtype`` and back, as float32 (as relabel reads them)."""
    arrays = (regions.mask_preds.numpy(), regions.mask_embs.numpy())
    row = regions_row("x.png", 1, 1, dtype, *arrays, regions.padded_size, regions.image_size, size)
    pa.Table.from_pylist([row], schema=REGION_SCHEMA)  # the row fits the schema
    stored = stored_regions(row)
    assert stored.size == size and stored.padded_size == regions.padded_size
    arrays = [torch.from_numpy(np.array(a, np.float32)) for a in (stored.mask_preds, stored.mask_embs)]
    return ImageRegions(*arrays, stored.padded_size, stored.input_size)


def relabel_and_fresh(model: san.SAN, dtype: str) -> tuple[list, list]:
    """Each photo's labels from regions kept by a run with ``SOURCE_PROMPTS`` (stored in ``dtype``) relabeled with the
    new vocabulary and settings, and from a fresh prediction with those."""
    images = photos()
    source_settings = PredictionSettings(resize=RESIZE, batch_size=2)
    source = Predictor(copy.deepcopy(model), SOURCE_PROMPTS, settings=source_settings)
    kept_regions = zip(source.predict_regions(images), images, strict=True)
    regions = [kept(r, image.shape[:2], dtype) for (_, r), image in kept_regions]
    vocabulary = parse_vocabulary(NEW_VOCABULARY)
    settings = PredictionSettings(
        resize=RESIZE,
        min_score=0.05,
        class_min_scores=vocabulary.min_scores,
        other=NEW_OTHER,
        templates="imagenet",
        batch_size=2,
    )
    prompts, classes = list(vocabulary.prompts), list(vocabulary.prompt_to_class)
    fresh = Predictor(copy.deepcopy(model), prompts, classes, settings=settings).predict(images)
    text_only = Predictor(copy.deepcopy(model), prompts, classes, settings=settings)  # as relabel's driver does
    labeler = RegionLabeler(text_only.classifier.clone(), PromptClasses(prompts, classes, settings))
    return labeler.predict(regions, [image.shape[:2] for image in images]), fresh


@pytest.mark.parametrize("name", ["parity", "varied"])
def test_fp32_regions_relabel_bit_for_bit_like_a_fresh_prediction(name: str) -> None:
    relabeled, fresh = relabel_and_fresh(models()[name], "fp32")
    labels = set()
    for ours, theirs in zip(relabeled, fresh, strict=True):
        assert ours.label_map.dtype == theirs.label_map.dtype
        np.testing.assert_array_equal(ours.label_map, theirs.label_map)
        np.testing.assert_array_equal(ours.scores, theirs.scores)
        labels |= set(np.unique(theirs.label_map).tolist())
    assert len(labels - {255}) >= 2 and 255 in labels, f"{labels}: the test needs classes and unlabeled pixels"


def test_fp16_regions_relabel_nearly_like_a_fresh_prediction() -> None:
    relabeled, fresh = relabel_and_fresh(models()["varied"], "fp16")
    agree = sum(int((a.label_map == b.label_map).sum()) for a, b in zip(relabeled, fresh, strict=True))
    assert agree / sum(b.label_map.size for b in fresh) >= 0.99


def test_regions_and_their_class_logits_are_what_the_model_post_processes() -> None:
    model = models()["parity"]
    images = [torch.from_numpy(np.ascontiguousarray(p[:200, :300])).permute(2, 0, 1) for p in photos()]
    images[1] = images[1][:, :120, :]
    regions = model.regions(images, batch_size=2)
    outputs = model.predict_outputs(images, ["cat", "sky"], batch_size=2)
    for image, ours, theirs in zip(images, regions, outputs, strict=True):
        queries = model.config.side_adapter.num_queries
        assert ours.mask_embs.shape == (queries, model.classifier(["cat"]).shape[1])
        assert ours.image_size == tuple(image.shape[1:]) and ours.padded_size == theirs.padded_size
        assert torch.equal(ours.mask_preds, theirs.mask_preds)
        assert torch.equal(model.classify_regions(ours.mask_embs, ["cat", "sky"]), theirs.mask_logits)


def test_keep_regions_is_refused_with_tta_and_without_a_model(tmp_path: Path) -> None:
    common = {"vocab": "v.txt", "output": str(tmp_path / "out"), "smoke_test": True}
    with pytest.raises(OptionError, match="keep_regions cannot be used with tta: each test-time scale is its own"):
        LabelOptions(**common, keep_regions="fp16", tta=True)
    with pytest.raises(OptionError, match="keep_regions needs a model"):
        LabelOptions(**common, keep_regions="fp32", model="null")
    assert LabelOptions(**common, keep_regions="fp16").keep_regions == "fp16"


def write_run(folder: Path, identity: dict, status: str = "complete") -> None:
    """A run folder's ``manifest.json`` with ``identity``, as ``jobs/label.py`` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    options = {"vocab": "v.txt", "output": str(folder), "smoke_test": True}
    manifest = {"status": status, "identity": identity, "options": options, "generation": 1}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_relabel_refuses_what_is_no_finished_run_with_regions(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(OptionError, match="is not a labeling run's folder"):
        SourceRun.open(tmp_path / "images")
    write_run(tmp_path / "running", {"keep_regions": "fp32"}, status="interrupted")
    with pytest.raises(OptionError, match="is not complete .* rerun its labeling command to finish it"):
        SourceRun.open(tmp_path / "running")
    write_run(tmp_path / "old", {"vocabulary": "x"})  # a run of a version that kept no regions
    with pytest.raises(OptionError, match="was labeled without --keep-regions, so it has no regions to relabel"):
        SourceRun.open(tmp_path / "old")
    with pytest.raises(OptionError, match="output .* is the run being relabeled"):
        RelabelOptions(run=str(tmp_path / "old"), vocab="v.txt", output=str(tmp_path / "old"))


def test_relabel_says_in_one_line_which_option_a_run_lacks(tmp_path: Path) -> None:
    write_run(tmp_path / "labels", {"vocabulary": "x", "keep_regions": None})
    (tmp_path / "vocab.txt").write_text("cat\n")
    command = [sys.executable, "jobs/relabel.py", str(tmp_path / "labels"), "--vocab", str(tmp_path / "vocab.txt")]
    result = subprocess.run(
        [*command, "--output", str(tmp_path / "new")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: the run ")
    assert "was labeled without --keep-regions" in result.stderr and "jobs/label.py --keep-regions" in result.stderr
    assert not (tmp_path / "new").exists()


def test_a_resumed_run_keeps_its_regions_setting(tmp_path: Path) -> None:
    identity = {"vocabulary": "x", "model": "random:san_tiny"}
    write_run(tmp_path / "old", identity)  # recorded before keep_regions existed: it kept none
    with pytest.raises(OutputConflictError, match='keep_regions null \\(this command: "fp16"\\)'):
        RunOutput(tmp_path / "old").check_compatible({**identity, "keep_regions": "fp16"})
    RunOutput(tmp_path / "old").check_compatible({**identity, "keep_regions": None})
    write_run(tmp_path / "fp32", {**identity, "keep_regions": "fp32"})
    with pytest.raises(OutputConflictError, match='keep_regions "fp32" \\(this command: null\\)'):
        RunOutput(tmp_path / "fp32").check_compatible({**identity, "keep_regions": None})


def shard_rows(paths: list[str], generation: int) -> tuple[pa.Table, pa.Table]:
    """Prediction and regions rows (tiny arrays) of ``paths``, of job ``generation``."""
    sizes = {"width": 4, "height": 3, "segments": [], "generation": generation}
    rows = [{"image_path": p, "image_id": image_id(p), **sizes} for p in paths]
    predictions = pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)
    arrays = (np.zeros((2, 1, 1)), np.zeros((2, 3)), (16, 16), (3, 4), (3, 4))
    regions = [regions_row(p, image_id(p), generation, "fp16", *arrays) for p in paths]
    return predictions, pa.Table.from_pylist(regions, schema=REGION_SCHEMA)


def regions_keys(output: RunOutput) -> list[tuple[str, int]]:
    tables = [pq.read_table(f, columns=["image_path", "generation"]) for f in shard_files(output.regions_dir)]
    return sorted((r["image_path"], r["generation"]) for t in tables for r in t.to_pylist())


def test_the_merge_keeps_each_images_regions_of_its_current_predictions_only(tmp_path: Path) -> None:
    output = RunOutput(tmp_path)
    no_errors = ERROR_SCHEMA.empty_table()
    predictions, regions = shard_rows(["a", "b"], 1)
    output.write_tables(predictions, no_errors, regions)
    write_shard_file(shard_rows(["c", "d"], 1)[1], output.regions_dir)  # a job stopped before the predictions file
    predictions, regions = shard_rows(["a"], 2)  # a's file changed: labeled again
    output.write_tables(predictions, no_errors, regions)
    predictions, regions = shard_rows(["c"], 2)
    d_failed = pa.Table.from_pylist([{"image_path": "d", "error": "bad", "generation": 2}], schema=ERROR_SCHEMA)
    output.write_tables(predictions, d_failed, regions)
    assert len(regions_keys(output)) == 6
    output.finalize(parse_vocabulary("cat\n"), {})
    assert regions_keys(output) == [("a", 2), ("b", 1), ("c", 2)]
    assert sorted(f.name for f in shard_files(output.regions_dir)) == sorted(
        f.name for f in shard_files(output.predictions_dir)
    ), "each regions file beside the predictions file of its rows"


def test_a_damaged_regions_file_has_its_images_labeled_again(tmp_path: Path) -> None:
    output = RunOutput(tmp_path)
    predictions, regions = shard_rows(["a", "b"], 1)
    output.write_tables(predictions, ERROR_SCHEMA.empty_table(), regions)
    [shard] = shard_files(output.regions_dir)
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    moved = output.set_aside_damaged()
    assert set(moved) == {shard, output.predictions_dir / shard.name}
    assert set_aside_name(shard).exists() and len(output.labeled_ids()[0]) == 0


def read_run(folder: Path) -> tuple[dict[str, dict], dict]:
    """A run's prediction rows by path (label-map PNG bytes, segments, sizes) and its ``coco.json``."""
    columns = ["image_path", "image_id", "width", "height", "label_map_png", "segments", "image_fingerprint"]
    rows = RunOutput(folder).read_predictions(columns).to_pylist()
    return {row["image_path"]: row for row in rows}, json.loads((folder / "coco.json").read_text())


def coco_content(coco: dict) -> dict:
    """A ``coco.json`` without its order (images and annotations in the order of the files the jobs wrote)."""
    annotations = [{k: v for k, v in a.items() if k != "id"} for a in coco["annotations"]]
    return {
        **coco,
        "images": sorted(coco["images"], key=lambda image: image["id"]),
        "annotations": sorted(annotations, key=lambda a: (a["image_id"], a["category_id"])),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["parity", "varied"])
@pytest.mark.usefixtures("local_ray")
def test_relabel_writes_the_run_a_fresh_label_run_writes(tmp_path: Path, name: str) -> None:
    from pipeline.label.job import run_label_job
    from pipeline.relabel.job import run_relabel_job
    from pipeline.segments import decode_label_map_png

    if name == "parity":
        model = {"model": str(PARITY / "checkpoint.pth"), "config": str(PARITY / "config.json")}
    else:
        san.save_checkpoint(varied_tiny_model(), tmp_path / "varied.safetensors")
        model = {"model": str(tmp_path / "varied.safetensors")}
    write_photos(tmp_path / "images")
    (tmp_path / "source.txt").write_text("\n".join(SOURCE_PROMPTS))
    (tmp_path / "new.txt").write_text(NEW_VOCABULARY)
    (tmp_path / "other.txt").write_text("\n".join(NEW_OTHER))
    common = {"input": str(tmp_path / "images"), "short_side": RESIZE.short_side, "batch_size": 2, "progress": False}
    source = run_label_job(
        LabelOptions(vocab=str(tmp_path / "source.txt"), output=str(tmp_path / "source"), **model, **common,
                     other="none", keep_regions="fp32")
    )  # fmt: skip
    assert source["counts"]["labeled"] == 3 and len(shard_files(tmp_path / "source" / "regions")) == 1
    new = {"other": str(tmp_path / "other.txt"), "min_score": 0.05, "templates": "imagenet"}
    relabel = {"run": str(tmp_path / "source"), "vocab": str(tmp_path / "new.txt"), "progress": False, **new}
    output = tmp_path / "relabeled"
    if name == "varied":  # --limit, then the rest: the second job resumes the first
        first = run_relabel_job(RelabelOptions(**relabel, output=str(output), limit=1))
        assert first["counts"]["new_labeled"] == 1 and first["counts"]["labeled"] == 1
    relabeled = run_relabel_job(RelabelOptions(**relabel, output=str(output)))
    skipped = 1 if name == "varied" else 0
    assert relabeled["counts"] | {"listed": 3, "skipped": skipped, "new_labeled": 3 - skipped} == relabeled["counts"]
    assert relabeled["relabeled_from"]["run"] == str((tmp_path / "source").resolve())
    assert relabeled["input"] == source["input"] and relabeled["generation"] == (2 if name == "varied" else 1)
    fresh = run_label_job(LabelOptions(vocab=str(tmp_path / "new.txt"), output=str(tmp_path / "fresh"), **model,
                                       **common, **new))  # fmt: skip
    assert relabeled["identity"] == fresh["identity"], "the relabeled run is the fresh run's, and resumes like it"
    assert not (tmp_path / "fresh" / "regions").exists(), "a run without keep_regions keeps no regions"

    ours, our_coco = read_run(output)
    theirs, their_coco = read_run(tmp_path / "fresh")
    assert ours.keys() == theirs.keys() and len(ours) == 3
    labels = set()
    for path, row in theirs.items():
        assert ours[path] == row, path  # label-map PNG bytes, segments (scores included), fingerprint
        labels |= set(np.unique(decode_label_map_png(row["label_map_png"])).tolist())
    assert len(labels - {255}) >= 2 and 255 in labels, f"{labels}: the test needs classes and unlabeled pixels"
    assert coco_content(our_coco) == coco_content(their_coco)
    before, _ = read_run(tmp_path / "source")
    assert any(before[path]["label_map_png"] != row["label_map_png"] for path, row in ours.items())
    # The source's kept regions, as the label job wrote them, searched: each image once, its region inside it.
    from pipeline.region_search import search_run

    hits = search_run(tmp_path / "source", "forklift", top=5)
    assert sorted(hit.image_path for hit in hits) == sorted(ours) and all(0 <= hit.score <= 1 for hit in hits)
    assert all(hit.mask.shape == decode_label_map_png(ours[hit.image_path]["label_map_png"]).shape for hit in hits)
