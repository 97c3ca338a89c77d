"""Read the official SAN configuration (detectron2 ``MODEL.SAN.*`` / ``MODEL.SIDE_ADAPTER.*`` fields)
into a :class:`~san.config.SANConfig`.

Accepted forms: a preset name, a dict, or a JSON/YAML file, with the fields either nested
(``{"MODEL": {"SAN": {...}}}``, as in the official YAML files, ``_BASE_`` included) or dotted
(``{"MODEL.SAN": {...}}``, as in the parity fixture's ``config.json``). An ``open_clip_model_cfg``
entry, when present, gives the CLIP architecture instead of ``CLIP_MODEL_NAME``. Fields missing
from the file take the official defaults (``san/config.py`` of the official repository).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from .config import AttnBiasConfig, ClipConfig, SANConfig, SideAdapterConfig, get_preset
from .errors import ModelConfigError

# Official defaults (add_san_config); training-only fields are accepted and ignored here.
SAN_DEFAULTS: dict[str, Any] = {
    "NO_OBJECT_WEIGHT": 0.1,
    "CLASS_WEIGHT": 2.0,
    "DICE_WEIGHT": 5.0,
    "MASK_WEIGHT": 5.0,
    "TRAIN_NUM_POINTS": 112 * 112,
    "NUM_CLASSES": 171,
    "OVERSAMPLE_RATIO": 3.0,
    "IMPORTANCE_SAMPLE_RATIO": 0.75,
    "CLIP_MODEL_NAME": "ViT-B/16",
    "CLIP_PRETRAINED_NAME": "openai",
    "CLIP_TEMPLATE_SET": "vild",
    "FEATURE_LAST_LAYER_IDX": 9,
    "CLIP_FROZEN_EXCLUDE": ["positional_embedding"],
    "CLIP_DEEPER_FROZEN_EXCLUDE": [],
    "REC_CROSS_ATTN": False,
    "REC_DOWNSAMPLE_METHOD": "max",
    "SOS_TOKEN_FORMAT": "cls_token",
    "SIZE_DIVISIBILITY": 32,
    "ASYMETRIC_INPUT": True,
    "CLIP_RESOLUTION": 0.5,
    "SEM_SEG_POSTPROCESS_BEFORE_INFERENCE": True,
}
SIDE_ADAPTER_DEFAULTS: dict[str, Any] = {
    "NAME": "RegionwiseSideAdapterNetwork",
    "VIT_NAME": "vit_w240n6d8_patch16",
    "PRETRAINED": False,
    "IMAGE_SIZE": 640,
    "DROP_PATH_RATE": 0.0,
    "NUM_QUERIES": 100,
    "FUSION_TYPE": "add",
    "FUSION_MAP": ["0->0", "3->1", "6->2", "9->3"],
    "DEEP_SUPERVISION_IDXS": [7, 8],
    "ATTN_BIAS": {
        "NUM_HEADS": 12,
        "NUM_LAYERS": 1,
        "EMBED_CHANNELS": 256,
        "MLP_CHANNELS": 256,
        "MLP_NUM_LAYERS": 3,
        "RESCALE_ATTN_BIAS": True,
    },
}
# Values other than these select code paths the released models do not use.
_REQUIRED = {
    ("SAN", "REC_CROSS_ATTN"): False,
    ("SAN", "SOS_TOKEN_FORMAT"): "cls_token",
    ("SIDE_ADAPTER", "FUSION_TYPE"): "add",
    ("SIDE_ADAPTER", "NAME"): "RegionwiseSideAdapterNetwork",
    ("SIDE_ADAPTER", "PRETRAINED"): False,
}
_VIT_NAME = re.compile(r"^vit_w(?P<width>\d+)n(?P<heads>\d+)d(?P<depth>\d+)_patch(?P<patch>\d+)$")


def read_official_config(config: str | Path | dict[str, Any]) -> SANConfig:
    """A :class:`SANConfig` from a preset name, a config dict or a JSON/YAML file (see module doc)."""
    if isinstance(config, dict):
        return _convert(config, "config")
    path = Path(config)
    if not path.exists():
        if isinstance(config, str) and "/" not in config and not path.suffix:
            return get_preset(config)
        raise ModelConfigError(f"SAN config {str(path)!r} does not exist (give a preset name or a JSON/YAML file)")
    return _convert(_load_file(path), str(path))


def _load_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        problem = " ".join(str(error).split())  # one line (YAML's messages span several)
        raise ModelConfigError(f"{path}: cannot read the SAN config: {problem}") from error
    if not isinstance(data, dict):
        raise ModelConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    return _deep_merge(_load_file(path.parent / base), data)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    nested = data.get("MODEL", {}).get(name, {}) if isinstance(data.get("MODEL"), dict) else {}
    return {**nested, **data.get(f"MODEL.{name}", {})}


def _merge_defaults(section: dict[str, Any], defaults: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(section) - set(defaults))
    if unknown:
        raise ModelConfigError(f"{where}: unknown fields {unknown}; known fields: {sorted(defaults)}")
    return _deep_merge(defaults, section)


def _convert(data: dict[str, Any], where: str) -> SANConfig:
    san = _merge_defaults(_section(data, "SAN"), SAN_DEFAULTS, f"{where}: MODEL.SAN")
    side = _merge_defaults(_section(data, "SIDE_ADAPTER"), SIDE_ADAPTER_DEFAULTS, f"{where}: MODEL.SIDE_ADAPTER")
    attn = _merge_defaults(side["ATTN_BIAS"], SIDE_ADAPTER_DEFAULTS["ATTN_BIAS"], f"{where}: ATTN_BIAS")
    for (section, key), expected in _REQUIRED.items():
        value = (san if section == "SAN" else side)[key]
        if value != expected:
            raise ModelConfigError(f"{where}: MODEL.{section}.{key}={value!r} is not supported (only {expected!r})")
    vit = _VIT_NAME.match(side["VIT_NAME"])
    if vit is None:
        raise ModelConfigError(
            f"{where}: cannot read VIT_NAME {side['VIT_NAME']!r} (expected vit_w<width>n<heads>d<depth>_patch<p>)"
        )
    fusion = []
    for entry in side["FUSION_MAP"]:
        match = re.fullmatch(r"\s*(\d+)\s*->\s*(\d+)\s*", entry)
        if match is None:
            raise ModelConfigError(f"{where}: FUSION_MAP entry {entry!r} is not of the form 'clip->side'")
        fusion.append((int(match[1]), int(match[2])))
    return SANConfig(
        clip=_clip_config(san, data.get("open_clip_model_cfg")),
        side_adapter=SideAdapterConfig(
            width=int(vit["width"]),
            depth=int(vit["depth"]),
            num_heads=int(vit["heads"]),
            patch_size=int(vit["patch"]),
            image_size=int(side["IMAGE_SIZE"]),
            drop_path_rate=float(side["DROP_PATH_RATE"]),
            num_queries=int(side["NUM_QUERIES"]),
            fusion_map=tuple(fusion),
            deep_supervision=tuple(int(i) for i in side["DEEP_SUPERVISION_IDXS"]),
            attn_bias=AttnBiasConfig(
                num_heads=int(attn["NUM_HEADS"]),
                num_layers=int(attn["NUM_LAYERS"]),
                embed_channels=int(attn["EMBED_CHANNELS"]),
                mlp_channels=int(attn["MLP_CHANNELS"]),
                mlp_num_layers=int(attn["MLP_NUM_LAYERS"]),
                rescale=bool(attn["RESCALE_ATTN_BIAS"]),
            ),
        ),
        clip_resolution=float(san["CLIP_RESOLUTION"]) if san["ASYMETRIC_INPUT"] else 1.0,
        size_divisibility=int(san["SIZE_DIVISIBILITY"]),
        rec_downsample=san["REC_DOWNSAMPLE_METHOD"],
    )


def _clip_config(san: dict[str, Any], model_cfg: dict[str, Any] | None) -> ClipConfig:
    import open_clip  # here: its import takes seconds, which a job that stops before it needs a config skips

    name = san["CLIP_MODEL_NAME"].replace("/", "-")
    pretrained = san["CLIP_PRETRAINED_NAME"]
    # open_clip builds OpenAI weights with QuickGELU; its "-quickgelu" configs say so explicitly.
    if model_cfg is None and pretrained == "openai" and open_clip.get_model_config(f"{name}-quickgelu"):
        name = f"{name}-quickgelu"
    return ClipConfig(
        model_name=name,
        model_cfg=model_cfg,
        pretrained=pretrained,
        feature_last_layer=int(san["FEATURE_LAST_LAYER_IDX"]),
        template_set=san["CLIP_TEMPLATE_SET"],
    )
