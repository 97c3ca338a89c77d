"""The oneDNN kernels that SAN's CPU inference swaps in: the same results as PyTorch's own, used only where they
apply (inference on CPU tensors of the dtypes they handle) and only on CPUs where they are faster and exist.

The choice is tested on every CPU: the CPU's features are set by hand, and oneDNN's own cap on the instruction
set (``ONEDNN_MAX_CPU_ISA=AVX2``, which makes oneDNN refuse bf16 kernels as it does on an AVX2-only CPU) runs a
whole bf16 prediction in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import san
from san.errors import OptionError
from san.modeling import cpu_kernels
from san.modeling.cpu_kernels import (
    CpuInferenceKernels,
    KernelChoice,
    blocked_attention,
    kernel_choice,
    onednn_linear,
    onednn_linear_available,
    onednn_linear_dtypes,
)
from san.modeling.postprocess import semantic_scores

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="needs an x86-64 CPU and PyTorch with oneDNN")
SWAP_ALL = KernelChoice(float32_linear=True, attention_dtypes=frozenset({torch.float32, torch.bfloat16}))
BF16_KERNELS = pytest.mark.skipif(
    torch.bfloat16 not in onednn_linear_dtypes(), reason="oneDNN has no bf16 kernel on this CPU (e.g. AVX2 only)"
)


def test_onednn_linear_equals_f_linear_for_any_layout() -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 64), torch.randn(96)
    inputs = {
        "2d": torch.randn(50, 64),
        "3d": torch.randn(2, 50, 64),
        "transposed": torch.randn(50, 2, 64).transpose(0, 1),
        "rows with gaps": torch.randn(50, 3, 64)[:, 1],
    }
    for name, x in inputs.items():
        for w in (weight, torch.randn(64, 96).t()):
            torch.testing.assert_close(onednn_linear(x, w, bias), F.linear(x, w, bias), msg=name)
    torch.testing.assert_close(onednn_linear(inputs["2d"], weight), F.linear(inputs["2d"], weight))


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=BF16_KERNELS)], ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["no mask", "additive mask"])
def test_blocked_attention_equals_sdpa(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, masked: bool) -> None:
    monkeypatch.setattr(cpu_kernels, "ATTENTION_BLOCK_ELEMENTS", 7 * 30)  # 7 query rows per block: 5 blocks
    torch.manual_seed(0)
    qkv = torch.randn(2, 33, 3, 4, 16).permute(2, 0, 3, 1, 4).to(dtype)  # strided, as attention blocks make them
    q, k, v = qkv[0], qkv[1, :, :, :30], qkv[2, :, :, :30, :12]  # values narrower than queries and keys
    mask = None
    if masked:
        mask = torch.randn(2, 1, 33, 30).to(dtype)
        mask[..., ::3] = float("-inf")
    reference_mask = None if mask is None else mask.double()
    ours = blocked_attention(q, k, v, attn_mask=mask)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=reference_mask)
    assert ours.dtype == dtype and ours.shape == expected.shape
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(ours.double(), expected, rtol=0, atol=tolerance)
    scaled = blocked_attention(q, k, v, attn_mask=mask, scale=0.1)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=reference_mask, scale=0.1)
    torch.testing.assert_close(scaled.double(), expected, rtol=0, atol=tolerance)


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls = [0]
    original = getattr(cpu_kernels, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(cpu_kernels, name, counted)
    return calls


def test_the_mode_swaps_only_inference_calls_it_handles(monkeypatch: pytest.MonkeyPatch) -> None:
    linears, attentions = count_calls(monkeypatch, "onednn_linear"), count_calls(monkeypatch, "blocked_attention")
    x, w = torch.randn(4, 8), torch.randn(6, 8, requires_grad=True)
    q = torch.randn(1, 2, 5, 8)
    with CpuInferenceKernels(SWAP_ALL):
        F.linear(x, w)  # gradients on: PyTorch's own, which has a backward
        F.linear(x.double(), w.double())
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
        F.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(5, 5, dtype=torch.bool))
        assert (linears[0], attentions[0]) == (0, 0)
        with torch.no_grad():
            out = F.linear(x, w)
            attended = F.scaled_dot_product_attention(q, q, q)
            F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    assert attentions[0] == 1 and linears[0] == 1 + 2 * 2  # the linear, then two products per attention head
    torch.testing.assert_close(out, F.linear(x, w.detach()))
    torch.testing.assert_close(attended, F.scaled_dot_product_attention(q, q, q))


def test_predictions_on_cpu_run_through_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """``predict_scores`` uses the swapped kernels on CPU; the model's forward outside it does not."""
    monkeypatch.setenv("SAN_CPU_KERNELS", "onednn")  # the float32 swap whatever the CPU
    linears, attentions = count_calls(monkeypatch, "onednn_linear"), count_calls(monkeypatch, "blocked_attention")
    torch.manual_seed(0)
    model = san.build_san("san_tiny").eval()
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    with torch.no_grad():
        model(model.normalize_and_pad([image]), ["cat", "dog"])
    assert (linears[0], attentions[0]) == (0, 0)
    model.predict_scores([image], ["cat", "dog"])
    assert linears[0] > 0 and attentions[0] > 0


def test_the_environment_can_turn_the_kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAN_CPU_KERNELS", "onednn")
    assert isinstance(cpu_kernels.cpu_inference_kernels(torch.device("cpu")), CpuInferenceKernels)
    assert not isinstance(cpu_kernels.cpu_inference_kernels(torch.device("meta")), CpuInferenceKernels)
    monkeypatch.setenv("SAN_CPU_KERNELS", "pytorch")
    assert not isinstance(cpu_kernels.cpu_inference_kernels(torch.device("cpu")), CpuInferenceKernels)
    monkeypatch.setenv("SAN_CPU_KERNELS", "fast")
    with pytest.raises(OptionError, match="SAN_CPU_KERNELS=fast: expected one of auto, onednn, pytorch"):
        kernel_choice()


