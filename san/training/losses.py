"""SAN's training loss: Mask2Former's set criterion with point-sampled mask losses.

:class:`SetCriterion` gives ``loss_ce``, ``loss_mask`` and ``loss_dice`` for every decoded level (deep
supervision; earlier levels suffixed ``_i``) from predictions ``[B, Q, H/16, W/16]`` and per-image targets
``{"labels": [M], "masks": [M, H, W]}``. The terms and weights: ``docs/training.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .matcher import HungarianMatcher, Target, point_sample

__all__ = [
    "SetCriterion",
    "build_criterion",
    "dice_loss",
    "sigmoid_ce_loss",
    "targets_from_labels",
    "uncertain_point_coords",
]


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """``sum_n [1 - (2 sum_p s*t + 1) / (sum_p s + sum_p t + 1)] / num_masks`` with ``s = sigmoid(inputs)``;
    ``inputs`` logits and ``targets`` in ``[0, 1]``, both ``[N, P]``."""
    probs = inputs.sigmoid().flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Per-mask mean of the pointwise sigmoid BCE, summed over masks, divided by ``num_masks``;
    ``inputs`` logits and ``targets`` in ``[0, 1]``, both ``[N, P]``."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def uncertain_point_coords(
    logits: torch.Tensor, num_points: int, oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75
) -> torch.Tensor:
    """Importance-sampled point coordinates ``[N, num_points, 2]`` (``(x, y)`` in ``[0, 1]``) for mask
    logits ``[N, 1, h, w]`` (PointRend's ``get_uncertain_point_coords_with_randomness``).

    ``num_points * oversample_ratio`` uniform points are drawn; the ``importance_sample_ratio`` share
    of ``num_points`` with the highest uncertainty ``-|logit|`` is kept and the rest is drawn
    uniformly again. Uses torch's global RNG.
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError("oversample_ratio must be >= 1 and importance_sample_ratio in [0, 1]")
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, coords)[:, 0].abs()  # [N, num_sampled]
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = torch.topk(uncertainty, k=num_uncertain, dim=1).indices
    coords_uncertain = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        coords_uncertain = torch.cat([coords_uncertain, torch.rand(n, num_random, 2, device=logits.device)], dim=1)
    return coords_uncertain


def targets_from_labels(labels: torch.Tensor, ignore_index: int = 255) -> list[Target]:
    """Per-class binary masks from label maps ``[B, H, W]`` (class indices, ``ignore_index`` ignored).

    Returns per image ``{"labels": [M] int64 (ascending), "masks": [M, H, W] bool}``; ignored pixels are
    0 in every mask (as in the official dataset mapper).
    """
    targets = []
    for label in labels:
        classes = torch.unique(label)
        classes = classes[classes != ignore_index].to(torch.int64)
        masks = label[None] == classes[:, None, None]
        targets.append({"labels": classes, "masks": masks})
    return targets


