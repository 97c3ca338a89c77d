"""Review in FiftyOne: a generated labeling run with PNG ground truth loaded into a dataset; per-image mIoU
checked against an independent boolean-mask computation, saved views, FiftyOne's evaluate_segmentations
against ours, the ``fiftyone:`` ground-truth reader, the App, and ``jobs/review.py``."""

from __future__ import annotations

import json
import math
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from headless_browser import headless_chrome
from PIL import Image
from run_builder import build_embedded_run, build_run, isolate_fiftyone, name_key

isolate_fiftyone()  # before anything imports fiftyone

import fiftyone as fo  # noqa: E402
import fiftyone.core.session.session as fo_session  # noqa: E402
import psutil  # noqa: E402
from local_ray import local_ray  # noqa: E402, F401

from pipeline.cli import user_message  # noqa: E402
from pipeline.evaluate import EvaluationError, evaluate_run  # noqa: E402
from pipeline.exports.reviewed import export_dataset  # noqa: E402
from pipeline.review.app import (  # noqa: E402
    dataset_url,
    is_loopback,
    launch,
    saved_view_urls,
    serve_until_interrupted,
)
from pipeline.review.dataset import default_dataset_name, is_review_dataset, load_run  # noqa: E402
from pipeline.review.errors import ReviewError  # noqa: E402
from pipeline.review.mask_values import label_map_to_mask  # noqa: E402
from pipeline.review.metrics import compare_with_fiftyone  # noqa: E402
from pipeline.review.views import save_review_views  # noqa: E402
from san.errors import OptionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB_TEXT = "cat\nsky: heaven\ngrass\ntraffic light\nboat\n"  # "boat" is in no ground truth
# Ground-truth values: another order and case, a gap (1), and "road", which is not in the vocabulary.
GT_CLASSES_TEXT = "Grass\n# void\n  Traffic   Light \nsky\ncat\nroad\n"
N_IMAGES = 7  # the last has no ground truth


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    from pipeline.vocabulary import parse_vocabulary

    return build_run(tmp_path_factory.mktemp("review"), parse_vocabulary(VOCAB_TEXT), N_IMAGES, 1, GT_CLASSES_TEXT)


@pytest.fixture(scope="module")
def dataset(run):
    ds = load_run(run.out, str(run.gt_dir), run.gt_classes, name=f"review-{os.getpid()}")
    yield ds
    fo.delete_dataset(ds.name)


def _independent_miou(pred: np.ndarray, raw_gt: np.ndarray, run) -> float:
    """detectron2 per-image mIoU (percent) with boolean masks, by class name."""
    pred_names = np.array([name_key(n) for n in run.vocabulary.names] + [""], dtype=object)
    pred_idx = np.where(pred.astype(np.int64) >= len(run.vocabulary), len(run.vocabulary), pred)
    pred_key = pred_names[pred_idx]
    valid = np.isin(raw_gt, list(run.gt_value_names))
    ious = []
    for value, name in run.gt_value_names.items():
        g = (raw_gt == value) & valid
        if not g.any():
            continue
        p = (pred_key == name_key(name)) & valid
        ious.append((g & p).sum() / (g | p).sum())
    return 100 * float(np.mean(ious))


def test_samples_masks_and_targets(dataset, run) -> None:
    n = len(run.vocabulary)
    assert len(dataset) == N_IMAGES
    assert dataset.mask_targets["predictions"] == {i + 1: name for i, name in enumerate(run.vocabulary.names)}
    # GT classes in the vocabulary take its value and name; "road" gets the first value after it.
    assert dataset.mask_targets["ground_truth"] == {1: "cat", 2: "sky", 3: "grass", 4: "traffic light", n + 1: "road"}
    coco = json.loads((run.out / "coco.json").read_text())
    scores: dict[str, list[float]] = {}
    by_id = {img["id"]: img["file_name"] for img in coco["images"]}
    for ann in coco["annotations"]:
        scores.setdefault(by_id[ann["image_id"]], []).append(ann["score"])
    gt_value_of = {0: 3, 2: 4, 3: 2, 4: 1, 5: n + 1}  # raw PNG value -> mask value
    mask_folder = Path(dataset.info["mask_folder"])
    assert mask_folder.parent == run.out.resolve() / "review-masks"
    for sample in dataset:
        pred = run.predictions[sample.image_path]
        assert sample.filepath == sample.image_path
        assert sample.predictions.mask is None  # a mask file, not pixels in the database
        assert Path(sample.predictions.mask_path).parent.parent == mask_folder / "predictions"
        mask = sample.predictions.get_mask()
        assert mask.dtype == np.uint8 and np.array_equal(mask, label_map_to_mask(pred))
        assert np.array_equal(mask == 0, pred == 255)  # unlabeled -> 0
        assert np.array_equal(mask[pred != 255], pred[pred != 255] + 1)
        assert sample.mean_score == pytest.approx(np.mean(scores[sample.image_path]), abs=1e-12)
        expected_present = [run.vocabulary.names[i] for i in np.unique(pred) if i != 255]
        assert sample.classes_present == expected_present
        raw = run.ground_truth.get(sample.image_path)
        if raw is None:
            assert sample.ground_truth is None and sample.miou is None
            continue
        expected = np.vectorize(lambda v: gt_value_of.get(int(v), 0))(raw)
        assert sample.ground_truth.mask is None
        assert np.array_equal(sample.ground_truth.get_mask(), expected)


