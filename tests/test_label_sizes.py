"""The labeling job infers at the size its options ask for: each label map equals the argmax of SAN's
``predict_scores`` on the image resized to ``--short-side``, mapped back to the original size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from local_ray import local_ray  # noqa: F401
from varied_model import model_input, varied_tiny_model, write_photos

import san
from pipeline.label.job import LabelOptions, run_label_job
from pipeline.outputs import RunOutput
from pipeline.segments import decode_label_map_png
from pipeline.vocabulary import load_vocabulary

pytestmark = pytest.mark.slow

SHORT_SIDE = 160
VOCABULARY = "person: astronaut\ncat\ncoffee cup\nsky\ngrass\nflag\n"


def expected_label_map(model: san.SAN, image: np.ndarray, prompts: list[str], prompt_to_class: list[int], short_side):
    """Argmax over classes (a class scores the max of its prompts) of ``predict_scores`` at the original size."""
    with torch.inference_mode():
        scores = model.predict_scores([model_input(image, short_side)], prompts, output_sizes=[image.shape[:2]])[0]
    members = [[p for p, c in enumerate(prompt_to_class) if c == k] for k in range(max(prompt_to_class) + 1)]
    classes = torch.stack([scores[prompts_of_class].amax(0) for prompts_of_class in members])
    return classes.argmax(0).numpy().astype(np.uint8)


@pytest.mark.usefixtures("local_ray")
def test_label_maps_are_inferred_at_the_short_side_asked_for(tmp_path: Path) -> None:
    model = varied_tiny_model()
    san.save_checkpoint(model, tmp_path / "varied.safetensors")

    folder = tmp_path / "images"
    photos = write_photos(folder)
    (tmp_path / "vocab.txt").write_text(VOCABULARY)
    options = LabelOptions(
        vocab=str(tmp_path / "vocab.txt"),
        input=str(folder),
        output=str(tmp_path / "labels"),
        model=str(tmp_path / "varied.safetensors"),
        short_side=SHORT_SIDE,
        other="none",
        progress=False,
    )
    manifest = run_label_job(options)
    assert manifest["counts"]["labeled"] == len(photos)

    vocabulary = load_vocabulary(tmp_path / "vocab.txt")
    prompts, prompt_to_class = list(vocabulary.prompts), list(vocabulary.prompt_to_class)
    rows = RunOutput(tmp_path / "labels").read_predictions(["image_path", "label_map_png"]).to_pylist()
    differs_at_640 = 0
    for row in rows:
        photo = photos[Path(row["image_path"]).name]
        label_map = decode_label_map_png(row["label_map_png"])
        expected = expected_label_map(model, photo, prompts, prompt_to_class, SHORT_SIDE)
        np.testing.assert_array_equal(label_map, expected, err_msg=row["image_path"])
        default = expected_label_map(model, photo, prompts, prompt_to_class, 640)
        differs_at_640 += int(not np.array_equal(label_map, default))
        assert len(np.unique(label_map)) > 1, f"{row['image_path']}: one class everywhere tests little"
    assert differs_at_640, "the test cannot tell --short-side 160 from 640 on these photos"
