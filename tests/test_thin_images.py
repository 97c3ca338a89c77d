"""Thin strips (12000x2 and the like) are labeled at their original size, and any failure to decode or
resize one image becomes that image's error row instead of stopping the labeling job."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import san
from pipeline.label.decode import DecodeStage
from san.predictor import Predictor
from san.transforms import SAN_EVAL_RESIZE, ResizeShortestEdge

STRIPS = [(2, 12000), (3, 16000), (2, 20000), (12000, 2)]


def png(height: int, width: int) -> bytes:
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode(stage: DecodeStage, datas: list[bytes]) -> dict:
    """The stage's output for one model batch of ``datas``, with ``image``: each image's resized pixels
    (``None`` for an error row), cut from the batch's padded stack."""
    paths = [f"image-{i}.png" for i in range(len(datas))]
    batch = stage({"image_path": [paths], "data": [datas], "error": [[""] * len(datas)], "fingerprint": [paths]})
    row = {key: values[0] for key, values in batch.items()}
    good = iter(row["pixels"])
    row["image"] = []
    for error, height, width in zip(row["error"], row["height"], row["width"], strict=True):
        h, w = stage.resize.output_size(height, width) if not error else (0, 0)
        row["image"].append(None if error else next(good)[:h, :w])
    return row


@pytest.mark.parametrize("size", STRIPS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_strip_is_resized_to_at_least_one_pixel_per_side(size: tuple[int, int]) -> None:
    target = SAN_EVAL_RESIZE.output_size(*size)
    assert min(target) == 1 and max(target) == SAN_EVAL_RESIZE.max_size
    batch = decode(DecodeStage(SAN_EVAL_RESIZE, max_pixels=10**8), [png(*size)])
    assert list(batch["error"]) == [""]
    assert batch["image"][0].shape == (*target, 3)
    assert (batch["height"][0], batch["width"][0]) == size


def test_strips_are_labeled_at_their_original_size() -> None:
    batch = decode(DecodeStage(SAN_EVAL_RESIZE, max_pixels=10**8), [png(*size) for size in STRIPS])
    torch.manual_seed(0)
    predictor = Predictor(san.build_san("san_tiny"), ["cat", "sky", "grass"], device="cpu")
    sizes = list(zip(batch["height"], batch["width"], strict=True))
    predictions = predictor.predict(batch["image"], original_sizes=sizes)
    assert [p.label_map.shape for p in predictions] == STRIPS


class FailingResize(ResizeShortestEdge):
    """A resize that fails on images wider than tall: any exception, not only a decode error."""

    def resize_image(self, image: Image.Image) -> Image.Image:
        if image.width > image.height:
            raise ValueError("height and width must be > 0")
        return super().resize_image(image)


def test_a_failure_to_decode_or_resize_one_image_is_its_error_row() -> None:
    stage = DecodeStage(FailingResize(short_side=32, max_size=64), max_pixels=10**8)
    batch = decode(stage, [png(40, 30), png(30, 40), png(50, 20)])
    assert list(batch["error"]) == ["", "cannot resize 30x40 image: ValueError: height and width must be > 0", ""]
    assert batch["image"][0].shape == (*stage.resize.output_size(40, 30), 3)
    assert batch["image"][2].shape == (*stage.resize.output_size(50, 20), 3)
    assert batch["height"][1] == batch["width"][1] == 0
