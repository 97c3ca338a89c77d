"""Train on labels: ``jobs/train.py --data`` reads a labeling run's output folder and ``fiftyone:DATASET``
(pipeline.training_data), and the whole loop runs: label the sample photos with the smoke model, load them
into FiftyOne, edit one mask as a reviewer would, train a few steps on the dataset, label again with the
checkpoint; the data loader yields the edited mask's pixels."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from local_ray import local_ray  # noqa: F401
from run_builder import build_run, isolate_fiftyone

isolate_fiftyone()  # before anything imports fiftyone

import fiftyone as fo  # noqa: E402

from pipeline.review.dataset import load_run  # noqa: E402
from pipeline.training_data import open_training_data  # noqa: E402
from pipeline.vocabulary import parse_vocabulary  # noqa: E402
from san.errors import DataError, OptionError  # noqa: E402
from san.training.data import LabelMapList, SegmentationFolder, TrainSamples  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("jobs_train_loop", ROOT / "jobs" / "train.py")
train_job = importlib.util.module_from_spec(_spec)  # jobs/train.py, imported under a name of its own
_spec.loader.exec_module(train_job)

VOCABULARY = parse_vocabulary("cat\nsky: heaven\ngrass\n")


def _expected_label(label_map: np.ndarray) -> np.ndarray:
    """What training should read for a run's stored label map: class index, 255 (ignore) where unlabeled."""
    unlabeled = np.iinfo(label_map.dtype).max
    return np.where(label_map == unlabeled, 255, label_map.astype(np.int32))


def test_run_folder_is_training_data_with_its_vocabulary(tmp_path: Path) -> None:
    run = build_run(tmp_path, VOCABULARY, n_images=3, seed=4)
    data = open_training_data(str(run.out), "data", 255)
    assert isinstance(data, LabelMapList) and data.classes == ["cat", "sky", "grass"]
    assert {str(data.image_path(i)) for i in range(len(data))} == set(run.predictions)
    data.check()
    for index in range(len(data)):
        image, label = data[index]
        stored = run.predictions[str(data.image_path(index))]
        assert image.shape[:2] == label.shape and np.array_equal(label, _expected_label(stored))
    assert (label == 255).any()  # the builder leaves 5% unlabeled
    # A folder that is neither a run nor the folder layout is refused, naming the option.
    with pytest.raises(OptionError, match="val_data folder"):
        open_training_data(str(tmp_path / "missing"), "val_data", 255)


def test_missing_image_is_reported_with_its_path_before_the_first_step(tmp_path: Path) -> None:
    run = build_run(tmp_path, VOCABULARY, n_images=3, seed=5)
    gone = sorted(run.predictions)[1]
    os.remove(gone)
    output = tmp_path / "train"
    args = train_job.parse_args(
        ["--data", str(run.out), "--output", str(output), "--preset", "san_tiny", "--init", "random", "--steps", "1"]
    )
    with pytest.raises(DataError, match=f"image file '{gone}' not found"):
        train_job.main(args)
    assert not (output / "checkpoints").exists()


def _label(output: Path, **options) -> dict:
    from pipeline.label.job import LabelOptions, run_label_job

    vocab, images = ROOT / "samples" / "vocab.txt", ROOT / "samples" / "images"
    options = LabelOptions(vocab=str(vocab), input=str(images), output=str(output), progress=False, **options)
    return run_label_job(options)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_label_review_train_label_again(tmp_path: Path) -> None:
    # 1. Label the sample photos with the smoke model.
    manifest = _label(tmp_path / "labels", smoke_test=True)
    assert manifest["counts"]["labeled"] == 4
    # 2. Load them into FiftyOne and change one mask as a reviewer would: a block becomes "sky", a strip unlabeled.
    dataset = load_run(tmp_path / "labels", name=f"loop-{os.getpid()}", max_class_views=0)
    try:
        sample = dataset.first()
        mask = sample.predictions.get_mask().copy()
        sky = manifest["vocabulary"]["names"].index("sky") + 1  # mask value = class index + 1
        mask[10:60, 20:90] = sky
        mask[:, :5] = 0
        sample.predictions = fo.Segmentation(mask=mask)
        sample.save()
        edited_path = sample.image_path
        expected = mask.astype(np.int32) - 1
        expected[expected < 0] = 255

        # 3. Train a few steps on fiftyone:DATASET (the job's own code path).
        spec = f"fiftyone:{dataset.name}"
        output = tmp_path / "train"
        args = train_job.parse_args(
            [
                *("--data", spec, "--val-data", spec, "--output", str(output), "--preset", "san_tiny"),
                *("--init", "random", "--steps", "2", "--batch-size", "2", "--crop-size", "64", "--device", "cpu"),
                *("--num-points", "256", "--data-workers", "0", "--eval-short-side", "64", "--no-progress"),
            ]
        )
        summary = train_job.main(args)
        assert summary["step"] == 2 and np.isfinite(summary["loss"])
        checkpoint = output / "checkpoints" / "last.safetensors"
        assert Path(summary["checkpoint"]) == checkpoint and checkpoint.is_file()
        assert json.loads((output / "config.json").read_text())["data"] == spec

        # 5. The data loader yields the edited mask's pixels (unlabeled -> ignored) for the edited image.
        data = open_training_data(spec, "data", 255)
        assert data.classes == manifest["vocabulary"]["names"]
        stream = TrainSamples(data, augmentation=None, seed=0)
        yielded = {str(data.image_path(int(stream.permutation(0)[k]))): stream[k][1].numpy() for k in range(len(data))}
        assert np.array_equal(yielded[edited_path], expected)
    finally:
        fo.delete_dataset(dataset.name)

    # 4. Label again with the checkpoint.
    again = _label(tmp_path / "labels-again", model=str(checkpoint))
    assert again["counts"]["labeled"] == 4 and again["identity"]["model"] == str(checkpoint)


def test_folder_layout_still_opens_and_dataset_specs_stay_names(tmp_path: Path) -> None:
    from san.training.config import TrainConfig, resume_differences, with_absolute_paths
    from san.training.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "d", count=2, size=32)
    assert isinstance(open_training_data(str(root), "data", 255), SegmentationFolder)
    # fiftyone:NAME is no path: Ray workers and --resume get it unchanged (a relative folder becomes absolute).
    cfg = TrainConfig(data="fiftyone:reviewed", val_data="labels", output="out")
    absolute = with_absolute_paths(cfg)
    assert absolute.data == "fiftyone:reviewed" and absolute.val_data == os.path.abspath("labels")
    assert resume_differences(cfg.to_dict(), absolute) == []
    assert resume_differences({**cfg.to_dict(), "data": "fiftyone:other"}, cfg) == [
        "data: checkpoint 'fiftyone:other', command 'fiftyone:reviewed'"
    ]
