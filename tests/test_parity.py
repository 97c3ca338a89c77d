"""Number-for-number parity with the official SAN implementation.

The fixture in ``tests/data/parity`` (a copy of ``shared/parity/public``) holds a tiny SAN in the
official release layout and the official implementation's outputs at every stage. Every tensor this
project computes is compared with ``max|ours - ref| <= 1e-4 * max(1, max|ref|)`` in float32, and the
float64 run of the same model with the official float64 reference at ``1e-9``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import san

PARITY = Path(__file__).parent / "data" / "parity"
CASES = ("single", "batch2")


def assert_close(ours: torch.Tensor, ref: torch.Tensor, name: str, rel: float = 1e-4) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    tol = rel * max(1.0, ref.abs().max().item())
    diff = (ours.to(ref.dtype) - ref).abs().max().item()
    assert diff <= tol, f"{name}: max |ours - ref| = {diff:.3g} > {tol:.3g}"


@pytest.fixture(scope="module")
def io() -> dict:
    return torch.load(PARITY / "io.pt", weights_only=True)


@pytest.fixture(scope="module")
def model() -> san.SAN:
    return san.load_official(PARITY / "checkpoint.pth", PARITY / "config.json")


class Capture:
    """Forward hooks that record the inputs/outputs of the model's submodules during one call."""

    def __init__(self, model: san.SAN):
        side = model.side_adapter
        self.values: dict[str, object] = {}
        self.handles = [
            side.vit.blocks[0].register_forward_pre_hook(self._save_input("block0_input")),
            side.fusion_layers["layer_0"].register_forward_pre_hook(self._save_input("fusion0_input")),
            side.mask_decoder.register_forward_pre_hook(self._save_args("mask_decoder")),
        ]
        for i, block in enumerate(side.vit.blocks):
            self.handles.append(block.register_forward_hook(self._save_output(f"block_{i}")))
        for name, layer in side.fusion_layers.items():
            self.handles.append(layer.register_forward_hook(self._save_output(f"fusion_{name}")))
        for i, block in enumerate(model.clip_recognition.resblocks):
            self.handles.append(block.register_forward_hook(self._save_output(f"rec_{i}")))
        mask_fn = model.clip_recognition.sls_attention_mask

        def record_mask(*args, **kwargs):
            self.values["sls_mask"] = mask_fn(*args, **kwargs)
            return self.values["sls_mask"]

        model.clip_recognition.sls_attention_mask = record_mask
        self.model = model

    def _save_input(self, key):
        return lambda module, args: self.values.__setitem__(key, args[0].detach().clone())

    def _save_args(self, key):
        return lambda module, args: self.values.__setitem__(key, [a.detach().clone() for a in args])

    def _save_output(self, key):
        return lambda module, args, output: self.values.__setitem__(key, output.detach().clone())

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        del self.model.clip_recognition.sls_attention_mask


@pytest.mark.parametrize("case", CASES)
def test_text_classifier(model: san.SAN, io: dict, case: str) -> None:
    ref = io["cases"][case]
    vocab, templates = io["vocabulary"], io["templates"]
    classifier = model.text_classifier
    assert classifier.templates == tuple(templates)
    tokens = torch.stack([classifier.tokenizer([t.format(w) for w in vocab]) for t in templates])
    assert torch.equal(tokens, ref["text_tokens"])
    per_template = classifier.encode_prompts([t.format(w) for t in templates for w in vocab])
    assert_close(
        per_template.reshape(ref["text_embeddings_per_template"].shape),
        ref["text_embeddings_per_template"],
        "text_embeddings_per_template",
    )
    assert_close(classifier(vocab), ref["ov_classifier_weight"], "ov_classifier_weight")
    assert_close(classifier.logit_scale, ref["logit_scale"], "logit_scale")
    assert_close(model.classifier(vocab), ref["ov_classifier_weight_scaled"], "ov_classifier_weight_scaled")


