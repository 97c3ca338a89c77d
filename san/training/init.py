"""The model a training run starts from (:func:`build_model`, ``TrainConfig.init``) and the model inside a
DDP wrapper (:func:`unwrap`); the device and the autocast precision are :mod:`san.precision`'s."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import OFFICIAL_RELEASES, load_checkpoint, load_model, load_official, resolve_official_weights
from ..config import get_preset
from ..errors import OptionError
from ..modeling.model import SAN, build_san
from .config import TrainConfig

__all__ = ["build_model", "unwrap"]


def build_model(cfg: TrainConfig) -> SAN:
    """The model to start training from (``cfg.init``; see ``san.training.loop``), in train mode."""
    init = cfg.init
    if init == "clip":
        config = get_preset(cfg.preset)
        if cfg.clip_weights:
            config = config.replace(clip=dataclasses.replace(config.clip, pretrained=str(cfg.clip_weights)))
        model = build_san(config, pretrained_clip=True)
    elif init == "random":
        model = build_san(cfg.preset)
    elif init == "official":
        if cfg.preset not in OFFICIAL_RELEASES:
            raise OptionError(
                f"`init` official: no released weights for `preset` {cfg.preset!r}; "
                f"released: {sorted(OFFICIAL_RELEASES)}"
            )
        model = load_official(resolve_official_weights(cfg.preset), cfg.preset)
    elif Path(init).suffix == ".safetensors":
        model = load_checkpoint(init)
    elif Path(init).suffix in (".pth", ".pt", ".pkl"):
        model = load_model(init, cfg.preset)
    else:
        raise OptionError(f"`init` must be clip, official, random or a checkpoint file, got {init!r}")
    return model.train()


def unwrap(model: torch.nn.Module) -> SAN:
    """The SAN itself: ``model`` or, on Ray Train workers, the module inside its DDP wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]
