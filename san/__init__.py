"""SAN (Side Adapter Network, CVPR 2023) for open-vocabulary semantic segmentation.

Importable and usable without Ray or FiftyOne::

    import san
    model = san.load_official("san_vit_b_16.pth", "san_vit_b_16")
    scores = model.predict_scores([image_uint8_chw], ["cat", "grass", "sky"])
"""

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
from .model import SAN, build_san

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
