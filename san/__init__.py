"""SAN (Side Adapter Network, CVPR 2023) for open-vocabulary semantic segmentation.

Importable and usable without Ray or FiftyOne::

    import san
    model = san.load_official("san_vit_b_16.pth", "san_vit_b_16")
    scores = model.predict_scores([image_uint8_chw], ["cat", "grass", "sky"])

The names below load their modules on first use (PEP 562), so that light modules such as
``san.transforms`` or ``san.metrics`` can be imported without importing torch, open_clip and timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "convert_official_state_dict": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "load_official": "checkpoint",
    "resolve_official_weights": "checkpoint",
    "save_checkpoint": "checkpoint",
    "PRESETS": "config",
    "SANConfig": "config",
    "get_preset": "config",
    "CheckpointError": "errors",
    "WeightsUnavailableError": "errors",
    "SAN": "modeling.model",
    "build_san": "modeling.model",
}

__all__ = [
    "PRESETS",
    "SAN",
    "CheckpointError",
    "SANConfig",
    "WeightsUnavailableError",
    "build_san",
    "convert_official_state_dict",
    "get_preset",
    "load_checkpoint",
    "load_model",
    "load_official",
    "resolve_official_weights",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from .checkpoint import (
        convert_official_state_dict,
        load_checkpoint,
        load_model,
        load_official,
        resolve_official_weights,
        save_checkpoint,
    )
    from .config import PRESETS, SANConfig, get_preset
    from .errors import CheckpointError, WeightsUnavailableError
    from .modeling.model import SAN, build_san


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)  # san.checkpoint, san.modeling, san.training, ...
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise  # a missing dependency inside an existing submodule
        raise AttributeError(f"module 'san' has no attribute {name!r}") from None
