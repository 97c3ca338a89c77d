"""Architecture, presets and input validation of the SAN model library."""

from __future__ import annotations

import pytest
import torch

import san
from san.config import SANConfig, get_preset
from san.modeling.prompts import get_templates


@pytest.fixture(scope="module")
def tiny() -> san.SAN:
    torch.manual_seed(0)
    return san.build_san("san_tiny").eval()


@pytest.mark.parametrize(
    ("width", "expected"), [(144, 4_206_290), (192, 6_067_394), (240, 8_370_866), (288, 11_116_706)]
)
def test_trainable_parameters_match_the_paper(width: int, expected: int) -> None:
    model = san.build_san("san_vit_b_16", side_width=width)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected
    outside_side_adapter = sorted(n for n in trainable if not n.startswith("side_adapter."))
    assert outside_side_adapter == ["clip_features.positional_embedding", "text_classifier.bg_embed"]


def test_vit_b_16_preset_architecture() -> None:
    model = san.build_san("san_vit_b_16")
    cfg = model.config
    assert cfg.clip.model_name == "ViT-B-16-quickgelu" and cfg.clip.pretrained == "openai"
    assert len(model.clip_features.resblocks) == 9 and len(model.clip_recognition.resblocks) == 3
    assert type(model.clip_features.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    side = model.side_adapter
    assert side.vit.embed_dim == 240 and len(side.vit.blocks) == 8 and side.vit.blocks[0].attn.num_heads == 6
    assert side.vit.pos_embed.shape == (1, 40 * 40, 240)
    assert side.query_embed.shape == (1, 100, 240)
    assert side.fusion_map == {0: 0, 1: 3, 2: 6, 3: 9}
    assert cfg.side_adapter.deep_supervision == (7, 8)
    assert side.mask_decoder.num_heads == 12 == model.clip_recognition.num_heads
    assert cfg.clip_resolution == 0.5


def test_vit_l_14_preset_config() -> None:
    cfg = get_preset("san_vit_l_14")
    assert cfg.clip.model_name == "ViT-L-14-336-quickgelu"
    assert cfg.clip.feature_last_layer == 18
    assert cfg.side_adapter.fusion_map == ((0, 0), (6, 1), (12, 2), (18, 3))
    assert cfg.side_adapter.attn_bias.num_heads == 16
    assert cfg.clip_resolution == 0.7


def test_template_sets() -> None:
    assert len(get_templates("vild")) == 14
    assert len(get_templates("imagenet")) == 80
    assert all(t.count("{}") == 1 for t in get_templates("imagenet"))
    with pytest.raises(KeyError, match="available"):
        get_templates("nope")


def test_config_round_trip() -> None:
    for name in ("san_vit_b_16", "san_vit_l_14", "san_tiny"):
        cfg = get_preset(name)
        assert SANConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        SANConfig.from_dict({"clip_resolutoin": 0.5})


def test_unknown_preset_and_clip_model() -> None:
    with pytest.raises(KeyError, match="available presets"):
        san.build_san("san_vit_h_99")
    with pytest.raises(ValueError, match="side adapter width"):
        san.build_san("san_vit_b_16", side_width=100)
    cfg = get_preset("san_tiny")
    bad = cfg.replace(clip=type(cfg.clip)(model_name="ViT-Q-99", feature_last_layer=4))
    with pytest.raises(ValueError, match="unknown CLIP model 'ViT-Q-99'"):
        san.SAN(bad)


def test_predict_scores_shapes_and_classifier_cache(tiny: san.SAN) -> None:
    images = [
        torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8),
        torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8),
    ]
    scores = tiny.predict_scores(images, ["cat", "dog", "sky"])
    assert [tuple(s.shape) for s in scores] == [(3, 50, 70), (3, 64, 64)]
    assert all(s.dtype == torch.float32 and torch.isfinite(s).all() for s in scores)
    assert set(tiny.text_classifier._cache) >= {"cat", "dog", "sky"}
    resized = tiny.predict_scores(images[:1], ["cat"], output_sizes=[(100, 140)])
    assert resized[0].shape == (1, 100, 140)


def test_class_embeddings_do_not_depend_on_the_other_classes(tiny: san.SAN) -> None:
    tiny.text_classifier.clear_cache()
    alone = tiny.text_classifier.class_embeddings(["sky"])
    tiny.text_classifier.clear_cache()
    together = tiny.text_classifier.class_embeddings(["cat", "sky", "road"])[1:2]
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("vocabulary", "message"),
    [([], "empty"), (["cat", " "], "blank"), (["cat", "dog", "cat"], "duplicate name 'cat'"), ("cat", "not a single")],
)
def test_bad_vocabulary(tiny: san.SAN, vocabulary, message: str) -> None:
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    with pytest.raises((ValueError, TypeError), match=message):
        tiny.predict_scores([image], vocabulary)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.zeros(3, 32, 32), "uint8"),
        (torch.zeros(32, 32, 3, dtype=torch.uint8), "3 x H x W"),
        (torch.zeros(1, 32, 32, dtype=torch.uint8), "3 x H x W"),
        (torch.zeros(32, 32, dtype=torch.uint8), "3 x H x W"),
        (torch.zeros(3, 0, 32, dtype=torch.uint8), "3 x H x W"),
    ],
)
def test_bad_image(tiny: san.SAN, image: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny.predict_scores([image], ["cat"])


def test_bad_image_container(tiny: san.SAN) -> None:
    with pytest.raises(TypeError, match="list of"):
        tiny.predict_scores(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["cat"])
    with pytest.raises(TypeError, match="numpy|ndarray|expected a torch.Tensor"):
        tiny.predict_scores([torch.zeros(3, 8, 8, dtype=torch.uint8).numpy()], ["cat"])
    with pytest.raises(ValueError, match="no images"):
        tiny.predict_scores([], ["cat"])


def test_predict_scores_restores_training_mode(tiny: san.SAN) -> None:
    tiny.train()
    try:
        tiny.predict_scores([torch.zeros(3, 32, 32, dtype=torch.uint8)], ["cat"])
        assert tiny.training and tiny.side_adapter.training
        assert not tiny.text_classifier.training, "the text classifier stays frozen in eval mode"
    finally:
        tiny.eval()
