"""Label quality controls in the library: distractor ("other") names, test-time augmentation and per-class
minimum scores. Expected label maps are computed here from ``SAN.predict_scores``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from local_ray import local_ray  # noqa: F401
from skimage import data
from varied_model import model_input, varied_tiny_model, write_photos

import san
import san.settings
from san.other_names import OtherNamesError, added_names, coco_stuff_names, read_other_names
from san.predictor import Predictor
from san.settings import PredictionSettings
from san.transforms import ResizeShortestEdge
from san.tta import average_best_class

RESIZE = ResizeShortestEdge(96, 400)  # small model inputs: fast on CPU


@pytest.fixture(scope="module")
def model() -> san.SAN:
    return varied_tiny_model()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.chelsea()[::2, ::2].copy()  # 150 x 226


def class_scores(scores: torch.Tensor, prompt_to_class: list[int]) -> torch.Tensor:
    """Prompt scores ``[P, H, W]`` -> class scores ``[C, H, W]``: a class scores the max of its prompts."""
    members = [[p for p, c in enumerate(prompt_to_class) if c == k] for k in range(max(prompt_to_class) + 1)]
    return torch.stack([scores[m].amax(0) for m in members])


def expected_labels(best: torch.Tensor, index: torch.Tensor, num_classes: int, min_scores: list[float]) -> np.ndarray:
    """Labels from the best score and class of each pixel: added names (index >= num_classes) and scores below
    their class's minimum become unlabeled (255, or 65535 above 255 classes)."""
    unlabeled = 255 if num_classes <= 255 else 65535
    label = index.numpy().astype(np.int64)
    thresholds = np.array([*min_scores, *[np.inf] * (int(label.max()) + 1)])[label]
    label[(label >= num_classes) | (best.numpy() < thresholds)] = unlabeled
    return label


def test_the_coco_stuff_names_are_the_official_171_and_91() -> None:
    every, stuff = coco_stuff_names(), coco_stuff_names(stuff_only=True)
    assert len(every) == len(set(every)) == 171 and len(stuff) == 91
    assert every[:3] == ["person", "bicycle", "car"] and every[80:] == stuff
    assert {"building-other", "sky-other", "wall-brick", "wood"} <= set(stuff) and "dog" not in stuff
    official = Path(__file__).parents[1] / "pipeline" / "eval_sets" / "cocostuff171.txt"
    assert every == official.read_text().split("\n")[:-1], "the COCO-Stuff benchmark's class list"


def test_other_names_compete_and_the_pixels_they_win_are_unlabeled(model: san.SAN, photo: np.ndarray) -> None:
    prompts, prompt_to_class = ["cat", "kitten", "grass", "sky"], [0, 0, 1, 2]
    other = ["SKY", "tree", "Kitten", "wall-brick", "floor-other", "tree"]
    predictor = Predictor(
        model, prompts, prompt_to_class, device="cpu", settings=PredictionSettings(resize=RESIZE, other=other)
    )
    assert predictor.added_names == ["tree", "wall-brick", "floor-other"], "a user's class or synonym is not added"
    prediction = predictor.predict([photo])[0]

    added = ["tree", "wall-brick", "floor-other"]
    scores = model.predict_scores([model_input(photo, 96, 400)], prompts + added, [photo.shape[:2]])[0]
    best, index = class_scores(scores, prompt_to_class + [3, 4, 5]).max(0)
    expected = expected_labels(best, index, 3, [0.0] * 3)
    np.testing.assert_array_equal(prediction.label_map, expected)
    assert prediction.label_map.dtype == np.uint8 and prediction.unlabeled == 255
    assert 0 < (expected == 255).mean() < 1, "the test needs pixels won by added names and by classes"


def test_other_names_in_a_16_bit_label_map(model: san.SAN, photo: np.ndarray) -> None:
    prompts = [f"thing {i}" for i in range(256)]
    other = [f"thing {i}" for i in range(256, 272)]
    prediction = Predictor(
        model, prompts, device="cpu", settings=PredictionSettings(resize=RESIZE, other=other)
    ).predict([photo])[0]
    scores = model.predict_scores([model_input(photo, 96, 400)], prompts + other, [photo.shape[:2]])[0]
    best, index = scores.max(0)
    expected = expected_labels(best, index, 256, [0.0] * 256)
    assert prediction.label_map.dtype == np.uint16 and prediction.unlabeled == 65535
    np.testing.assert_array_equal(prediction.label_map, expected)
    assert (expected == 65535).any() and (expected < 256).any()


