"""Hungarian matching of predicted masks to ground-truth masks (Mask2Former / SAN training).

Each image's ``Q`` predictions are matched one-to-one to its ``M <= Q`` target masks by class, BCE and
dice cost on shared random points (:func:`point_sample`); the cost: ``docs/training.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

Target = dict[str, torch.Tensor]  # {"labels": [M] int64, "masks": [M, H, W] bool/float}


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly read ``inputs`` ``[N, C, H, W]`` at ``coords`` ``[N, P, 2]`` -> ``[N, C, P]``.

    ``coords`` are ``(x, y)`` in ``[0, 1]`` over the whole map (``(0, 0)`` the top-left corner of the
    top-left pixel); values outside the map read as 0 (``grid_sample`` zero padding,
    ``align_corners=False``), as detectron2's ``point_sample``.
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # [N, P, 1, 2] in [-1, 1]
    return F.grid_sample(inputs, grid.to(inputs.dtype), align_corners=False).squeeze(3)


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid binary cross-entropy of every prediction against every target.

    ``inputs`` logits ``[N, P]``, ``targets`` in ``[0, 1]`` ``[M, P]`` -> ``[N, M]``.
    """
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    cost = torch.einsum("np,mp->nm", pos, targets) + torch.einsum("np,mp->nm", neg, 1 - targets)
    return cost / inputs.shape[1]


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss ``1 - (2|x*t| + 1) / (|x| + |t| + 1)`` of every prediction (``sigmoid(inputs)``)
    against every target: ``inputs`` logits ``[N, P]``, ``targets`` ``[M, P]`` -> ``[N, M]``."""
    probs = inputs.sigmoid()
    numerator = 2 * torch.einsum("np,mp->nm", probs, targets)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets, per image (cost: ``docs/training.md``).

    Args:
        cost_class: weight of ``-p(target class)`` (SAN: 2).
        cost_mask: weight of the point-sampled sigmoid BCE (SAN: 5).
        cost_dice: weight of the point-sampled dice loss (SAN: 5).
        num_points: random points per image on which mask costs are computed (SAN: 112 * 112).
    """

    def __init__(
        self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(self, logits: torch.Tensor, masks: torch.Tensor, target: Target) -> torch.Tensor:
        """One image's cost ``[Q, M]`` from class logits ``[Q, C + 1]``, mask logits ``[Q, h, w]`` and
        its target (``labels`` ``[M]``, ``masks`` ``[M, H, W]``). Draws the points from torch's global RNG."""
        labels, tgt = target["labels"], target["masks"]
        cost_class = -logits.float().softmax(-1)[:, labels]
        coords = torch.rand(1, self.num_points, 2, device=masks.device)
        pred_points = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1))[:, 0]
        tgt_points = point_sample(tgt[:, None].to(pred_points), coords.expand(tgt.shape[0], -1, -1))[:, 0]
        cost_mask = batch_sigmoid_ce_cost(pred_points, tgt_points)
        cost_dice = batch_dice_cost(pred_points, tgt_points)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(
        self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, targets: Sequence[Target]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match a batch.

        Args:
            pred_logits: class logits ``[B, Q, C + 1]`` (no-object last).
            pred_masks: mask logits ``[B, Q, h, w]`` (any resolution).
            targets: per image ``{"labels": [M_b] int64, "masks": [M_b, H, W]}`` (any ``H, W``).

        Returns:
            Per image ``(pred_idx, tgt_idx)``, two int64 CPU tensors of length ``min(Q, M_b)``: prediction
            ``pred_idx[k]`` is assigned target ``tgt_idx[k]`` (``pred_idx`` ascending).
        """
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {pred_logits.shape[0]}")
        indices = []
        for b, target in enumerate(targets):
            if target["labels"].numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], target).cpu()
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}"
        )
