"""The configuration of a training run: :class:`TrainConfig`, read by :func:`san.training.loop.train`.

Its defaults are SAN's recipe (COCO-Stuff, 60k steps, global batch 32, 640 crops); it round-trips through
``to_dict``/``from_dict`` (saved as ``OUTPUT/config.json``, in ``last.pt`` and sent to Ray Train workers)
and builds the training augmentation. :data:`RUN_FIELDS` are the fields a resumed run must share with its
checkpoint (:func:`resume_differences`); :data:`FREE_FIELDS` the ones it may change.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .augment import TrainAugmentation, official_short_edges

__all__ = ["FREE_FIELDS", "RUN_FIELDS", "TrainConfig", "resume_differences", "with_absolute_paths"]

# The fields that define what a run computes. A resumed run continues the checkpoint's weights, optimizer
# moments, learning-rate schedule (its length included) and data order, so it must keep these values:
# with others it would silently train another recipe than its config.json says.
RUN_FIELDS = (
    "data", "preset", "init", "clip_weights", "seed",  # the data, the model and its start, the data order
    "steps", "batch_size", "lr", "weight_decay", "poly_power", "clip_grad_norm",  # optimisation and schedule
    "crop_size", "short_edge_lengths", "max_size", "single_category_max_area", "color_aug",  # augmentation
    "ignore_index", "class_weight", "mask_weight", "dice_weight", "no_object_weight", "num_points",  # losses
)  # fmt: skip
# The fields a resumed run may change: where the run folder is, how and where it runs (device, precision,
# which follows the device anyway, loader processes, threads), when it logs, evaluates, checkpoints and
# stops, and the validation data and options. None of them changes the trained weights of a step.
FREE_FIELDS = (
    "output", "resume", "stop_at", "progress", "device", "dtype", "data_workers", "threads", "log_every",
    "checkpoint_every", "keep_checkpoints", "eval_every", "val_data", "eval_short_side", "eval_limit",
)  # fmt: skip
_PATH_FIELDS = ("output", "data", "val_data", "init", "clip_weights")  # files and folders
_INIT_NAMES = ("clip", "official", "random")  # the values of ``init`` that are no path


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are SAN's recipe (COCO-Stuff, 60k steps, batch 32)."""

    data: str  # training folder (images/ + labels/ + classes.txt, see san.training.data)
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
        for name in ("stop_at", "eval_limit"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1 (or unset), got {getattr(self, name)}")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)

    def augmentation(self) -> TrainAugmentation:
        edges = self.short_edge_lengths or official_short_edges(self.crop_size)
        return TrainAugmentation(
            short_edge_lengths=edges,
            max_size=self.max_size,
            crop_size=(self.crop_size, self.crop_size),
            single_category_max_area=self.single_category_max_area,
            color_aug=self.color_aug,
            ignore=self.ignore_index,
        )


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its files and folders as absolute paths (for workers whose working folder differs)."""
    return dataclasses.replace(cfg, **{name: _absolute(name, getattr(cfg, name)) for name in _PATH_FIELDS})


def _absolute(name: str, value: Any) -> Any:
    """``value`` of field ``name`` as an absolute path when it is one (relative to the working folder)."""
    if name in _PATH_FIELDS and isinstance(value, str) and not (name == "init" and value in _INIT_NAMES):
        return os.path.abspath(value)
    return value


def resume_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """``"name: checkpoint X, command Y"`` for each of :data:`RUN_FIELDS` where ``cfg`` differs from the
    config ``saved`` with a checkpoint (a field the saved config lacks counts as its default). Paths are
    compared as absolute paths (a relative one is taken from the working folder: "data/" is "./data")."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    lines = []
    for name in RUN_FIELDS:
        old, new = _comparable(name, saved.get(name, defaults[name])), _comparable(name, getattr(cfg, name))
        if old != new:
            lines.append(f"{name}: checkpoint {old!r}, command {new!r}")
    return lines


def _comparable(name: str, value: Any) -> Any:
    """``value`` of field ``name`` in a form to compare: paths absolute, sequences as tuples."""
    return tuple(value) if isinstance(value, list) else _absolute(name, value)