def test_each_class_can_have_its_own_minimum_score(model: san.SAN, photo: np.ndarray) -> None:
    prompts = ["cat", "grass", "sky"]
    scores = model.predict_scores([model_input(photo, 96, 400)], prompts, [photo.shape[:2]])[0]
    best, index = scores.max(0)
    winner = int(index.flatten().mode().values)
    own = float(best[index == winner].min() + best[index == winner].max()) / 2
    floor = float(best.min()) + 1e-3
    min_scores: list[float | None] = [None] * 3
    min_scores[winner] = own
    predictor = Predictor(
        model,
        prompts,
        device="cpu",
        settings=PredictionSettings(resize=RESIZE, min_score=floor, class_min_scores=min_scores),
    )
    prediction = predictor.predict([photo])[0]
    thresholds = [own if k == winner else floor for k in range(3)]
    np.testing.assert_array_equal(prediction.label_map, expected_labels(best, index, 3, thresholds))
    winners = prediction.label_map[index.numpy() == winner]
    assert 0 < (winners == 255).mean() < 1, "some of the class's pixels are below its own minimum"


def test_test_time_augmentation_averages_the_passes_chunk_by_chunk(model: san.SAN, photo: np.ndarray) -> None:
    """The average of the passes' scores (flipped passes flipped back), in chunks of any width and bands of
    any width, equals the average of ``predict_scores`` over whole images."""
    prompts, prompt_to_class = ["cat", "kitten", "grass", "sky"], [0, 0, 1, 2]
    size = photo.shape[:2]
    base = model_input(photo, 96, 400)
    tta = san.settings.TestTimeAugmentation((64, 80), max_size=300)
    total = None
    passes = []
    for resize, flipped in tta.passes:
        image = model_input(base.permute(1, 2, 0).numpy(), resize.short_side, resize.max_size)
        image = image.flip(-1) if flipped else image
        scores = class_scores(model.predict_scores([image], prompts, [size])[0], prompt_to_class)
        scores = scores.flip(-1) if flipped else scores
        total = scores if total is None else total + scores
        passes.append((model.predict_outputs([image], prompts)[0], flipped))
    best, index = (total / len(passes)).max(0)

    def reduce(scores: torch.Tensor) -> torch.Tensor:
        return class_scores(scores, prompt_to_class)

    whole = average_best_class(passes, size, reduce, max_elements=1 << 40, chunk_elements=1 << 40)
    banded = average_best_class(passes, size, reduce, max_elements=20_000, chunk_elements=50_000)
    # Bands of another width round the resizing matrix products differently (measured: up to 2.8e-6).
    for (average_best, average_index), atol in ((whole, 1e-7), (banded, 1e-5)):
        assert torch.equal(average_index, index) and torch.allclose(average_best, best, rtol=1e-6, atol=atol)
    assert index.unique().numel() > 1, "the test needs several winning classes"

    predictor = Predictor(
        model, prompts, prompt_to_class, device="cpu", settings=PredictionSettings(resize=RESIZE, tta=tta)
    )
    np.testing.assert_array_equal(predictor.predict([photo])[0].label_map, index.numpy().astype(np.uint8))


def test_other_names_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "other.txt"
    path.write_text("# distractors\nsky\n\ngrass\nSky\n")
    with pytest.raises(OtherNamesError, match=rf"{path}:5: class 'Sky' is also on line 2 as 'sky'$"):
        read_other_names(str(path))
    path.write_bytes(b"sky\ngr\xffass\n")
    with pytest.raises(OtherNamesError, match=rf"{path}:2: not valid UTF-8"):
        read_other_names(str(path))
    with pytest.raises(OtherNamesError, match="neither one of coco-all, coco-stuff, none nor a file"):
        read_other_names(str(tmp_path / "missing.txt"))
    path.write_text("sky\n\nvery long\n")
    with pytest.raises(OtherNamesError, match=rf"{path}:3: too long"):
        read_other_names(str(path), lambda name: "too long" if len(name) > 5 else None)
    path.write_text("sky\n  tall   grass \n")
    assert read_other_names(str(path)) == ["sky", "tall grass"] and read_other_names("none") == []
    nfc, nfd = "caf\u00e9", "cafe\u0301"  # one name in Unicode NFC and NFD
    path.write_text(f"{nfc}\n{nfd}\n")
    with pytest.raises(OtherNamesError, match=rf"{path}:2: class '{nfd}' is also on line 1 as '{nfc}' \(the same"):
        read_other_names(str(path))
    assert added_names([nfd, "Sky", "grass"], [nfc, "sky"]) == ["grass"], "a vocabulary term in another form"


