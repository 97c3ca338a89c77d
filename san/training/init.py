"""The model a training run starts from and where it runs: :func:`build_model` (``TrainConfig.init``),
the device, the autocast precision (mixed precision on GPU only) and the model inside a DDP wrapper."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import OFFICIAL_RELEASES, load_checkpoint, load_model, load_official, resolve_official_weights
from ..config import get_preset
from ..errors import OptionError
from ..modeling.model import SAN, build_san
from .config import TrainConfig

__all__ = ["autocast_context", "autocast_dtype", "build_model", "resolve_device", "unwrap"]


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


def resolve_device(name: str) -> torch.device:
    """``TrainConfig.device`` as a device: ``auto`` is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32 (always on CPU: the recipe's mixed precision is GPU-only)."""
    if device.type != "cuda" or name == "fp32":
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``; a no-op context for None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def unwrap(model: torch.nn.Module) -> SAN:
    """The SAN itself: ``model`` or, on Ray Train workers, the module inside its DDP wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]