@pytest.mark.parametrize(
    ("avx512", "onednn_dtypes", "setting", "float32_linear", "attention"),
    [
        (True, {torch.float32, torch.bfloat16}, "auto", True, {torch.float32, torch.bfloat16}),
        (True, {torch.float32}, "auto", True, {torch.float32}),  # oneDNN without bf16 kernels
        (False, {torch.float32}, "auto", False, set()),  # AVX2 only: oneDNN's float32 is slower, no bf16
        (False, {torch.float32, torch.bfloat16}, "auto", False, {torch.bfloat16}),
        (False, {torch.float32}, "onednn", True, {torch.float32}),  # forced, to measure it
        (True, {torch.float32, torch.bfloat16}, "pytorch", False, set()),
        (True, set(), "auto", False, set()),  # no oneDNN linear kernel at all
    ],
)
def test_the_kernels_fit_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
    avx512: bool,
    onednn_dtypes: set[torch.dtype],
    setting: str,
    float32_linear: bool,
    attention: set[torch.dtype],
) -> None:
    """The swap follows the CPU: float32 where oneDNN runs AVX-512 code, bf16 attention where oneDNN has a
    bf16 kernel, nothing on an AVX2-only CPU; whatever CPU runs this test."""
    monkeypatch.setattr(cpu_kernels, "onednn_avx512", lambda: avx512)
    monkeypatch.setattr(cpu_kernels, "onednn_linear_dtypes", lambda: frozenset(onednn_dtypes))
    monkeypatch.setenv("SAN_CPU_KERNELS", setting)
    choice = kernel_choice()
    assert choice == KernelChoice(float32_linear, frozenset(attention))
    context = cpu_kernels.cpu_inference_kernels(torch.device("cpu"))
    assert isinstance(context, CpuInferenceKernels) == choice.swaps_anything


@pytest.mark.parametrize("cap", ["AVX2", "avx2_vnni", "SSE41", "AVX"])
def test_a_onednn_isa_cap_below_avx512_turns_the_float32_swap_off(monkeypatch: pytest.MonkeyPatch, cap: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(variable, raising=False)
    assert cpu_kernels.onednn_avx512()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert not cpu_kernels.onednn_avx512()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert cpu_kernels.onednn_avx512()


def test_swapped_attention_equals_pytorch_for_every_dtype_on_this_cpu() -> None:
    """Under this CPU's own choice, attention of every dtype gives PyTorch's result (runs on every CPU)."""
    torch.manual_seed(0)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        q, k, v = (torch.randn(1, 2, 9, 16).to(dtype) for _ in range(3))
        with torch.no_grad(), cpu_kernels.cpu_inference_kernels(torch.device("cpu")):
            ours = F.scaled_dot_product_attention(q, k, v)
        expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        torch.testing.assert_close(ours.double(), expected, rtol=0, atol=tolerance)


BF16_PREDICTION = textwrap.dedent(
    """
    import warnings
    import numpy as np
    import torch
    import san
    from san.modeling import cpu_kernels
    from san.predictor import Predictor
    from san.settings import PredictionSettings
    from san.transforms import ResizeShortestEdge

    torch.manual_seed(0)
    model = san.build_san("san_tiny").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "no bf16 units" where the CPU has none
        settings = PredictionSettings(dtype="bf16", resize=ResizeShortestEdge(64, 64))
        predictor = Predictor(model, ["cat", "dog"], device="cpu", settings=settings)
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    prediction = predictor.predict([image])[0]
    assert prediction.label_map.shape == (48, 80)
    print(sorted(str(t) for t in cpu_kernels.onednn_linear_dtypes()), cpu_kernels.kernel_choice())
    """
)


def test_bf16_prediction_runs_where_onednn_has_no_bf16_kernels() -> None:
    """oneDNN held to AVX2 (no bf16 kernels, as on an AVX2-only CPU): a bf16 prediction runs through PyTorch's
    own kernels instead of failing to create a oneDNN primitive."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "SAN_CPU_KERNELS": "auto"}
    result = subprocess.run(
        [sys.executable, "-c", BF16_PREDICTION], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['torch.float32'] KernelChoice(float32_linear=False, attention_dtypes=frozenset())" in result.stdout


def test_post_processing_gives_the_same_bits_inside_and_outside_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Post-processing takes the oneDNN product wherever it runs (``predict_*``, test-time augmentation, alone),
    so that its results never depend on the caller; ``SAN_CPU_KERNELS=pytorch`` takes PyTorch's own."""
    monkeypatch.setenv("SAN_CPU_KERNELS", "onednn")
    linears = count_calls(monkeypatch, "onednn_linear")
    torch.manual_seed(0)
    mask_preds, mask_logits = torch.randn(5, 8, 8), torch.randn(5, 4)
    args = (mask_preds, mask_logits, (32, 32), (30, 27), (61, 50))
    alone = semantic_scores(*args)
    assert linears[0] > 0
    with CpuInferenceKernels(SWAP_ALL):
        assert torch.equal(semantic_scores(*args), alone)
    monkeypatch.setenv("SAN_CPU_KERNELS", "pytorch")
    calls = linears[0]
    pytorch = semantic_scores(*args)
    assert linears[0] == calls
    torch.testing.assert_close(pytorch, alone)
