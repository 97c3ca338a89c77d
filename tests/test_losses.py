"""Matching and losses of SAN training on small cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from san.training.losses import (
    SetCriterion,
    build_criterion,
    dice_loss,
    sigmoid_ce_loss,
    targets_from_labels,
    uncertain_point_coords,
)
from san.training.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost, point_sample


def _square(size: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_point_sample_reads_pixel_centres_and_has_the_right_shape() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5)
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    centres = torch.stack([(xs.flatten() + 0.5) / 5, (ys.flatten() + 0.5) / 4], dim=-1)  # (x, y) in [0, 1]
    out = point_sample(x, centres.expand(2, -1, -1))
    assert out.shape == (2, 3, 20)
    torch.testing.assert_close(out, x.flatten(2))
    coords = torch.rand(2, 7, 2)
    assert point_sample(x, coords).shape == (2, 3, 7)


def test_uncertain_points_shape_and_preference_for_uncertain_regions() -> None:
    torch.manual_seed(0)
    logits = torch.full((3, 1, 16, 16), 10.0)
    logits[:, :, :, :8] = 0.0  # left half maximally uncertain (|logit| = 0)
    coords = uncertain_point_coords(logits, num_points=400, oversample_ratio=3, importance_sample_ratio=0.75)
    assert coords.shape == (3, 400, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    # the 300 importance-sampled points come from the uncertain half (bilinear blending reaches x < ~0.53)
    assert (coords[:, :300, 0] < 0.53).all()
    # the 100 random points spread over the whole image
    assert (coords[:, 300:, 0] > 0.6).any()


def test_dice_and_bce_by_hand() -> None:
    inputs = torch.tensor([[0.0, math.log(3.0)]])  # sigmoid: 0.5, 0.75
    targets = torch.tensor([[1.0, 0.0]])
    # dice: 1 - (2 * 0.5 + 1) / (1.25 + 1 + 1) = 1 - 2 / 3.25
    assert dice_loss(inputs, targets, num_masks=1).item() == pytest.approx(1 - 2 / 3.25, abs=1e-6)
    assert dice_loss(inputs, targets, num_masks=2).item() == pytest.approx((1 - 2 / 3.25) / 2, abs=1e-6)
    # BCE: mean(-log 0.5, -log 0.25)
    assert sigmoid_ce_loss(inputs, targets, 1).item() == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)
    # the matcher's pairwise costs agree with the losses for the same pair
    assert batch_dice_cost(inputs, targets)[0, 0].item() == pytest.approx(1 - 2 / 3.25, abs=1e-6)
    assert batch_sigmoid_ce_cost(inputs, targets)[0, 0].item() == pytest.approx(math.log(8) / 2, abs=1e-6)


def test_pairwise_costs_match_per_pair_losses() -> None:
    torch.manual_seed(0)
    inputs, targets = torch.randn(4, 50), (torch.rand(3, 50) > 0.5).float()
    dice, bce = batch_dice_cost(inputs, targets), batch_sigmoid_ce_cost(inputs, targets)
    assert dice.shape == bce.shape == (4, 3)
    for n in range(4):
        for m in range(3):
            assert dice[n, m].item() == pytest.approx(dice_loss(inputs[n : n + 1], targets[m : m + 1], 1).item())
            assert bce[n, m].item() == pytest.approx(sigmoid_ce_loss(inputs[n : n + 1], targets[m : m + 1], 1).item())


def test_matcher_picks_the_obvious_pairs() -> None:
    torch.manual_seed(0)
    size = 32
    masks = torch.stack([_square(size, 0, 16, 0, 16), _square(size, 16, 32, 8, 32)])  # targets 0 and 1
    target = {"labels": torch.tensor([3, 1]), "masks": masks}
    # 4 queries: query 2 predicts target 0 (class 3), query 0 predicts target 1 (class 1), 1 and 3 are junk
    pred_masks = torch.full((1, 4, 8, 8), -8.0)
    pred_masks[0, 2, :4, :4] = 8.0
    pred_masks[0, 0, 4:, 2:] = 8.0
    pred_masks[0, 3] = torch.randn(8, 8)
    logits = torch.zeros(1, 4, 6)
    logits[0, 2, 3] = 5.0
    logits[0, 0, 1] = 5.0
    logits[0, 1, 5] = 5.0  # no-object
    matcher = HungarianMatcher(num_points=2000)
    [(src, tgt)] = matcher(logits, pred_masks, [target])
    assert dict(zip(src.tolist(), tgt.tolist(), strict=True)) == {0: 1, 2: 0}
    # no targets: nothing matched
    [(src, tgt)] = matcher(logits, pred_masks, [{"labels": torch.zeros(0, dtype=torch.int64), "masks": masks[:0]}])
    assert src.numel() == tgt.numel() == 0


def test_no_object_weight_in_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.5, 0.0, 1.5]]])  # 1 image, 2 queries, 2 classes + no-object
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4, dtype=torch.bool)}]
    indices = [(torch.tensor([0]), torch.tensor([0]))]  # query 0 -> class 0; query 1 -> no-object

    def nll(row: list[float], k: int) -> float:
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))

    a, b = nll([2.0, 0.0, 1.0], 0), nll([0.5, 0.0, 1.5], 2)
    for weight in (0.1, 1.0):
        criterion = build_criterion(no_object_weight=weight)
        expected = (1.0 * a + weight * b) / (1.0 + weight)
        assert criterion.loss_labels(logits, targets, indices).item() == pytest.approx(expected, abs=1e-6)
    assert build_criterion().class_weights(2, torch.device("cpu")).tolist() == pytest.approx([1.0, 1.0, 0.1])


def test_targets_from_labels_skip_ignore() -> None:
    label = torch.tensor([[[0, 0, 255], [2, 2, 255]]])
    [target] = targets_from_labels(label)
    assert target["labels"].tolist() == [0, 2]
    assert target["masks"].dtype == torch.bool
    assert target["masks"].tolist() == [
        [[True, True, False], [False, False, False]],
        [[False] * 3, [True, True, False]],
    ]
    [empty] = targets_from_labels(torch.full((1, 2, 2), 255))
    assert empty["labels"].numel() == 0 and empty["masks"].shape == (0, 2, 2)


def test_criterion_deep_supervision_names_weights_and_values() -> None:
    torch.manual_seed(0)
    criterion: SetCriterion = build_criterion(num_points=500)
    labels = torch.full((2, 32, 32), 4)
    labels[0, :16] = 1
    labels[1, :, :5] = 255
    targets = targets_from_labels(labels)
    levels = 3
    preds = [torch.randn(2, 5, 8, 8, requires_grad=True) for _ in range(levels)]
    logits = [torch.randn(2, 5, 6, requires_grad=True) for _ in range(levels)]
    losses = criterion(preds, logits, targets)
    expected = [f"{t}_{i}" for i in range(levels - 1) for t in ("loss_ce", "loss_mask", "loss_dice")]
    assert sorted(losses) == sorted(expected + ["loss_ce", "loss_mask", "loss_dice"])
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    weighted = criterion.weighted(losses)
    assert weighted["loss_ce_1"].item() == pytest.approx(2 * losses["loss_ce_1"].item())
    assert weighted["loss_dice"].item() == pytest.approx(5 * losses["loss_dice"].item())
    sum(weighted.values()).backward()
    assert all(p.grad is not None for p in preds + logits)
    # dice on matched masks lies in [0, 1] per mask: summed over 3 masks / 3 masks
    assert 0 <= losses["loss_dice"].item() <= 1


def test_criterion_without_targets_is_finite_and_differentiable() -> None:
    criterion = build_criterion(num_points=100)
    preds = torch.randn(1, 4, 8, 8, requires_grad=True)
    logits = torch.randn(1, 4, 3, requires_grad=True)
    losses = criterion([preds], [logits], targets_from_labels(torch.full((1, 16, 16), 255)))
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    sum(losses.values()).backward()
    assert logits.grad is not None
