"""The labeling worker's view of the model: numpy images in, label maps out, and the bounded-memory
best-class reduction behind it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

import san
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