def test_app_config_shows_masks_colours_and_review_fields(dataset) -> None:
    """The dataset's App config: both mask fields active, one distinct colour per mask value of either field
    (so a class that both fields name has one colour), the review fields in the group after the tags."""
    config = fo.load_dataset(dataset.name).app_config  # as saved in the database
    assert config.active_fields.paths[:2] == ["predictions", "ground_truth"] and not config.active_fields.exclude
    scheme = config.color_scheme
    assert scheme.color_by == "value"
    colors = {entry["intTarget"]: entry["color"] for entry in scheme.default_mask_targets_colors}
    targets = dataset.mask_targets
    assert set(colors) == set(targets["predictions"]) | set(targets["ground_truth"])
    assert len(set(colors.values())) == len(colors) and all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colors.values())
    names = [g.name for g in config.sidebar_groups]
    assert names[:2] == ["tags", "review"] and config.sidebar_groups[1].expanded
    assert config.sidebar_groups[1].paths == ["miou", "mean_score", "classes_present", "iou"]
    assert all("miou" not in g.paths for g in config.sidebar_groups[2:])


def test_sample_miou_matches_independent_computation(dataset, run) -> None:
    checked = 0
    for sample in dataset.exists("miou"):
        raw = run.ground_truth[sample.image_path]
        expected = _independent_miou(run.predictions[sample.image_path], raw, run)
        assert sample.miou == pytest.approx(expected, abs=1e-9)
        assert sample.miou == pytest.approx(np.mean(list(sample.iou.values())), abs=1e-9)
        assert "boat" not in sample.iou  # predicted but absent from every ground truth: no IoU (detectron2)
        checked += 1
    assert checked == N_IMAGES - 1


def test_saved_views(dataset) -> None:
    views = dataset.list_saved_views()
    worst = dataset.load_saved_view("worst_miou")
    values = worst.values("miou")
    assert len(values) == N_IMAGES - 1 and values == sorted(values)
    least = dataset.load_saved_view("least_confident")
    scores = least.values("mean_score")
    assert len(scores) == N_IMAGES and scores == sorted(scores)
    predicted = set(dataset.distinct("classes_present"))
    assert {v for v in views if v.startswith("class_")} == {f"class_{c}" for c in predicted}
    for name in predicted:
        view = dataset.load_saved_view(f"class_{name}")
        assert len(view) > 0
        assert all(name in present for present in view.values("classes_present"))
        assert len(view) == sum(name in present for present in dataset.values("classes_present"))
    # A cap keeps the classes predicted in the most samples.
    counts = {c: sum(c in p for p in dataset.values("classes_present")) for c in predicted}
    try:
        capped = [v for v in save_review_views(dataset, max_class_views=2) if v.startswith("class_")]
        assert len(capped) == 2 and min(counts[v[6:]] for v in capped) == sorted(counts.values())[-2]
    finally:
        save_review_views(dataset)