@pytest.mark.parametrize("case", CASES)
def test_every_stage_eval(model: san.SAN, io: dict, case: str) -> None:
    ref = io["cases"][case]
    vocab = io["vocabulary"]
    q = model.config.side_adapter.num_queries
    capture = Capture(model)
    try:
        with torch.no_grad():
            padded = model.normalize_and_pad(ref["images"])
            clip_input = model.clip_input(padded)
            features = model.clip_features(clip_input)
            out = model(padded, vocab)
    finally:
        capture.close()
    v = capture.values

    assert_close(padded, ref["images_normalized_padded"], "images_normalized_padded")
    assert_close(clip_input, ref["clip_input"], "clip_input")
    for i in range(model.config.clip.feature_last_layer + 1):
        assert_close(features.patch_map(i), ref["clip_features"][i], f"clip_features[{i}]")
        assert_close(features.cls_token(i)[None], ref["clip_features"][f"{i}_cls_token"], f"clip_features[{i}_cls]")

    x0 = torch.cat([v["block0_input"][:, :q], v["fusion0_input"]], dim=1)
    assert_close(x0, ref["side_adapter_x0"], "side_adapter_x0")
    for i, expected in enumerate(ref["side_adapter_block_outputs"]):
        assert_close(v[f"block_{i}"], expected, f"side_adapter_block_outputs[{i}]")
    for name, expected in ref["side_adapter_fusion_outputs"].items():
        assert_close(v[f"fusion_{name}"], expected, f"side_adapter_fusion_outputs[{name}]")
    query, x = v["mask_decoder"]
    assert_close(query, ref["mask_decoder_query"], "mask_decoder_query")
    assert_close(x, ref["mask_decoder_x"], "mask_decoder_x")

    assert len(out.mask_preds) == 1, "eval decodes only the last deep-supervision level"
    assert_close(out.mask_preds[0], ref["mask_preds"], "mask_preds")
    (biases,) = model.side_adapter(padded, features).attn_biases
    for i, expected in enumerate(ref["attn_biases"]):
        assert_close(biases[i], expected, f"attn_biases[{i}]")

    # The official (Q+1+L)^2 mask: its SLS rows over the patch columns are the pooled bias; its
    # SLS-over-SLS block allows only the diagonal. The rows of CLS and patches carry no bias.
    rec_mask = ref["rec_attn_mask"]
    sls_mask = v["sls_mask"].flatten(0, 1)  # [B*heads, Q, Q+L], row b*heads + head
    assert_close(sls_mask[:, :, q:], rec_mask[:, :q, q + 1 :], "rec_attn_mask[SLS rows, patch columns]")
    assert torch.equal(sls_mask[:, :, :q] == 0, rec_mask[:, :q, :q] == 0)
    assert (rec_mask[:, :q, q] == -100).all(), "SLS rows ignore the CLS token"
    assert (rec_mask[:, q:, q:] == 0).all() and (rec_mask[:, q:, :q] == -100).all()
    for i, expected in enumerate(ref["rec_block_outputs"]):
        assert_close(v[f"rec_{i}"].transpose(0, 1), expected, f"rec_block_outputs[{i}]")

    assert_close(out.mask_embs[0], ref["mask_embs"], "mask_embs")
    assert_close(out.mask_logits[0], ref["mask_logits"], "mask_logits")


@pytest.mark.parametrize("case", CASES)
def test_sem_seg(model: san.SAN, io: dict, case: str) -> None:
    ref = io["cases"][case]
    sizes = list(zip(ref["heights"], ref["widths"], strict=True))
    scores = model.predict_scores(ref["images"], io["vocabulary"], output_sizes=sizes)
    for i, expected in enumerate(ref["sem_seg"]):
        assert_close(scores[i], expected, f"sem_seg[{i}]")


@pytest.mark.parametrize("case", CASES)
def test_training_mode_deep_supervision(model: san.SAN, io: dict, case: str) -> None:
    ref = io["cases"][case]["train"]
    model.train()
    try:
        with torch.no_grad():
            padded = model.normalize_and_pad(io["cases"][case]["images"])
            out = model(padded, io["vocabulary"])
            side = model.side_adapter(padded, model.clip_features(model.clip_input(padded)))
    finally:
        model.eval()
    assert len(out.mask_preds) == len(model.config.side_adapter.deep_supervision) == len(ref["mask_preds"])
    for level in range(len(ref["mask_preds"])):
        assert_close(out.mask_preds[level], ref["mask_preds"][level], f"train.mask_preds[{level}]")
        assert_close(out.mask_embs[level], ref["mask_embs"][level], f"train.mask_embs[{level}]")
        assert_close(out.mask_logits[level], ref["mask_logits"][level], f"train.mask_logits[{level}]")
        for layer, expected in enumerate(ref["attn_biases"][level]):
            assert_close(side.attn_biases[level][layer], expected, f"train.attn_biases[{level}][{layer}]")


@pytest.mark.parametrize("case", CASES)
def test_float64_matches_official_float64(io: dict, case: str) -> None:
    model = san.load_official(PARITY / "checkpoint.pth", PARITY / "config.json").double()
    ref = io["float64_reference"][case]
    inputs = io["cases"][case]
    with torch.no_grad():
        padded = model.normalize_and_pad(inputs["images"])
        features = model.clip_features(model.clip_input(padded))
        out = model(padded, io["vocabulary"])
        biases = model.side_adapter(padded, features).attn_biases[0]
    rel = 1e-9
    assert_close(model.text_classifier(io["vocabulary"]), ref["ov_classifier_weight"], "ov_classifier_weight", rel)
    for i in range(model.config.clip.feature_last_layer + 1):
        assert_close(features.patch_map(i), ref["clip_features"][i], f"clip_features[{i}]", rel)
    assert_close(out.mask_preds[0], ref["mask_preds"], "mask_preds", rel)
    assert_close(biases[0], ref["attn_biases"][0], "attn_biases", rel)
    assert_close(out.mask_embs[0], ref["mask_embs"], "mask_embs", rel)
    assert_close(out.mask_logits[0], ref["mask_logits"], "mask_logits", rel)
    sizes = list(zip(inputs["heights"], inputs["widths"], strict=True))
    for i, scores in enumerate(model.predict_scores(inputs["images"], io["vocabulary"], output_sizes=sizes)):
        assert scores.dtype == torch.float64
        assert_close(scores, ref["sem_seg"][i], f"sem_seg[{i}]", rel)


def test_scores_do_not_depend_on_the_batch(model: san.SAN, io: dict) -> None:
    image = io["cases"]["single"]["images"][0]
    small = image[:, :100, :130].contiguous()
    same_pad = image[:, :150, :200].contiguous()
    alone = [model.predict_scores([im], io["vocabulary"])[0] for im in (image, small, same_pad)]
    together = model.predict_scores([image, small, same_pad], io["vocabulary"])
    for a, b in zip(alone, together, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert together[1].shape == (7, 100, 130)
