"""The configuration of a training run: :class:`TrainConfig`, read by :func:`san.training.loop.train`.

Its defaults are SAN's recipe (COCO-Stuff, 60k steps, global batch 32, 640 crops); it round-trips through
``to_dict``/``from_dict`` (saved as ``OUTPUT/config.json``, in ``last.pt`` and sent to Ray Train workers)
and builds the training augmentation. :data:`RUN_FIELDS` are the fields a resumed run must share with its
checkpoint (:func:`resume_differences`); :data:`FREE_FIELDS` the ones it may change.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import PRESETS
from ..errors import OptionError
from .augment import TrainAugmentation, official_short_edges

__all__ = ["FREE_FIELDS", "RUN_FIELDS", "TRAIN_DTYPES", "TrainConfig", "resume_differences", "with_absolute_paths"]

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
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # "fiftyone:NAME" names no file (one letter: a Windows drive)


TRAIN_DTYPES = ("auto", "fp32", "bf16", "fp16")


@dataclass(kw_only=True)
class TrainConfig:
    """Everything a training run needs; defaults are SAN's recipe (COCO-Stuff, 60k steps, batch 32).

    A field with ``help`` metadata is an option of ``jobs/train.py`` (its parser is generated from
    these fields; ```name``` in a help names another option).
    """

    data: str = field(
        metadata={
            "help": "training data: a folder of images/, labels/ (PNG, pixel = class index, 255 = ignore) and "
            "classes.txt (one class name per line); with jobs/train.py also a labeling run's output folder or "
            "fiftyone:DATASET, a dataset jobs/review.py made (its masks as edited); required unless `smoke_test`",
            "required": False,
        }
    )
    val_data: str | None = field(
        default=None,
        metadata={"help": "validation data of the same kinds as `data`, evaluated every `eval_every` steps"},
    )
    output: str = field(
        metadata={"help": "run folder: checkpoints/, metrics.csv, config.json; one that holds a run needs `resume`"}
    )
    init: str = field(
        default="clip",
        metadata={
            "help": "where the weights start: 'clip' (CLIP weights of the preset's pretrained tag or "
            "`clip_weights`; new side adapter), 'official' (the released SAN weights of `preset`, to fine-tune), "
            "'random' (no weights at all, for tests), or a checkpoint file (this project's .safetensors, or an "
            "official .pth with `preset` as its config)"
        },
    )
    clip_weights: str | None = field(
        default=None,
        metadata={"help": "CLIP weights file (open_clip or OpenAI state dict) for `init` clip"},
    )
    preset: str = field(
        default="san_vit_b_16",
        metadata={"help": "model architecture; a .safetensors `init` carries its own", "choices": sorted(PRESETS)},
    )
    steps: int = field(default=60_000, metadata={"help": "optimisation steps in the whole run"})
    batch_size: int = field(
        default=32, metadata={"help": "images per step, all workers together; must divide by `workers`"}
    )
    lr: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    crop_size: int = field(default=640, metadata={"help": "square training crop; short sides 0.5-1.5x it"})
    checkpoint_every: int = field(default=5000, metadata={"help": "steps between checkpoints"})
    eval_every: int = field(default=5000, metadata={"help": "steps between evaluations"})
    eval_short_side: int = field(
        default=640,
        metadata={"help": "resize validation images to this short side, as SAN's test mapper (0: original size)"},
    )
    eval_limit: int | None = field(default=None, metadata={"help": "evaluate on at most this many validation images"})
    log_every: int = field(default=20, metadata={"help": "steps between log lines"})
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue from OUTPUT/checkpoints/last.pt (weights, optimizer, schedule, step, RNG states); "
            "starts a new run when there is none. The options that define the run (data, model, `init`, recipe, "
            "`seed`) must be the checkpoint's; `stop_at`, the intervals, `device`, `dtype`, `val_data` and the "
            "evaluation and loader options may change"
        },
    )
    stop_at: int | None = field(
        default=None, metadata={"help": "stop with a checkpoint after this step (the schedule still spans `steps`)"}
    )
    device: str = field(default="auto", metadata={"help": "auto (GPU when there is one), cpu or cuda[:i]"})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 autocast on GPUs that support it, else fp16 with a gradient scaler; always fp32 on CPU",
            "choices": TRAIN_DTYPES,
        },
    )
    num_points: int = field(default=12544, metadata={"help": "points per mask for matching and mask losses"})
    single_category_max_area: float = field(
        default=1.0,
        metadata={"help": "redraw a crop (up to 10 times) while one class covers this share of it; 1 = off"},
    )
    color_aug: bool = field(default=True, metadata={"help": "no SSD colour jitter"})
    data_workers: int = field(default=4, metadata={"help": "data loading processes per worker"})
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads per worker (default: torch's choice)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of data order, augmentation and init"})
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "keep checkpoints/step_N.safetensors of every save"}
    )
    progress: bool = field(default=True, metadata={"help": "no progress bar"})
    # The recipe's other values (no options of the job).
    poly_power: float = 0.9
    clip_grad_norm: float = 0.01  # full-model L2 clipping; <= 0 disables
    short_edge_lengths: tuple[int, ...] | None = None  # None: 0.5..1.5 x crop_size (SAN: 320..960 for 640)
    max_size: int = 2560
    ignore_index: int = 255
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1

    def __post_init__(self) -> None:
        if not self.data:
            raise OptionError("`data` is required: the training data (see docs/training.md)")
        if self.short_edge_lengths is not None:
            self.short_edge_lengths = tuple(int(s) for s in self.short_edge_lengths)
        for name in ("steps", "batch_size", "crop_size", "checkpoint_every", "eval_every", "log_every", "num_points"):
            if int(getattr(self, name)) < 1:
                raise OptionError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("stop_at", "eval_limit"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise OptionError(f"`{name}` must be >= 1 (or unset), got {getattr(self, name)}")
        if self.dtype not in TRAIN_DTYPES:
            raise OptionError(f"`dtype` must be auto, fp32, bf16 or fp16, got {self.dtype!r}")

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
        return value if _SCHEME.match(value) else os.path.abspath(value)
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
