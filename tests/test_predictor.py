"""The labeling worker's view of the model: numpy images in, label maps out, and the bounded-memory
best-class reduction behind it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

import san
import san.class_scores
from san.class_scores import class_mean_scores
from san.image_labels import ImageLabels
from san.modeling.postprocess import best_class, column_bands, semantic_scores
from san.predictor import Predictor
from san.settings import PredictionSettings
from san.transforms import ResizeShortestEdge


def official_scores(mask_preds: torch.Tensor, mask_logits: torch.Tensor, sizes: tuple) -> torch.Tensor:
    """SAN's post-processing as the official code writes it: every query at once, one resize to the output."""
    (hp, wp), (h, w), output = sizes
    masks = F.interpolate(mask_preds[None], size=(hp, wp), mode="bilinear", align_corners=False)[:, :, :h, :w]
    masks = F.interpolate(masks, size=output, mode="bilinear", align_corners=False)[0]
    return torch.einsum("qc,qhw->chw", mask_logits.softmax(dim=-1)[:, :-1], masks.sigmoid())


@pytest.mark.parametrize(
    "sizes",
    [((24, 32), (20, 30), (45, 61)), ((24, 32), (20, 30), (13, 17)), ((24, 32), (20, 30), (20, 30))],
    ids=["upsampled", "downsampled", "image size"],
)
@pytest.mark.parametrize("max_elements", [1 << 40, (7 + 11) * 45 * 3, 1], ids=["one band", "bands", "single columns"])
def test_best_class_in_column_bands_is_the_max_over_all_scores_bit_for_bit(max_elements: int, sizes: tuple) -> None:
    generator = torch.Generator().manual_seed(0)
    mask_preds = torch.randn(7, 6, 8, generator=generator) * 3
    mask_logits = torch.randn(7, 12, generator=generator) * 3
    assert (len(column_bands(7, 11, sizes[2], max_elements)) == 1) == (max_elements == 1 << 40)
    scores = semantic_scores(mask_preds, mask_logits, *sizes, max_elements=max_elements)
    torch.testing.assert_close(scores, official_scores(mask_preds, mask_logits, sizes), rtol=1e-6, atol=1e-7)
    reference, reference_index = scores.max(dim=0)
    assert reference_index.unique().numel() > 3, "the test needs several winning classes"
    best, index = best_class(mask_preds, mask_logits, *sizes, max_elements=max_elements)
    assert torch.equal(best, reference) and index.dtype == torch.uint8
    assert torch.equal(index.long(), reference_index)


def test_predict_labels_each_pixel_with_its_best_class_over_synonyms() -> None:
    torch.manual_seed(0)
    model = san.build_san("san_tiny")
    photos = [data.astronaut(), data.coffee()[:300, :451]]
    prompts, prompt_to_class = ["person", "man", "cup", "sky"], [0, 0, 1, 2]
    predictor = Predictor(model, prompts, prompt_to_class, device="cpu", settings=PredictionSettings(min_score=0.0))
    predictions = predictor.predict(photos)
    for photo, scores, prediction in zip(photos, predictor.class_scores(photos), predictions, strict=True):
        best, label = scores.max(dim=0)
        assert prediction.label_map.shape == photo.shape[:2] and prediction.label_map.dtype == np.uint8
        np.testing.assert_array_equal(prediction.label_map, label.numpy())
        np.testing.assert_allclose(prediction.scores, best.numpy(), rtol=1e-6)
    threshold = float(np.median(predictions[0].scores))
    strict = Predictor(
        model, prompts, prompt_to_class, device="cpu", settings=PredictionSettings(min_score=threshold)
    ).predict(photos[:1])[0]
    below = predictions[0].scores < threshold
    assert below.any() and (strict.label_map[below] == strict.unlabeled).all()
    np.testing.assert_array_equal(strict.label_map[~below], predictions[0].label_map[~below])
    for prediction in (*predictions, strict):
        assert_class_scores_are_the_mean_score_of_each_class(prediction, num_classes=3)


def assert_class_scores_are_the_mean_score_of_each_class(prediction: ImageLabels, num_classes: int) -> None:
    """``class_scores``: the mean of ``scores`` over each class's pixels, 0 without pixels (unlabeled: no class)."""
    assert prediction.class_scores.shape == (num_classes,) and prediction.class_scores.dtype == np.float32
    for k in range(num_classes):
        pixels = prediction.label_map == k
        expected = prediction.scores[pixels].astype(np.float64).mean() if pixels.any() else 0.0
        assert prediction.class_scores[k] == pytest.approx(expected, rel=1e-6), f"class {k}"


@pytest.mark.parametrize(
    ("dtype", "num_classes", "unlabeled"),
    [(torch.uint8, 5, 255), (torch.int32, 5, 65535), (torch.uint8, 5, 5)],
    ids=["uint8", "int32", "unlabeled-is-the-next-index"],
)
def test_class_mean_scores_are_each_class_mean_over_its_pixels(dtype, num_classes, unlabeled, monkeypatch) -> None:
    monkeypatch.setattr(san.class_scores, "BAND_PIXELS", 200)  # several bands of rows
    generator = torch.Generator().manual_seed(1)
    label = torch.randint(0, 4, (37, 53), generator=generator).to(dtype)
    label[0, :5] = unlabeled
    score = torch.rand(37, 53, generator=generator)
    means = class_mean_scores(label, score, num_classes)
    assert means.dtype == torch.float64 and means.shape == (num_classes,)
    for k in range(4):
        pixels = label == k
        assert means[k].item() == pytest.approx(score[pixels].double().mean().item(), rel=1e-12)
    assert means[4].item() == 0.0, "a class without pixels"


def test_class_mean_scores_refuse_maps_of_two_shapes() -> None:
    with pytest.raises(ValueError, match=r"label \(3, 4\) and score \(4, 3\) must be one \[H, W\] shape"):
        class_mean_scores(torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(4, 3), 2)


def test_images_resized_elsewhere_must_follow_the_predictors_resize_rule() -> None:
    torch.manual_seed(0)
    resize = ResizeShortestEdge(short_side=96, max_size=400)
    predictor = Predictor(
        san.build_san("san_tiny"), ["cat", "sky"], device="cpu", settings=PredictionSettings(resize=resize)
    )
    photo = data.coffee()  # 400 x 600 -> 96 x 144
    resized = resize(photo)
    assert resized.shape[:2] == resize.output_size(400, 600) == (96, 144)
    by_caller = predictor.predict([resized], original_sizes=[(400, 600)])[0]
    by_predictor = predictor.predict([photo])[0]
    np.testing.assert_array_equal(by_caller.label_map, by_predictor.label_map)
    with pytest.raises(ValueError, match=r"image 0 is 400x600, but .* resizes its original size 400x600 to 96x144"):
        predictor.predict([photo], original_sizes=[(400, 600)])


def test_best_class_of_more_than_256_classes_is_an_int32_index() -> None:
    generator = torch.Generator().manual_seed(0)
    mask_preds = torch.randn(5, 6, 8, generator=generator) * 3
    mask_logits = torch.randn(5, 301, generator=generator) * 3
    mask_logits[:, 256:300] += 4  # classes above 255 win somewhere
    sizes = ((24, 32), (20, 30), (21, 33))
    reference, reference_index = semantic_scores(mask_preds, mask_logits, *sizes, max_elements=1).max(dim=0)
    assert reference_index.max() > 255, "the test needs winning classes above 255"
    best, index = best_class(mask_preds, mask_logits, *sizes, max_elements=1)
    assert index.dtype == torch.int32 and torch.equal(index.long(), reference_index) and torch.equal(best, reference)
