"""Where a model runs and at which precision: the device, the dtype names and the autocast context."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["DTYPES", "autocast_context", "resolve_device", "training_autocast_dtype"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def training_autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The training autocast dtype for ``name`` (``auto`` or a :data:`DTYPES` key), or None for float32
    (always on CPU: the recipe's mixed precision is GPU-only). ``auto`` is bf16 where the GPU supports it,
    else fp16."""
    if device.type != "cuda" or name == "fp32":
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return DTYPES[name]


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; a no-op context for None or float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