@pytest.mark.usefixtures("local_ray")
def test_fiftyone_evaluation_equals_ours(dataset, run, tmp_path: Path) -> None:
    result = compare_with_fiftyone(dataset)
    reference = evaluate_run(run.out, str(run.gt_dir), run.gt_classes, metrics_path=tmp_path / "m.json")
    print(f"mIoU ours {result['ours']!r} FiftyOne {result['fiftyone']!r} evaluate_run {reference['mIoU']!r}")
    assert result["num_images"] == N_IMAGES - 1 == reference["num_images"]
    assert result["pixels"] == result["fiftyone_pixels"] == reference["pixels"]
    assert result["fiftyone"] == pytest.approx(result["ours"], abs=1e-9)
    assert result["ours"] == pytest.approx(reference["mIoU"], abs=1e-9)
    assert 0 < result["ours"] < 100
    assert "eval" in dataset.list_evaluations()
    compare_with_fiftyone(dataset)  # a second run replaces the evaluation instead of failing


@pytest.mark.usefixtures("local_ray")
def test_fiftyone_ground_truth_reader(dataset, run, tmp_path: Path) -> None:
    png = evaluate_run(run.out, str(run.gt_dir), run.gt_classes, metrics_path=tmp_path / "png.json")
    fo_gt = evaluate_run(run.out, f"fiftyone:{dataset.name}:ground_truth", metrics_path=tmp_path / "fo.json")
    assert fo_gt["ground_truth"].startswith("FiftyOne dataset")
    for key, value in png.items():
        if key.startswith(("IoU-", "ACC-")) or key in ("mIoU", "fwIoU", "mACC", "pACC"):
            other = fo_gt[key.replace("Grass", "grass").replace("Traffic Light", "traffic light")]
            assert (math.isnan(value) and math.isnan(other)) or other == pytest.approx(value, abs=1e-9), key


def _datasets() -> set[str]:
    return set(fo.list_datasets())


def test_reload_refuses_without_overwrite_and_keeps_edits(run, tmp_path: Path) -> None:
    """A second load into a review dataset refuses without ``overwrite`` and leaves a mask edit in place;
    with ``overwrite`` it replaces the dataset."""
    name = f"reload-{os.getpid()}"
    first = load_run(run.out, name=name, max_class_views=0)
    try:
        assert is_review_dataset(first) and first.persistent
        sample = first.first()
        edited = sample.predictions.get_mask().copy()
        edited[:4, :4] = len(run.vocabulary)
        sample.predictions.mask = edited
        sample.save()
        before = _datasets()
        with pytest.raises(ReviewError, match=rf"{name!r} already exists.*review edits.*overwrite.*dataset NEW"):
            load_run(run.out, str(run.gt_dir), run.gt_classes, name=name)
        assert _datasets() == before  # no temporary dataset left behind
        kept = fo.load_dataset(name)
        assert kept._doc.id == first._doc.id
        assert np.array_equal(kept[sample.id].predictions.get_mask(), edited)
        assert export_dataset(name, tmp_path / "edited.json")["edited_images"] == 1

        second = load_run(run.out, str(run.gt_dir), run.gt_classes, name=name, overwrite=True)
        assert second._doc.id != first._doc.id and len(second) == N_IMAGES
        assert _datasets() == before and second.persistent and is_review_dataset(second)
        assert "worst_miou" in second.list_saved_views() and second.has_sample_field("miou")
        assert len(second.load_saved_view("worst_miou")) == N_IMAGES - 1  # saved views survive the rename
        assert export_dataset(name, tmp_path / "fresh.json")["edited_images"] == 0
    finally:
        fo.delete_dataset(name)
    assert default_dataset_name(run.out) == default_dataset_name(str(run.out) + "/")


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_dataset_is_never_replaced(run, overwrite: bool) -> None:
    """A dataset that load_run did not make is left alone, even with ``overwrite``; so is one whose name
    differs but whose URL slug is the same."""
    name = f"mine-{os.getpid()}-{overwrite}"
    mine = fo.Dataset(name, persistent=True)
    try:
        mine.add_sample(fo.Sample(filepath="/data/mine.jpg", note="precious"))
        mine.info = {"owner": "me"}
        mine.save()
        before = _datasets()
        with pytest.raises(ReviewError, match=rf"{name!r} already exists and was not made by.*dataset OTHER"):
            load_run(run.out, name=name, overwrite=overwrite)
        with pytest.raises(ReviewError, match=rf"slug .* {name!r}; choose another name with dataset OTHER"):
            load_run(run.out, name=name.upper(), overwrite=overwrite)
        assert _datasets() == before
        kept = fo.load_dataset(name)
        assert kept._doc.id == mine._doc.id and kept.values("note") == ["precious"]
    finally:
        fo.delete_dataset(name)


