"""SAN's optimiser recipe: AdamW parameter groups, the poly schedule and full-model gradient clipping.

As the official ``train_net.py`` builds them (detectron2 defaults where SAN sets nothing); which
parameters skip weight decay: ``docs/training.md``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["NO_DECAY_NAMES", "PolySchedule", "build_optimizer", "param_groups"]

NO_DECAY_NAMES = (
    "absolute_pos_embed",
    "positional_embedding",
    "pos_embed",
    "query_embed",
    "relative_position_bias_table",
)

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 1e-4,
    weight_decay_embed: float = 0.0,
    weight_decay_norm: float = 0.0,
    no_decay_names: Iterable[str] = NO_DECAY_NAMES,
) -> list[dict]:
    """Two AdamW groups (``"decay"`` and ``"no_decay"``) over the trainable parameters; each group has a
    ``"names"`` list of the full parameter names it holds (the rule: ``docs/training.md``)."""
    no_decay_names = tuple(no_decay_names)
    groups: dict[float, dict] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            decay = weight_decay
            if any(key in param_name for key in no_decay_names):
                decay = weight_decay_embed
            if isinstance(module, _NORM_TYPES):
                decay = weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            group = groups.setdefault(decay, {"params": [], "names": [], "lr": lr, "weight_decay": decay})
            group["params"].append(param)
            group["names"].append(f"{module_name}.{param_name}" if module_name else param_name)
    return [groups[k] for k in sorted(groups, reverse=True)]


def build_optimizer(model: nn.Module, lr: float = 1e-4, weight_decay: float = 1e-4, **kwargs) -> torch.optim.AdamW:
    """AdamW (torch defaults: betas 0.9/0.999, eps 1e-8) over :func:`param_groups`."""
    groups = param_groups(model, lr, weight_decay, **kwargs)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr)


class PolySchedule:
    """Multiplier ``(1 - step / max_steps) ** power`` for ``torch.optim.lr_scheduler.LambdaLR`` (0 from
    ``max_steps`` on); a plain object so that the scheduler's state dict records it."""

    def __init__(self, max_steps: int, power: float = 0.9):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self.power = float(power)

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.max_steps) ** self.power
