"""Faster kernels for inference on x86 CPUs, swapped in under :func:`cpu_inference_kernels`.

PyTorch sends float32 matrix products on the CPU to MKL, whose code path on non-Intel CPUs stops at AVX2,
and its fused CPU attention kernel runs at a fraction of matrix-product speed for SAN's 40-wide heads. oneDNN,
which PyTorch already ships and uses for bf16 products and convolutions, has AVX-512 and bf16 kernels for
every x86 CPU: on a 2-core AMD EPYC with AVX-512 a 1700x768 @ 768x3072 float32 product runs at 410 GFLOP/s
there against 210 GFLOP/s through MKL (BENCHMARKS.md). The same float32 arithmetic, summed in another order.

``SAN_CPU_KERNELS=pytorch`` in the environment turns the swap off (PyTorch's own kernels, e.g. to compare).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# Attention scores of one head are computed in blocks of query rows holding at most this many (16 MiB in
# float32), so that a large image's side-adapter attention never needs its whole score matrix.
ATTENTION_BLOCK_ELEMENTS = 1 << 22

_FAST_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def onednn_linear_available() -> bool:
    """Whether oneDNN's linear kernel can be called here: an x86-64 CPU and a PyTorch built with oneDNN."""
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` through oneDNN: ``x`` ``[..., K]``, ``weight`` ``[N, K]``, ``bias`` ``[N]`` -> ``[..., N]``.

    Written by hand because PyTorch offers no public switch from MKL to oneDNN for float32 products; this is the
    oneDNN op PyTorch's own compiler emits for CPU linear layers. Inference only: it has no backward. Operands are
    made contiguous first: oneDNN falls back to a reference kernel, 1000x slower, for rows with gaps between them.
    """
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.contiguous(), bias, "none", [], "")


def blocked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, scale: float | None = None
) -> torch.Tensor:
    """``softmax(q k^T * scale + attn_mask) v`` for ``q`` ``[B, H, L, D]``, ``k`` ``[B, H, S, D]``, ``v``
    ``[B, H, S, Dv]`` and an additive float ``attn_mask`` broadcastable to ``[B, H, L, S]``: ``[B, H, L, Dv]``.

    One head and one block of at most :data:`ATTENTION_BLOCK_ELEMENTS` scores at a time, each product through
    :func:`onednn_linear`. The result's memory is laid out as ``[B, L, H, Dv]`` (the layout attention blocks
    reshape it to next), so it is a transposed view. ``scale`` defaults to ``1 / sqrt(D)``, as in PyTorch.
    """
    batch, heads, length, depth = q.shape
    keys = k.shape[2]
    q = q * (depth**-0.5 if scale is None else scale)
    mask = attn_mask.expand(batch, heads, length, keys) if attn_mask is not None else None
    out = q.new_empty(batch, length, heads, v.shape[-1]).transpose(1, 2)
    rows = max(1, ATTENTION_BLOCK_ELEMENTS // keys)
    for b in range(batch):
        for h in range(heads):
            keys_h, values = k[b, h].contiguous(), v[b, h].t().contiguous()
            for start in range(0, length, rows):
                scores = onednn_linear(q[b, h, start : start + rows], keys_h)
                if mask is not None:
                    scores += mask[b, h, start : start + rows]
                out[b, h, start : start + rows] = onednn_linear(scores.softmax(dim=-1), values)
    return out


class CpuInferenceKernels(TorchFunctionMode):
    """While active, for CPU tensors that autograd does not record: float32 ``F.linear`` runs through
    :func:`onednn_linear` (bf16 products already go to oneDNN), and float32/bf16
    ``F.scaled_dot_product_attention`` through :func:`blocked_attention`. Any other call, or one with dropout,
    a causal or boolean mask, runs as usual."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            return inference_linear(*args, **kwargs)
        if func is F.scaled_dot_product_attention and _attention_is_swapped(*args, **kwargs):
            mask = _argument(args, kwargs, 3, "attn_mask")
            return blocked_attention(*args[:3], attn_mask=mask, scale=kwargs.get("scale"))
        return func(*args, **kwargs)


def _argument(args: tuple, kwargs: dict, position: int, name: str, default: Any = None) -> Any:
    return args[position] if len(args) > position else kwargs.get(name, default)


def _on_cpu_without_grad(*tensors: torch.Tensor) -> bool:
    """CPU tensors of which autograd records nothing (the swapped kernels have no backward)."""
    recorded = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return not recorded and all(t.device.type == "cpu" for t in tensors)


def _linear_is_swapped(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        _on_cpu_without_grad(*tensors)
        and all(t.dtype == torch.float32 for t in tensors)
        and x.dim() >= 2
        and x.numel() > 0
    )


def _attention_is_swapped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> bool:
    mask = _argument(args, kwargs, 0, "attn_mask")
    plain = (
        _argument(args, kwargs, 1, "dropout_p", 0.0) == 0.0
        and not _argument(args, kwargs, 2, "is_causal", False)
        and not kwargs.get("enable_gqa", False)
    )
    return (
        plain
        and _on_cpu_without_grad(q, k, v)
        and q.dim() == k.dim() == v.dim() == 4
        and q.dtype in _FAST_DTYPES
        and q.dtype == k.dtype == v.dtype
        and q.shape[:2] == k.shape[:2] == v.shape[:2]
        and min(q.shape[2], k.shape[2]) > 0
        and (mask is None or (mask.dtype == q.dtype and mask.device.type == "cpu"))
    )


def cpu_kernels_enabled() -> bool:
    """Whether the swap applies here: an x86 CPU with oneDNN, and ``SAN_CPU_KERNELS`` not ``pytorch``."""
    return os.environ.get("SAN_CPU_KERNELS", "onednn") != "pytorch" and onednn_linear_available()


def cpu_inference_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """:class:`CpuInferenceKernels` for inference on the CPU where :func:`cpu_kernels_enabled`, else a no-op
    context."""
    if torch.device(device).type == "cpu" and cpu_kernels_enabled():
        return CpuInferenceKernels()
    return contextlib.nullcontext()


def inference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through :func:`onednn_linear` wherever :class:`CpuInferenceKernels` would send it there, with
    or without the mode: for code outside the model whose results must not depend on where it is called from
    (post-processing, by ``predict_*`` or on its own)."""
    if cpu_kernels_enabled() and _linear_is_swapped(x, weight, bias):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)