def test_failed_reload_keeps_old_dataset(run, tmp_path: Path) -> None:
    """Ground truth of the wrong size fails the re-run only after the old dataset was left untouched, and
    the half-built new one is deleted."""
    name = f"failed-{os.getpid()}"
    old = load_run(run.out, str(run.gt_dir), run.gt_classes, name=name, max_class_views=0)
    try:
        bad_gt = tmp_path / "gt"
        shutil.copytree(run.gt_dir, bad_gt)
        victim = sorted(bad_gt.rglob("*.png"))[-1]
        Image.fromarray(np.zeros((3, 5), dtype=np.uint8)).save(victim)
        before = _datasets()
        with pytest.raises(EvaluationError, match="size mismatch"):
            load_run(run.out, str(bad_gt), run.gt_classes, name=name, max_class_views=0, overwrite=True)
        assert _datasets() == before
        kept = fo.load_dataset(name)
        assert kept._doc.id == old._doc.id and len(kept) == N_IMAGES and len(kept.exists("miou")) == N_IMAGES - 1
    finally:
        fo.delete_dataset(name)


def test_embedded_images_are_shown_from_their_bytes(tmp_path: Path) -> None:
    """A run whose input embeds its images (Parquet bytes whose paths name a real file or have no extension;
    WebDataset members, one named ``../../decoy.png``) loads: each sample shows its own bytes from a file
    written under the run's review folder (with its format's extension, so FiftyOne knows it is an image),
    never the file its path names, and keeps ``image_path`` as the run listed it."""
    from pipeline.vocabulary import parse_vocabulary

    run = build_embedded_run(tmp_path, parse_vocabulary(VOCAB_TEXT))
    dataset = load_run(run.out, name=f"embedded-{os.getpid()}", max_class_views=0)
    try:
        assert dataset.media_type == "image"
        assert sorted(dataset.values("image_path")) == sorted(run.images)
        for path, shown in zip(dataset.values("image_path"), dataset.values("filepath"), strict=True):
            assert Path(shown).is_relative_to((run.out / "review-masks").resolve()), shown
            assert Path(shown).read_bytes() == run.images[path]
            assert Path(shown).suffix in (".png", ".jpg")
        assert not {str(d) for d in run.decoys} & set(dataset.values("filepath"))
    finally:
        fo.delete_dataset(dataset.name)


def test_an_image_gone_from_the_input_is_shown_from_no_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An image deleted since the run still loads, with a warning naming it; its sample's ``filepath`` is a file
    in the run's review folder that is never written, not the path the run listed."""
    from pipeline.vocabulary import parse_vocabulary

    run = build_run(tmp_path, parse_vocabulary(VOCAB_TEXT), n_images=3)
    gone = sorted(run.predictions)[0]
    os.remove(gone)
    dataset = load_run(run.out, name=f"gone-{os.getpid()}", max_class_views=0)
    try:
        shown = dict(zip(dataset.values("image_path"), dataset.values("filepath"), strict=True))
    finally:
        fo.delete_dataset(dataset.name)
    warning = capsys.readouterr().err
    assert f"warning: 1 labeled image(s) are no longer in the run's input {str(tmp_path / 'images')!r}" in warning
    assert repr(gone) in warning
    assert Path(shown[gone]).is_relative_to((run.out / "review-masks").resolve()) and not Path(shown[gone]).exists()
    assert all(shown[path] == path for path in run.predictions if path != gone)


