"""Where a model runs and at which precision: the device, the dtype names and the autocast context."""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path

import torch

__all__ = [
    "DTYPES",
    "autocast_context",
    "cpu_bf16_units",
    "cpu_bf16_warning",
    "resolve_device",
    "training_autocast_dtype",
    "warn_without_cpu_bf16_units",
]

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


@functools.cache
def cpu_bf16_units() -> tuple[str, ...]:
    """The bf16 matrix units of this CPU that PyTorch's CPU kernels (oneDNN) use: a subset of
    ``("amx_bf16", "avx512_bf16")``, empty where bf16 matrix products are emulated (e.g. AVX2-only CPUs:
    there a bf16 matmul ran 70x slower than float32, and SAN about 3x slower; BENCHMARKS.md).

    Asks torch (``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``); a torch without
    those private checks falls back to the ``/proc/cpuinfo`` flags of the same names.
    """
    checks = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    if all(hasattr(torch.cpu, check) for check in checks.values()):
        return tuple(unit for unit, check in checks.items() if getattr(torch.cpu, check)())
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    return tuple(unit for unit in checks if unit in flags)


def cpu_bf16_warning() -> str | None:
    """Advice for a bf16 run on this CPU where it lacks bf16 matrix units (see :func:`cpu_bf16_units`),
    else None."""
    if cpu_bf16_units():
        return None
    return (
        f"dtype bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}, no AMX or AVX512-BF16 units): "
        "bf16 matrix products are emulated and run much slower than float32; use fp32 here"
    )


def warn_without_cpu_bf16_units() -> None:
    """Warn (``RuntimeWarning``) with :func:`cpu_bf16_warning`'s advice where this CPU lacks bf16 units."""
    message = cpu_bf16_warning()
    if message is not None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
