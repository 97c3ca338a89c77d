"""Faster kernels for inference on x86 CPUs, swapped in under :func:`cpu_inference_kernels` where they are
faster on this CPU (:func:`kernel_choice`).

PyTorch sends float32 matrix products on the CPU to MKL, whose code path on non-Intel CPUs stops at AVX2,
and its fused CPU attention kernel runs at a fraction of matrix-product speed for SAN's 40-wide heads. oneDNN,
which PyTorch already ships and uses for bf16 products and convolutions, has AVX-512 and bf16 kernels: on a
2-core AMD EPYC with AVX-512 a 1700x768 @ 768x3072 float32 product runs at 410 GFLOP/s there against
210 GFLOP/s through MKL (BENCHMARKS.md). The same float32 arithmetic, summed in another order. On an AVX2-only
CPU oneDNN's float32 kernels were slower than PyTorch's own, and it has no bf16 kernels at all (creating one
fails), so there nothing is swapped.

``SAN_CPU_KERNELS`` in the environment: ``auto`` (the default, :func:`kernel_choice`), ``pytorch`` (PyTorch's own
kernels everywhere, e.g. to compare) or ``onednn`` (the float32 swap on any x86 CPU, e.g. to measure it on AVX2).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import OptionError

# Attention scores of one head are computed in blocks of query rows holding at most this many (16 MiB in
# float32), so that a large image's side-adapter attention never needs its whole score matrix.
ATTENTION_BLOCK_ELEMENTS = 1 << 22

KERNEL_SETTINGS = ("auto", "onednn", "pytorch")
# oneDNN's own cap on the instruction sets it uses (it reads either name): values below AVX-512 make its
# float32 kernels as slow as on an AVX2-only CPU.
_ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@functools.cache
def onednn_linear_available() -> bool:
    """Whether oneDNN's linear kernel can be called here: an x86-64 CPU and a PyTorch built with oneDNN."""
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


@functools.cache
def onednn_linear_dtypes() -> frozenset[torch.dtype]:
    """The dtypes (of float32, bf16) that oneDNN's linear kernel runs on this CPU, found by trying a tiny product
    in each once per process. Tried rather than read off the CPU's flags: oneDNN's own dispatch decides (an
    AVX2-only CPU, or ``ONEDNN_MAX_CPU_ISA=AVX2``, has no bf16 kernel: "could not create a primitive
    descriptor")."""
    if not onednn_linear_available():
        return frozenset()
    runs = set()
    for dtype in (torch.float32, torch.bfloat16):
        try:
            onednn_linear(torch.ones(2, 8, dtype=dtype), torch.ones(4, 8, dtype=dtype))
        except RuntimeError:
            continue
        runs.add(dtype)
    return frozenset(runs)


def onednn_avx512() -> bool:
    """Whether oneDNN runs AVX-512 code here: the CPU has AVX-512 and ``ONEDNN_MAX_CPU_ISA`` does not hold
    oneDNN below it."""
    for variable in _ONEDNN_ISA_VARIABLES:
        cap = os.environ.get(variable, "").strip().upper()
        if cap and cap not in ("ALL", "DEFAULT") and not cap.startswith(("AVX512", "AVX10")):
            return False
    return bool(getattr(torch.cpu, "_is_avx512_supported", lambda: False)())


@dataclass(frozen=True)
class KernelChoice:
    """What :class:`CpuInferenceKernels` swaps: float32 products (``F.linear``) to oneDNN, and the dtypes of
    ``F.scaled_dot_product_attention`` that run as :func:`blocked_attention`."""

    float32_linear: bool = False
    attention_dtypes: frozenset[torch.dtype] = frozenset()

    @property
    def swaps_anything(self) -> bool:
        return self.float32_linear or bool(self.attention_dtypes)


def kernel_choice() -> KernelChoice:
    """The swap for this CPU and ``SAN_CPU_KERNELS`` (module docstring). ``auto``: float32 products and attention
    where oneDNN runs AVX-512 code (measured faster there, slower on an AVX2-only CPU: BENCHMARKS.md), bf16
    attention wherever oneDNN has a bf16 kernel (bf16 products already go to oneDNN through PyTorch).

    Raises :class:`~san.errors.OptionError` for any other ``SAN_CPU_KERNELS``.
    """
    setting = os.environ.get("SAN_CPU_KERNELS", "auto").strip().lower() or "auto"
    if setting not in KERNEL_SETTINGS:
        raise OptionError(
            f"environment variable SAN_CPU_KERNELS={setting}: expected one of {', '.join(KERNEL_SETTINGS)}"
        )
    runs = onednn_linear_dtypes()
    if setting == "pytorch" or not runs:
        return KernelChoice()
    float32 = torch.float32 in runs and (setting == "onednn" or onednn_avx512())
    attention = (runs & {torch.bfloat16}) | ({torch.float32} if float32 else set())
    return KernelChoice(float32_linear=float32, attention_dtypes=frozenset(attention))


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
    """While active, for CPU tensors that autograd does not record, what ``choice`` swaps: float32 ``F.linear``
    through :func:`onednn_linear`, and ``F.scaled_dot_product_attention`` of its dtypes through
    :func:`blocked_attention`. Any other call, or one with dropout, a causal or boolean mask, runs as usual."""

    def __init__(self, choice: KernelChoice) -> None:
        super().__init__()
        self.choice = choice

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            return inference_linear(*args, **kwargs, choice=self.choice)
        if func is F.scaled_dot_product_attention and _attention_is_swapped(self.choice, *args, **kwargs):
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


def _attention_is_swapped(
    choice: KernelChoice, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any
) -> bool:
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
        and q.dtype in choice.attention_dtypes
        and q.dtype == k.dtype == v.dtype
        and q.shape[:2] == k.shape[:2] == v.shape[:2]
        and min(q.shape[2], k.shape[2]) > 0
        and (mask is None or (mask.dtype == q.dtype and mask.device.type == "cpu"))
    )


def cpu_inference_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """:class:`CpuInferenceKernels` with this CPU's :func:`kernel_choice` for inference on the CPU, or a no-op
    context where it swaps nothing (other devices, an AVX2-only CPU, ``SAN_CPU_KERNELS=pytorch``)."""
    if torch.device(device).type == "cpu":
        choice = kernel_choice()
        if choice.swaps_anything:
            return CpuInferenceKernels(choice)
    return contextlib.nullcontext()


def inference_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, choice: KernelChoice | None = None
) -> torch.Tensor:
    """``F.linear``, through :func:`onednn_linear` where ``choice`` (default: this CPU's :func:`kernel_choice`)
    swaps float32 products and the call is one the swap handles: what :class:`CpuInferenceKernels` does, and
    what code outside the model uses so that its results do not depend on where it is called from
    (post-processing, by ``predict_*`` or on its own)."""
    choice = kernel_choice() if choice is None else choice
    if choice.float32_linear and _linear_is_swapped(x, weight, bias):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)