def test_failed_load_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A load that fails after writing mask files removes them, and the ``review-masks`` folder it made."""
    import pipeline.review.dataset as review_dataset
    from pipeline.vocabulary import parse_vocabulary

    run = build_run(tmp_path, parse_vocabulary(VOCAB_TEXT), n_images=2)

    def fail(*args, **kwargs):
        raise RuntimeError("saving the views failed")

    monkeypatch.setattr(review_dataset, "save_review_views", fail)
    assert not (run.out / "review-masks").exists()
    with pytest.raises(RuntimeError, match="saving the views failed"):
        load_run(run.out, name=f"half-{os.getpid()}")
    assert not (run.out / "review-masks").exists()


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


@pytest.mark.usefixtures("local_ray")
def test_load_warns_like_evaluate(run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Unmatched classes and images get evaluate_run's warnings: a ground-truth class named ``stoplight``
    matches no vocabulary class, an extra ground-truth image has no prediction, one image has no ground truth."""
    gt = tmp_path / "gt"
    shutil.copytree(run.gt_dir, gt)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(gt / "extra.png")
    classes = tmp_path / "classes.txt"
    classes.write_text(GT_CLASSES_TEXT.replace("  Traffic   Light ", "stoplight"), encoding="utf-8")
    evaluate_run(run.out, str(gt), classes, metrics_path=tmp_path / "m.json")
    expected = _warnings(capsys.readouterr().err)
    name = f"warn-{os.getpid()}"
    load_run(run.out, str(gt), classes, name=name, max_class_views=0)
    try:
        got = _warnings(capsys.readouterr().err)
    finally:
        fo.delete_dataset(name)
    classes_warned = [w for w in got if "class(es)" in w]
    assert classes_warned == [w for w in expected if "class(es)" in w] and len(classes_warned) == 2
    assert "traffic light, boat" in classes_warned[0] and "stoplight, road" in classes_warned[1]
    assert [w for w in got if "no prediction" in w] == [w for w in expected if "no prediction" in w]
    assert "extra.png" in got[-1]
    assert any("1 predicted image(s) have no ground truth" in w and "img_6" in w for w in got)


class _Session:
    """What the tests' ``fo.launch_app`` returns: a session that is closed at once."""

    def wait(self, timeout: float) -> None:
        return None


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "::1", "0.0.0.0", "::", "192.0.2.1"])
def test_only_loopback_addresses_are_loopback(address: str) -> None:
    assert is_loopback(address) == (address in ("127.0.0.1", "localhost", "::1"))


