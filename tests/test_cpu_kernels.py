"""The oneDNN kernels that SAN's CPU inference swaps in: the same results as PyTorch's own, and used only where
they apply (inference on CPU tensors of the dtypes they handle)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import san
from san.modeling import cpu_kernels
from san.modeling.cpu_kernels import CpuInferenceKernels, blocked_attention, onednn_linear, onednn_linear_available
from san.modeling.postprocess import semantic_scores

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="needs an x86-64 CPU and PyTorch with oneDNN")


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
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
    with CpuInferenceKernels():
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
    assert isinstance(cpu_kernels.cpu_inference_kernels(torch.device("cpu")), CpuInferenceKernels)
    monkeypatch.setenv("SAN_CPU_KERNELS", "pytorch")
    assert not isinstance(cpu_kernels.cpu_inference_kernels(torch.device("cpu")), CpuInferenceKernels)


def test_post_processing_gives_the_same_bits_inside_and_outside_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Post-processing takes the oneDNN product wherever it runs (``predict_*``, test-time augmentation, alone),
    so that its results never depend on the caller; ``SAN_CPU_KERNELS=pytorch`` takes PyTorch's own."""
    linears = count_calls(monkeypatch, "onednn_linear")
    torch.manual_seed(0)
    mask_preds, mask_logits = torch.randn(5, 8, 8), torch.randn(5, 4)
    args = (mask_preds, mask_logits, (32, 32), (30, 27), (61, 50))
    alone = semantic_scores(*args)
    assert linears[0] > 0
    with CpuInferenceKernels():
        assert torch.equal(semantic_scores(*args), alone)
    monkeypatch.setenv("SAN_CPU_KERNELS", "pytorch")
    calls = linears[0]
    pytorch = semantic_scores(*args)
    assert linears[0] == calls
    torch.testing.assert_close(pytorch, alone)