class SetCriterion(nn.Module):
    """Matching-based loss over all deep-supervision levels (``docs/training.md``).

    Args:
        matcher: the :class:`HungarianMatcher`.
        weight_dict: loss name -> weight (names without the ``_i`` level suffix); terms not in it are
            still returned by :meth:`forward` but left out of :meth:`weighted`.
        no_object_weight: cross-entropy weight of the no-object (last) class (SAN: 0.1).
        num_points: points per mask for the mask losses (SAN: 112 * 112).
        oversample_ratio, importance_sample_ratio: see :func:`uncertain_point_coords` (SAN: 3, 0.75).
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        super().__init__()
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def class_weights(self, num_classes: int, device: torch.device) -> torch.Tensor:
        """Cross-entropy weights ``[C + 1]``: 1 for the classes, ``no_object_weight`` for the last."""
        weight = torch.ones(num_classes + 1, device=device)
        weight[-1] = self.no_object_weight
        return weight

    def loss_labels(
        self, logits: torch.Tensor, targets: Sequence[Target], indices: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """Weighted cross-entropy of class logits ``[B, Q, C + 1]``; unmatched queries target no-object."""
        logits = logits.float()
        num_classes = logits.shape[-1] - 1
        target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(logits.device)] = targets[b]["labels"][tgt.to(targets[b]["labels"].device)].to(
                logits.device
            )
        weight = self.class_weights(num_classes, logits.device)
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight)

    def loss_masks(
        self,
        masks: torch.Tensor,
        targets: Sequence[Target],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        num_masks: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss_mask, loss_dice)`` of the matched mask logits (``masks`` ``[B, Q, h, w]``) on
        importance-sampled points."""
        src = torch.cat([masks[b, s.to(masks.device)] for b, (s, _) in enumerate(indices)])  # [N, h, w]
        if src.shape[0] == 0:
            zero = masks.sum() * 0.0  # keeps the graph (and DDP) intact for a batch without targets
            return zero, zero.clone()
        tgt = torch.cat([targets[b]["masks"][t.to(targets[b]["masks"].device)] for b, (_, t) in enumerate(indices)])
        src = src[:, None].float()
        tgt = tgt[:, None].to(device=src.device, dtype=src.dtype)
        with torch.no_grad():
            coords = uncertain_point_coords(src, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
            point_labels = point_sample(tgt, coords)[:, 0]
        point_logits = point_sample(src, coords)[:, 0]
        return sigmoid_ce_loss(point_logits, point_labels, num_masks), dice_loss(point_logits, point_labels, num_masks)

    @staticmethod
    def num_masks(targets: Sequence[Target], device: torch.device) -> float:
        """Target masks in the batch, averaged over distributed workers, at least 1."""
        count = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            world = dist.get_world_size()
        return max(count.item() / world, 1.0)

    def forward(
        self, mask_preds: Sequence[torch.Tensor], mask_logits: Sequence[torch.Tensor], targets: Sequence[Target]
    ) -> dict[str, torch.Tensor]:
        """Unweighted loss terms of every level.

        Args:
            mask_preds: per level (shallowest first, as ``SANOutput.mask_preds``) mask logits ``[B, Q, h, w]``.
            mask_logits: per level class logits ``[B, Q, C + 1]`` (no-object last).
            targets: per image ``{"labels": [M], "masks": [M, H, W]}``.

        Returns:
            ``{"loss_ce", "loss_mask", "loss_dice"}`` for the last level plus ``"<name>_<i>"`` for level ``i``
            of the others, each a scalar float32 tensor.
        """
        if len(mask_preds) != len(mask_logits) or not mask_preds:
            raise ValueError(f"{len(mask_preds)} mask levels and {len(mask_logits)} class-logit levels")
        num_masks = self.num_masks(targets, mask_preds[-1].device)
        losses: dict[str, torch.Tensor] = {}
        last = len(mask_preds) - 1
        for level, (masks, logits) in enumerate(zip(mask_preds, mask_logits, strict=True)):
            indices = self.matcher(logits, masks, targets)
            suffix = "" if level == last else f"_{level}"
            losses["loss_ce" + suffix] = self.loss_labels(logits, targets, indices)
            loss_mask, loss_dice = self.loss_masks(masks, targets, indices, num_masks)
            losses["loss_mask" + suffix] = loss_mask
            losses["loss_dice" + suffix] = loss_dice
        return losses

    def weighted(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each term times its weight (looked up without the level suffix); unknown terms dropped."""
        out = {}
        for name, value in losses.items():
            base = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
            if base in self.weight_dict:
                out[name] = value * self.weight_dict[base]
        return out

    def extra_repr(self) -> str:
        return (
            f"weight_dict={self.weight_dict}, no_object_weight={self.no_object_weight}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )


def build_criterion(
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    no_object_weight: float = 0.1,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> SetCriterion:
    """SAN's criterion with the official defaults (``MODEL.SAN.*`` of the released config)."""
    matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
    weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    return SetCriterion(matcher, weights, no_object_weight, num_points, oversample_ratio, importance_sample_ratio)