def test_launch_binds_to_loopback_unless_remote_is_allowed(
    run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``jobs/review.py --launch`` binds the App to 127.0.0.1 by default; another address is refused in one line
    before the run is loaded, unless ``--allow-remote``, whose help and start-up warning say that FiftyOne
    serves local files without authentication."""
    job = runpy.run_path(str(ROOT / "jobs" / "review.py"))
    bound: list[str] = []
    monkeypatch.setattr(fo, "launch_app", lambda *args, address, **kwargs: bound.append(address) or _Session())
    name = f"launch-{os.getpid()}"
    base = [str(run.out), "--dataset", name, "--class-views", "0", "--launch"]
    try:
        job["main"](job["parse_args"](base))
        assert bound == ["127.0.0.1"] and "warning" not in capsys.readouterr().err

        remote = job["parse_args"]([*base, "--overwrite", "--address", "0.0.0.0"])
        with pytest.raises(OptionError) as refused:
            job["main"](remote)
        message = user_message(refused.value, remote)  # as the job prints it
        assert "\n" not in message and "--address 0.0.0.0" in message and "--allow-remote" in message
        assert "without authentication" in message and bound == ["127.0.0.1"]

        job["main"](job["parse_args"]([*base, "--overwrite", "--address", "0.0.0.0", "--allow-remote"]))
        assert bound == ["127.0.0.1", "0.0.0.0"]
        warning = capsys.readouterr().err
        assert "warning: the App listens on 0.0.0.0:5151" in warning and "without authentication" in warning
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
    with pytest.raises(SystemExit):
        job["parse_args"](["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--allow-remote" in help_text and "without authentication" in help_text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    """Nothing listens on the port and a server could bind it (SO_REUSEADDR, as servers do: the closed HTTP
    connection leaves a TIME_WAIT socket on the port for a minute, which blocks a plain bind)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _app_processes(port: int) -> list[psutil.Process]:
    """This process's App server processes: the service wrapper and the server itself."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if ("--51-service" in cmdline and "server" in cmdline) or ("--port" in cmdline and str(port) in cmdline):
            found.append(child)
    return found


@pytest.mark.slow
def test_app_serves_page_and_stops_on_ctrl_c(dataset, capsys: pytest.CaptureFixture) -> None:
    """``serve_until_interrupted`` (what ``jobs/review.py --launch`` runs) calls ``fo.launch_app(dataset,
    port=..., address="127.0.0.1", remote=True)``; a helper thread GETs the page, notes the App processes and
    sends this process SIGINT (Ctrl-C); the session must close, the port be free and the processes gone."""
    port = _free_port()
    seen: dict = {}
    ready = threading.Event()

    def visit() -> None:
        ready.wait()  # never interrupt the test run unless the App is up and waiting for Ctrl-C (daemon thread)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
                seen["status"], seen["body"] = response.status, response.read()
        finally:
            seen["processes"] = _app_processes(port)
            os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=visit, daemon=True)
    helper.start()
    serve_until_interrupted(dataset, port=port, address="127.0.0.1", on_ready=lambda url: ready.set())
    helper.join(timeout=5)
    assert seen.get("status") == 200 and b"<html" in seen["body"].lower()
    assert f"App: http://127.0.0.1:{port}/" in capsys.readouterr().out
    assert seen["processes"]  # the App server ran as a child process ...
    _, alive = psutil.wait_procs(seen["processes"], timeout=120)  # returns as soon as they are gone
    assert alive == []  # ... and is gone
    assert _port_free(port)
    assert fo_session._session is None  # fo.close_app() ran


@pytest.mark.slow
def test_app_in_browser_shows_every_sample_with_masks(dataset) -> None:
    """The App as a reviewer first sees it (``jobs/review.py --launch`` calls ``launch``), read from the page in
    headless Chromium: a grid tile per sample, the ``predictions`` and ``ground_truth`` boxes ticked (their
    masks drawn), ``miou`` and ``mean_score`` in the ``review`` sidebar group above the labels, and a saved
    view's printed link opening that view."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chrome()

    def tiles() -> int:
        return len(driver.find_elements(By.CSS_SELECTOR, '[data-cy="looker"]'))

    def top(cy: str) -> float:
        return driver.find_element(By.CSS_SELECTOR, f'[data-cy="{cy}"]').location["y"]

    port = _free_port()
    app = f"http://127.0.0.1:{port}/"
    try:
        launch(dataset, port=port)
        driver.get(dataset_url(dataset, app))
        WebDriverWait(driver, 120).until(lambda _: tiles() >= len(dataset))
        assert tiles() == len(dataset)
        for field in ("predictions", "ground_truth"):
            assert driver.find_element(By.CSS_SELECTOR, f'[data-cy="checkbox-{field}"] input').is_selected(), field
        assert top("sidebar-group-entry-REVIEW") < top("sidebar-field-miou") < top("sidebar-field-mean_score")
        assert top("sidebar-field-mean_score") < top("sidebar-group-entry-LABELS") < top("sidebar-field-predictions")

        worst = len(dataset.load_saved_view("worst_miou"))
        assert worst < len(dataset)
        driver.get(saved_view_urls(dataset, app)["worst_miou"])
        WebDriverWait(driver, 60).until(lambda _: tiles() == worst)
    finally:
        driver.quit()
        fo.close_app()


def _job(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "review.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_review_job_prints_dataset_and_miou(dataset, run) -> None:
    """The job prints the dataset, both mIoUs and evaluate.py's warnings; run again, it refuses (exit 2)
    without --overwrite and replaces the dataset with it."""
    name = default_dataset_name(run.out)
    args = (str(run.out), "--gt", str(run.gt_dir), "--gt-classes", str(run.gt_classes))
    proc = _job(*args)
    try:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        assert f"dataset: {name} ({N_IMAGES} samples)" in stdout
        match = re.search(r"mIoU: ([\d.]+) \(FiftyOne evaluate_segmentations: ([\d.]+)\)", stdout)
        assert match, stdout
        assert float(match.group(1)) == pytest.approx(compare_with_fiftyone(dataset)["ours"], abs=1e-4)
        assert match.group(1) == match.group(2)
        assert "warning: 1 vocabulary class(es) not in the ground truth, counted as wrong: boat" in stderr
        assert "warning: 1 ground-truth class(es) not in the vocabulary, never predicted: road" in stderr
        first_id = fo.load_dataset(name)._doc.id
        assert fo.load_dataset(name).persistent

        again = _job(*args)
        stdout, stderr = again.communicate(timeout=600)
        assert again.returncode == 2, stderr
        assert f"error: FiftyOne dataset {name!r} already exists" in stderr
        assert "--overwrite" in stderr and "--dataset NEW" in stderr
        assert fo.load_dataset(name)._doc.id == first_id

        replace = _job(*args, "--overwrite")
        stdout, stderr = replace.communicate(timeout=600)
        assert replace.returncode == 0, stderr
        assert f"dataset: {name} ({N_IMAGES} samples)" in stdout
        assert fo.load_dataset(name)._doc.id != first_id
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
