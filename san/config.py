"""Configuration dataclasses for SAN and the presets registered by name.

A :class:`SANConfig` fully describes a model: the open_clip CLIP model it splits, the side
adapter ViT and its mask decoder, and the inference options. Configs round-trip through plain
dicts (``to_dict`` / ``from_dict``) so they can be stored next to the weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# OpenAI CLIP normalisation, the statistics SAN uses (0-1 scale).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipConfig:
    """The CLIP model SAN is built on.

    ``model_name`` is an open_clip model name (e.g. ``"ViT-B-16-quickgelu"``); ``model_cfg``,
    when given, is an open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``,
    ``quick_gelu``) used instead of looking the name up. ``pretrained`` is an open_clip pretrained
    tag (``"openai"``) or a weights file, loaded only when building for training from CLIP.
    """

    model_name: str = "ViT-B-16-quickgelu"
    model_cfg: dict[str, Any] | None = None
    pretrained: str | None = None
    feature_last_layer: int = 9
    template_set: str = "vild"


@dataclass(frozen=True)
class AttnBiasConfig:
    """Attention-bias branch of the side adapter's mask decoder."""

    num_heads: int = 12
    num_layers: int = 1
    embed_channels: int = 256
    mlp_channels: int = 256
    mlp_num_layers: int = 3
    rescale: bool = True


@dataclass(frozen=True)
class SideAdapterConfig:
    """The side ViT (timm blocks), its CLIP fusion map and deep-supervision levels.

    ``fusion_map`` holds ``(clip_index, side_index)`` pairs: CLIP feature ``clip_index`` (0 = after
    ``ln_pre``, i = after CLIP block i) is added to the side tokens at ``side_index`` (0 = before the
    first side block, j = after side block j). ``deep_supervision`` lists side block indices
    (1-based) whose outputs are decoded; inference uses the largest.
    """

    width: int = 240
    depth: int = 8
    num_heads: int = 6
    patch_size: int = 16
    image_size: int = 640
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    num_queries: int = 100
    fusion_map: tuple[tuple[int, int], ...] = ((0, 0), (3, 1), (6, 2), (9, 3))
    deep_supervision: tuple[int, ...] = (7, 8)
    attn_bias: AttnBiasConfig = field(default_factory=AttnBiasConfig)


@dataclass(frozen=True)
class SANConfig:
    """A whole SAN model: CLIP, side adapter and inference options."""

    clip: ClipConfig = field(default_factory=ClipConfig)
    side_adapter: SideAdapterConfig = field(default_factory=SideAdapterConfig)
    clip_resolution: float = 0.5
    size_divisibility: int = 32
    rec_downsample: str = "max"
    pixel_mean: tuple[float, float, float] = OPENAI_MEAN
    pixel_std: tuple[float, float, float] = OPENAI_STD

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SANConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        return _from_dict(cls, data, "config")

    def replace(self, **changes: Any) -> SANConfig:
        """A copy with top-level fields replaced."""
        return dataclasses.replace(self, **changes)


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        nested = {"clip": ClipConfig, "side_adapter": SideAdapterConfig, "attn_bias": AttnBiasConfig}
        if name in nested and isinstance(value, dict):
            kwargs[name] = _from_dict(nested[name], value, f"{where}.{name}")
        elif name == "fusion_map":
            kwargs[name] = tuple((int(a), int(b)) for a, b in value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


SIDE_WIDTHS = (144, 192, 240, 288)


def san_vit_b_16(side_width: int = 240) -> SANConfig:
    """SAN with CLIP ViT-B/16 (OpenAI weights, QuickGELU), as released by the paper's authors."""
    _check_side_width(side_width)
    return SANConfig(
        clip=ClipConfig(model_name="ViT-B-16-quickgelu", pretrained="openai", feature_last_layer=9),
        side_adapter=SideAdapterConfig(width=side_width),
        clip_resolution=0.5,
    )


def san_vit_l_14(side_width: int = 240) -> SANConfig:
    """SAN with CLIP ViT-L/14 at 336 px (OpenAI weights, QuickGELU)."""
    _check_side_width(side_width)
    return SANConfig(
        clip=ClipConfig(model_name="ViT-L-14-336-quickgelu", pretrained="openai", feature_last_layer=18),
        side_adapter=SideAdapterConfig(
            width=side_width,
            fusion_map=((0, 0), (6, 1), (12, 2), (18, 3)),
            attn_bias=AttnBiasConfig(num_heads=16),
        ),
        clip_resolution=0.7,
    )


TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 6, "width": 96, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def san_tiny() -> SANConfig:
    """A few-MB SAN for tests and smoke runs (random weights; not a useful labeler)."""
    return SANConfig(
        clip=ClipConfig(model_name="san-tiny", model_cfg=TINY_CLIP_CFG, feature_last_layer=4),
        side_adapter=SideAdapterConfig(
            width=48,
            depth=4,
            num_heads=3,
            image_size=160,
            num_queries=10,
            fusion_map=((0, 0), (2, 1), (4, 2)),
            deep_supervision=(3, 4),
            attn_bias=AttnBiasConfig(num_heads=3, embed_channels=32, mlp_channels=32),
        ),
        clip_resolution=0.5,
    )


def _check_side_width(width: int) -> None:
    if width not in SIDE_WIDTHS:
        raise ValueError(f"side adapter width {width} is not one of the paper's widths {SIDE_WIDTHS}")


PRESETS = {"san_vit_b_16": san_vit_b_16, "san_vit_l_14": san_vit_l_14, "san_tiny": san_tiny}


def get_preset(name: str, **kwargs: Any) -> SANConfig:
    """The config registered as ``name``; unknown names raise ``KeyError`` listing the choices."""
    if name not in PRESETS:
        raise KeyError(f"unknown SAN preset {name!r}; available presets: {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)