def tta_expected(model: san.SAN, photo: np.ndarray, prompts: list[str], prompt_to_class: list[int], sizes) -> tuple:
    """The best average class score and class of each pixel: SAN's evaluation input (short side 640) resized
    to each of ``sizes`` (long side at most 4480) and flipped, ``predict_scores`` at the photo's size."""
    base = model_input(photo, 640).permute(1, 2, 0).numpy()
    total, count = None, 0
    for size in sizes:
        for flipped in (False, True):
            image = model_input(base, size, 4480)
            image = image.flip(-1) if flipped else image
            scores = class_scores(model.predict_scores([image], prompts, [photo.shape[:2]])[0], prompt_to_class)
            scores = scores.flip(-1) if flipped else scores
            total = scores if total is None else total + scores
            count += 1
    return (total / count).max(0)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_the_label_job_adds_other_names_averages_tta_passes_and_applies_class_minimums(
    tmp_path: Path, model: san.SAN
) -> None:
    from pipeline.label.job import LabelOptions, run_label_job
    from pipeline.outputs import OutputConflictError, RunOutput
    from pipeline.segments import decode_label_map_png
    from pipeline.vocabulary import parse_vocabulary

    san.save_checkpoint(model, tmp_path / "varied.safetensors")
    folder = tmp_path / "images"
    photos = write_photos(folder)
    (tmp_path / "other.txt").write_text("Sky\ntree\nwall\nsea\ngrass\n")
    lines = ["person: astronaut", "cat", "coffee cup", "sky", "flag"]
    vocabulary = parse_vocabulary("\n".join(lines))
    added = ["tree", "wall", "sea", "grass"]
    prompts = [*vocabulary.prompts, *added]
    prompt_to_class = [*vocabulary.prompt_to_class, *range(5, 9)]
    expected = {name: tta_expected(model, photo, prompts, prompt_to_class, (64, 96)) for name, photo in photos.items()}
    # The class that wins most pixels gets its own minimum score, half way between its lowest and highest.
    indices = torch.cat([index.flatten() for _, index in expected.values()])
    own = int(torch.bincount(indices, minlength=9)[:5].argmax())
    scores = torch.cat([best[index == own] for best, index in expected.values()])
    own_min = round(float(scores.min() + scores.max()) / 2, 6)
    lines[own] += f" @ {own_min}"
    (tmp_path / "vocab.txt").write_text("\n".join(lines))
    min_scores = [own_min if k == own else 0.0 for k in range(5)]

    options = dict(
        vocab=str(tmp_path / "vocab.txt"),
        input=str(folder),
        output=str(tmp_path / "labels"),
        model=str(tmp_path / "varied.safetensors"),
        other=str(tmp_path / "other.txt"),
        tta=True,
        tta_sizes=(64, 96),
        batch_size=1,
        progress=False,
    )
    manifest = run_label_job(LabelOptions(**options))
    assert manifest["counts"]["labeled"] == len(photos) and manifest["other_names"] == added
    assert manifest["identity"]["tta"] == [64, 96] and manifest["identity"]["class_min_scores"][own] == own_min

    unlabeled = {"other": 0, "below its class's minimum": 0}
    for row in RunOutput(tmp_path / "labels").read_predictions(["image_path", "label_map_png"]).to_pylist():
        best, index = expected[Path(row["image_path"]).name]
        label_map = decode_label_map_png(row["label_map_png"])
        np.testing.assert_array_equal(label_map, expected_labels(best, index, 5, min_scores))
        unlabeled["other"] += int((index >= 5).sum())
        unlabeled["below its class's minimum"] += int(((index == own) & (best < own_min)).sum())
    assert all(unlabeled.values()), unlabeled

    for change, named in [({"other": "none"}, "other"), ({"tta": False}, "tta"), ({"tta_sizes": (64,)}, "tta")]:
        with pytest.raises(OutputConflictError, match=rf"made with {named} .* \(this command: "):
            run_label_job(LabelOptions(**{**options, **change}))
    (tmp_path / "vocab.txt").write_text("\n".join(lines[:own] + [lines[own] + "1"] + lines[own + 1 :]))
    with pytest.raises(OutputConflictError, match=rf"minimum scores \(@\) .*{own_min}.* \(this command: .*{own_min}1"):
        run_label_job(LabelOptions(**options))
