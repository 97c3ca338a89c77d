"""Review what matters: ``jobs/review.py --select KIND:N[:seed=S]`` (pipeline/review/selection.py). Each kind is
checked against a plain loop over a small run's rows as ``RunOutput.read_predictions`` keeps them (the run's row
rules: newest job, a path once), the union and the samples' tags on a loaded partial dataset, and what export
and training read of a partial dataset (``fiftyone:NAME`` its images, ``run+fiftyone:NAME`` the whole run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_ray import local_ray  # noqa: F401
from run_builder import build_run, isolate_fiftyone

isolate_fiftyone()  # before anything imports fiftyone

import fiftyone as fo  # noqa: E402

from pipeline.exports.reviewed import export_dataset  # noqa: E402
from pipeline.label.inputs import image_id  # noqa: E402
from pipeline.output_shards import ERROR_SCHEMA, PREDICTION_SCHEMA, write_shard_file  # noqa: E402
from pipeline.outputs import RunOutput  # noqa: E402
from pipeline.review import selection as selection_module  # noqa: E402
from pipeline.review.dataset import default_dataset_name, load_run, selection_info  # noqa: E402
from pipeline.review.errors import ReviewError  # noqa: E402
from pipeline.review.mask_values import label_map_to_mask  # noqa: E402
from pipeline.review.selection import parse_select, select_images  # noqa: E402
from pipeline.run_images import iter_run_images  # noqa: E402
from pipeline.segments import decode_label_map_png, encode_label_map_png, label_map_segments  # noqa: E402
from pipeline.sources import open_label_source  # noqa: E402
from pipeline.training_data import open_training_data  # noqa: E402
from pipeline.vocabulary import parse_vocabulary  # noqa: E402
from san.errors import OptionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB = parse_vocabulary("cat\nsky: heaven\ngrass\ntraffic light\nboat\n")
GT_CLASSES_TEXT = "Grass\n# void\n  Traffic   Light \nsky\ncat\nroad\n"
N_IMAGES = 12  # the last two have no ground truth
MASK = (1 << 64) - 1


def _splitmix(image_id: int, seed: int) -> int:
    """splitmix64 of ``id + (seed + 1) * golden`` in Python integers: the random kinds' key, written apart."""
    z = (image_id + (seed + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _row(path: str, classes: list[int], rng: np.random.Generator, generation: int | None = 1) -> dict:
    """A prediction row of a 6x6 label map holding ``classes`` (none: every pixel unlabeled), random scores."""
    label_map = np.full((6, 6), 255, dtype=np.uint8)
    for i, c in enumerate(classes):
        label_map[i * 2 : i * 2 + 2] = c
    segments = label_map_segments(label_map, rng.uniform(0.1, 1.0, (6, 6)), VOCAB.names, VOCAB.category_ids, 255)
    return {
        "image_path": path,
        "image_id": image_id(path),
        "width": 6,
        "height": 6,
        "label_map_png": encode_label_map_png(label_map, ignore_value=255),
        "segments": segments,
        "generation": generation,
    }


@pytest.fixture(scope="module")
def rows_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 40 images of one or two classes in four files, with what the row rules are for: ``dup`` twice
    in one job (its first row counts), ``again`` labeled by job 1 and again by job 2 (job 2's row counts),
    ``failed`` labeled by job 1 and failed by job 2 (no row counts), ``empty`` without segments, and a file
    of an older version without the ``generation`` column."""
    out = tmp_path_factory.mktemp("rows") / "out"
    rng = np.random.default_rng(5)
    rows = [_row(f"/img/{i:02d}.png", sorted(rng.choice(5, size=1 + i % 2, replace=False)), rng) for i in range(40)]
    rows += [_row("/img/dup.png", [1], rng), _row("/img/again.png", [2], rng), _row("/img/failed.png", [3], rng)]
    rows.append(_row("/img/empty.png", [], rng))
    later = [_row("/img/dup.png", [4], rng), _row("/img/again.png", [0, 4], rng, generation=2)]
    for part in (rows[:15], rows[15:30], rows[30:], later):
        write_shard_file(pa.Table.from_pylist(part, schema=PREDICTION_SCHEMA), out / "predictions")
    old = [_row(f"/img/old_{i}.png", [i % 5], rng) for i in range(3)]
    write_shard_file(
        pa.Table.from_pylist(old, schema=PREDICTION_SCHEMA).drop_columns(["generation"]), out / "predictions"
    )
    errors = [{"image_path": "/img/failed.png", "error": "cannot decode", "generation": 2}]
    write_shard_file(pa.Table.from_pylist(errors, schema=ERROR_SCHEMA), out / "errors")
    return out


def _reference(out: Path) -> list[dict]:
    """The run's rows as ``RunOutput.read_predictions`` keeps them (its own, loop-based row rules)."""
    return RunOutput(out).read_predictions(["image_path", "image_id", "segments"]).to_pylist()


def _chosen(out: Path, *specs: str) -> set[str]:
    return set(select_images(out, [parse_select(s) for s in specs]).images)


def test_the_run_rules_hold(rows_run: Path) -> None:
    rows = _reference(rows_run)
    paths = {r["image_path"] for r in rows}
    assert "/img/failed.png" not in paths and {"/img/dup.png", "/img/again.png", "/img/old_0.png"} <= paths
    selection = select_images(rows_run, [parse_select(f"random:{len(rows) + 10}")])
    assert selection.run_images == len(rows) and set(selection.images) == paths
    read = {r["image_path"]: r["segments"] for r in selection.iter_rows()}
    assert read == {r["image_path"]: r["segments"] for r in rows}  # the kept rows, read in full


def test_least_confident(rows_run: Path) -> None:
    rows = [r for r in _reference(rows_run) if r["segments"]]  # an image without segments has no score
    ranked = sorted(rows, key=lambda r: (float(np.mean([s["score"] for s in r["segments"]])), r["image_id"]))
    for n in (1, 7, len(rows) + 5):
        assert _chosen(rows_run, f"least-confident:{n}") == {r["image_path"] for r in ranked[:n]}
    assert "/img/empty.png" not in _chosen(rows_run, "least-confident:1000")


def test_random_is_seeded_reproducible_and_nested(rows_run: Path, tmp_path: Path) -> None:
    rows = _reference(rows_run)
    for seed in (0, 3):
        ranked = sorted(rows, key=lambda r: (_splitmix(r["image_id"], seed), r["image_id"]))
        assert _chosen(rows_run, f"random:9:seed={seed}") == {r["image_path"] for r in ranked[:9]}
    assert _chosen(rows_run, "random:9") == _chosen(rows_run, "random:9:seed=0")
    assert _chosen(rows_run, "random:9:seed=1") != _chosen(rows_run, "random:9:seed=2")
    assert _chosen(rows_run, "random:4:seed=1") < _chosen(rows_run, "random:9:seed=1")
    # The same images in other files (one per image, other names): the same sample.
    for row in rows:
        table = pa.Table.from_pylist([{**row, "generation": 1}], schema=PREDICTION_SCHEMA.remove(4))
        write_shard_file(table.append_column("label_map_png", pa.array([b""], pa.binary())), tmp_path / "predictions")
    assert _chosen(tmp_path, "random:9:seed=1") == _chosen(rows_run, "random:9:seed=1")


@pytest.mark.parametrize("pending", [None, 1], ids=["one-prune", "prune-after-each-file"])
def test_per_class(rows_run: Path, pending: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if pending is not None:  # keep N candidates per class after every file, as a big run does every 2**18 segments
        monkeypatch.setattr(selection_module, "_PENDING", pending)
        monkeypatch.setattr(selection_module, "_GROUP", 1)
    rows = _reference(rows_run)
    expected = set()
    for category in VOCAB.category_ids:
        holding = [r for r in rows if category in {s["category_id"] for s in r["segments"]}]
        holding.sort(key=lambda r: (_splitmix(r["image_id"], 4), r["image_id"]))
        expected |= {r["image_path"] for r in holding[:3]}
    assert _chosen(rows_run, "per-class:3:seed=4") == expected
    assert len(expected) > 3 * 2  # the classes chose different images: a real check


def test_the_scan_reads_no_path_but_the_chosen_rows(rows_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice is made from fixed-width NumPy columns (id, generation, mean score) of the prediction files;
    ``image_path`` is read only from the files of the chosen rows (before: every path, held in Arrow tables that
    were grouped and joined, 1.3 GB at 1M images)."""
    reads: list[tuple[str, list[str]]] = []
    init, read = pq.ParquetFile.__init__, pq.ParquetFile.read

    def spy_init(self: pq.ParquetFile, source: object, *args: object, **kwargs: object) -> None:
        init(self, source, *args, **kwargs)
        self.spied_source = str(source)

    def spy_read(self: pq.ParquetFile, columns: list[str] | None = None, *args: object, **kwargs: object) -> pa.Table:
        reads.append((getattr(self, "spied_source", ""), list(columns or [])))
        return read(self, columns, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "__init__", spy_init)
    monkeypatch.setattr(pq.ParquetFile, "read", spy_read)
    selection = select_images(rows_run, [parse_select("random:2"), parse_select("least-confident:1")])
    predictions = str(rows_run / "predictions")
    assert any(source.startswith(predictions) for source, _ in reads), "the spy sees the scan"
    with_paths = {source for source, columns in reads if source.startswith(predictions) and "image_path" in columns}
    assert with_paths <= {str(shard) for shard in selection.rows}


def test_reading_a_run_s_images_again_holds_nothing_per_listed_path(tmp_path: Path) -> None:
    """The review finds its chosen images in the run's input (``_media_files``) without holding the listing: a
    list file's paths are not kept to name each once (before: a set of every path, 120 MB at 1M paths)."""
    paths = [str(tmp_path / "images" / f"{i:06d}.png") for i in range(20_000)]  # no file: error rows
    (tmp_path / "inputs.txt").write_text("\n".join(paths) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"input": str(tmp_path / "inputs.txt")}))
    tracemalloc.start()
    try:
        found = list(iter_run_images(run, {paths[-1]}, strict=False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == [] and peak < 500_000, f"{peak} bytes at the peak for a listing of {len(paths)} paths"


def test_union(rows_run: Path) -> None:
    specs = ["least-confident:3", "random:4:seed=1", "per-class:1:seed=2"]
    selection = select_images(rows_run, [parse_select(s) for s in specs])
    assert set(selection.images) == set().union(*(_chosen(rows_run, s) for s in specs))
    for path, number in selection.images.items():
        assert selection.tags[number] == [s for s in specs if path in _chosen(rows_run, s)]
    assert selection.info() == {
        "select": specs,
        "images": len(selection.images),
        "run_images": len(_reference(rows_run)),
    }


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cheapest:3",
        "random",
        "random:",
        "random:0",
        "random:x",
        "random:-3",
        "random:3:seed=-1",
        "random:3:sed=1",
        "random:3:seed=",
        "least-confident:3:seed=1",
        "lowest-miou:2:seed=1",
        "per-class:2:seed=1:x",
    ],
)
def test_bad_syntax_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(OptionError) as refused:
        parse_select(text)
    message = refused.value.template
    assert "\n" not in message and message.startswith(f"`select` {text!r}: ") and "KIND:N" in message


def test_canonical_spelling() -> None:
    assert [str(parse_select(t)) for t in ("random:5", "per-class:2:seed=7", "lowest-miou:9")] == [
        "random:5:seed=0",
        "per-class:2:seed=7",
        "lowest-miou:9",
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    return build_run(tmp_path_factory.mktemp("select"), VOCAB, N_IMAGES, 3, GT_CLASSES_TEXT, images_without_gt=2)


@pytest.fixture(scope="module")
def full(run):
    dataset = load_run(run.out, str(run.gt_dir), run.gt_classes, name=f"select-full-{os.getpid()}", max_class_views=0)
    yield dataset
    fo.delete_dataset(dataset.name)


@pytest.fixture(scope="module")
def partial(run, request: pytest.FixtureRequest):
    """The run's default dataset, loaded from a selection that ranks by mIoU (Ray tasks) and a random one."""
    request.getfixturevalue("local_ray")
    select = [parse_select("lowest-miou:3"), parse_select("random:4:seed=5")]
    dataset = load_run(run.out, str(run.gt_dir), run.gt_classes, select=select, max_class_views=0)
    yield dataset
    fo.delete_dataset(dataset.name)


def test_partial_dataset_holds_the_union_tagged(partial, full, run) -> None:
    assert partial.name == default_dataset_name(run.out)
    by_path = {s.image_path: s for s in full}
    scored = [(s.miou, s.image_id, s.image_path) for s in full if s.miou is not None]
    lowest = {path for _, _, path in sorted(scored)[:3]}
    randoms = _chosen(run.out, "random:4:seed=5")
    assert set(partial.values("image_path")) == lowest | randoms
    assert selection_info(partial) == {
        "select": ["lowest-miou:3", "random:4:seed=5"],
        "images": len(lowest | randoms),
        "run_images": N_IMAGES,
    }
    assert selection_info(full) is None
    for sample in partial:
        assert sample.tags == [
            t for t, s in (("lowest-miou:3", lowest), ("random:4:seed=5", randoms)) if sample.image_path in s
        ]
        same = by_path[sample.image_path]
        assert np.array_equal(sample.predictions.get_mask(), same.predictions.get_mask())
        assert np.array_equal(sample.predictions.get_mask(), label_map_to_mask(run.predictions[sample.image_path]))
        assert (sample.mean_score, sample.miou, sample.image_id) == (same.mean_score, same.miou, same.image_id)
    assert len(partial.match_tags("lowest-miou:3")) == 3


def test_lowest_miou_needs_ground_truth(run) -> None:
    with pytest.raises(ReviewError, match="select lowest-miou needs ground truth to score against: give gt"):
        load_run(run.out, name="never-made", select=[parse_select("lowest-miou:2")])
    assert not fo.dataset_exists("never-made")


def test_export_and_training_of_a_partial_dataset(partial, run, tmp_path: Path) -> None:
    """``fiftyone:NAME`` is the chosen images as reviewed; ``run+fiftyone:NAME`` the whole run, the chosen images
    as reviewed (an edit included) and the others as the run labeled them; the run's folder is refused."""
    sample, name = partial.first(), partial.name
    edited = sample.predictions.get_mask().copy()
    edited[:3, :3] = 1
    sample.predictions.mask = edited
    sample.save()
    try:
        alone = export_dataset(f"fiftyone:{partial.name}", tmp_path / "alone.json")
        assert alone["images"] == len(partial) and alone["edited_images"] == 1
        assert alone["selection"]["run_images"] == N_IMAGES
        whole = export_dataset(f"run+fiftyone:{partial.name}", tmp_path / "whole.json", tmp_path / "masks")
        assert whole["images"] == N_IMAGES and whole["edited_images"] == 1 and whole["selection"] is None
        coco = json.loads((tmp_path / "whole.json").read_text())
        assert sorted(i["file_name"] for i in coco["images"]) == sorted(run.predictions)
        run_coco = json.loads((run.out / "coco.json").read_text())
        others = set(run.predictions) - set(partial.values("image_path"))
        names = {i["id"]: i["file_name"] for i in coco["images"]}
        mine = sorted(
            (names[a["image_id"]], a["category_id"], a["score"])
            for a in coco["annotations"]
            if names[a["image_id"]] in others
        )
        run_names = {i["id"]: i["file_name"] for i in run_coco["images"]}
        theirs = sorted(
            (run_names[a["image_id"]], a["category_id"], a["score"])
            for a in run_coco["annotations"]
            if run_names[a["image_id"]] in others
        )
        assert mine == theirs  # the unselected images as the run labeled them
        with pytest.raises(
            ReviewError,
            match=rf"holds {len(partial)} of the run's {N_IMAGES} images.*fiftyone:{name} .*run\+fiftyone:{name}",
        ):
            export_dataset(run.out, tmp_path / "refused.json")
        assert not (tmp_path / "refused.json").exists()

        assert open_label_source(f"fiftyone:{partial.name}").count == len(partial)
        data = open_training_data(f"run+fiftyone:{partial.name}", "data", 255)
        assert len(data) == N_IMAGES == open_label_source(f"run+fiftyone:{partial.name}").count
        labels = {str(image): decode_label_map_png(png) for image, png in zip(data.images, data.labels, strict=True)}
        assert sorted(labels) == sorted(run.predictions)
        assert np.array_equal(labels[sample.image_path][:3, :3], np.zeros((3, 3)))  # value 1 = class index 0
        for path in others:
            assert np.array_equal(labels[path], run.predictions[path])
    finally:
        sample.predictions.mask = None
        sample.save()


def _review_job(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "review.py"), *args], capture_output=True, text=True, env=env
    )


def test_review_job_help_and_refusals(run) -> None:
    shown = _review_job("--help").stdout
    for text in (
        "--select KIND:N[:seed=S]",
        "least-confident:N",
        "random:N[:seed=S]",
        "per-class:N",
        "lowest-miou:N",
        "run+fiftyone:NAME",
        "mean score",
    ):
        assert text in shown, text
    bad = _review_job(str(run.out), "--select", "random:many")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --select 'random:many': N must be")
    assert bad.stderr.count("\n") == 1
    no_gt = _review_job(str(run.out), "--select", "lowest-miou:2", "--dataset", f"no-gt-{os.getpid()}")
    assert no_gt.returncode == 2 and no_gt.stderr.strip().splitlines()[-1] == (
        "error: --select lowest-miou needs ground truth to score against: give --gt"
    )
