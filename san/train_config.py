"""The configuration of a training run: :class:`TrainConfig`, read by :func:`san.train.train`.

Its defaults are SAN's recipe (COCO-Stuff, 60k steps, global batch 32, 640 crops); it round-trips through
``to_dict``/``from_dict`` (saved as ``OUTPUT/config.json``, in ``last.pt`` and sent to Ray Train workers)
and builds the training augmentation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .augment import TrainAugmentation

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are SAN's recipe (COCO-Stuff, 60k steps, batch 32)."""

    data: str  # training folder (images/ + labels/ + classes.txt, see san.data)
    output: str  # run folder: checkpoints/, metrics.csv, config.json
    val_data: str | None = None  # validation folder (same layout); None: no evaluation
    preset: str = "san_vit_b_16"
    init: str = "clip"  # clip | official | random | path of a .safetensors / official .pth checkpoint
    clip_weights: str | None = None  # CLIP weights file replacing the preset's pretrained tag (init=clip)
    steps: int = 60_000
    batch_size: int = 32  # global: split between workers
    lr: float = 1e-4
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    clip_grad_norm: float = 0.01  # full-model L2 clipping; <= 0 disables
    crop_size: int = 640
    short_edge_lengths: tuple[int, ...] | None = None  # None: 0.5..1.5 x crop_size (SAN: 320..960 for 640)
    max_size: int = 2560
    single_category_max_area: float = 1.0
    color_aug: bool = True
    ignore_index: int = 255
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    dtype: str = "auto"  # auto (bf16/fp16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda[:i] (ignored on Ray workers)
    checkpoint_every: int = 5000
    eval_every: int = 5000
    eval_short_side: int = 640  # 0: evaluate at the original size
    eval_limit: int | None = None  # evaluate on at most this many validation images
    log_every: int = 20
    seed: int = 0
    data_workers: int = 4  # DataLoader processes per training worker
    threads: int | None = None  # torch CPU threads (None: torch's default)
    resume: bool = False  # continue from OUTPUT/checkpoints/last.pt when it exists
    stop_at: int | None = None  # stop (with a checkpoint) after this step; the schedule still spans `steps`
    keep_checkpoints: bool = False  # also keep checkpoints/step_XXXXXXX.safetensors of every save
    progress: bool = True

    def __post_init__(self) -> None:
        if self.short_edge_lengths is not None:
            self.short_edge_lengths = tuple(int(s) for s in self.short_edge_lengths)
        for name in ("steps", "batch_size", "crop_size", "checkpoint_every", "eval_every", "log_every", "num_points"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)

    def augmentation(self) -> TrainAugmentation:
        edges = self.short_edge_lengths or tuple(int(x * 0.1 * self.crop_size) for x in range(5, 16))
        return TrainAugmentation(
            short_edge_lengths=edges,
            max_size=self.max_size,
            crop_size=(self.crop_size, self.crop_size),
            single_category_max_area=self.single_category_max_area,
            color_aug=self.color_aug,
            ignore=self.ignore_index,
        )
