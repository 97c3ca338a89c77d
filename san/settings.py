"""What decides a label map besides the model and the vocabulary: :class:`PredictionSettings`, one frozen object
built once (by the labeling job from its options, or by hand) that travels whole into the run's identity, the
model stage and :class:`~san.predictor.Predictor`; and :class:`TestTimeAugmentation`, its passes.

Plain Python (no torch), so that a process that only carries the settings (the driver, a null-model worker)
never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import OptionError
from .transforms import SAN_EVAL_RESIZE, ResizeShortestEdge

__all__ = [
    "DEFAULT_TTA_SIZES",
    "DTYPE_NAMES",
    "TTA_MAX_SIZE",
    "PredictionSettings",
    "TestTimeAugmentation",
]

#: The compute dtypes by name (``san.precision.DTYPES`` maps them to torch dtypes).
DTYPE_NAMES = ("bf16", "fp16", "fp32")
#: The official ``TEST.AUG.MIN_SIZES`` and ``TEST.AUG.MAX_SIZE`` (configs/Base-coco-stuff-164K-171.yaml).
DEFAULT_TTA_SIZES = (320, 480, 640, 800, 960, 1120)
TTA_MAX_SIZE = 4480


@dataclass(frozen=True)
class TestTimeAugmentation:
    """The passes of test-time augmentation as SAN's official evaluation configures them (``TEST.AUG``): each
    short side in ``min_sizes`` (long side at most ``max_size``), each also flipped horizontally when ``flip``.
    :mod:`san.tta` runs them."""

    min_sizes: tuple[int, ...] = DEFAULT_TTA_SIZES
    max_size: int = TTA_MAX_SIZE
    flip: bool = True

    def __post_init__(self) -> None:
        if not self.min_sizes or min(self.min_sizes) < 1 or self.max_size < max(self.min_sizes):
            raise ValueError(f"TTA sizes {self.min_sizes} must be at least 1 and at most max_size {self.max_size}")

    @property
    def passes(self) -> list[tuple[ResizeShortestEdge, bool]]:
        """``(resize, flipped)`` per pass, in the official order: each size, then the same size flipped."""
        flips = (False, True) if self.flip else (False,)
        return [(ResizeShortestEdge(size, self.max_size), flip) for size in self.min_sizes for flip in flips]


@dataclass(frozen=True)
class PredictionSettings:
    """Everything besides the model and the vocabulary's prompts that decides a label map.

    - ``resize``: the model input size rule (SAN's evaluation: short side 640, long side at most 2560).
    - ``min_score``: a pixel whose best class scores lower is unlabeled; ``class_min_scores``: per class, its
      own minimum (``None`` for a class: ``min_score``), or ``None`` for every class.
    - ``other``: distractor names that compete with the classes and leave the pixels they win unlabeled (a name
      equal to a prompt, ignoring case, is not added: :func:`san.other_names.added_names`).
    - ``tta``: test-time augmentation (``None``: one pass).
    - ``dtype``: ``fp32``, ``bf16`` (GPU autocast, or a bf16 image trunk on CPU) or ``fp16`` (GPU).
    - ``batch_size``: images per model call (results do not depend on it: only images of one padded size run
      together).
    - ``templates``: the prompt template set (``None``: the model's own).

    The unlabeled value is not a setting: it follows from the number of classes
    (:func:`san.image_labels.label_encoding`), so that it can never be a class.

    Raises:
        OptionError: a value that cannot work, naming the setting.
    """

    resize: ResizeShortestEdge = SAN_EVAL_RESIZE
    min_score: float = 0.0
    class_min_scores: tuple[float | None, ...] | None = None
    other: tuple[str, ...] = ()
    tta: TestTimeAugmentation | None = None
    dtype: str = "fp32"
    batch_size: int = 8
    templates: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise OptionError(f"unknown `dtype` {self.dtype!r}; choose from {list(DTYPE_NAMES)}")
        if self.batch_size < 1:
            raise OptionError(f"`batch_size` must be at least 1, got {self.batch_size}")
        scores = [self.min_score, *(s for s in self.class_min_scores or () if s is not None)]
        if not all(math.isfinite(s) for s in scores):
            raise OptionError(f"`min_score` must be a finite number, got {scores}")
        # Lists in, tuples kept: the object stays hashable and its identity stable.
        if self.class_min_scores is not None:
            object.__setattr__(self, "class_min_scores", tuple(self.class_min_scores))
        object.__setattr__(self, "other", tuple(self.other))

    def min_scores(self, num_classes: int) -> list[float]:
        """Each class's minimum best score (its own, else ``min_score``).

        Raises:
            ValueError: ``class_min_scores`` is given for another number of classes.
        """
        own: Sequence[float | None] = self.class_min_scores or [None] * num_classes
        if len(own) != num_classes:
            raise ValueError(f"{len(own)} minimum scores for {num_classes} classes")
        return [self.min_score if score is None else float(score) for score in own]

    def identity(self) -> dict[str, Any]:
        """The settings that decide a label map as JSON values (a run's identity: a resumed run must share
        them). ``dtype`` and ``batch_size`` are left out: a run may resume with another."""
        return {
            "templates": self.templates,
            "short_side": self.resize.short_side,
            "max_size": self.resize.max_size,
            "min_score": self.min_score,
            "class_min_scores": list(self.class_min_scores) if self.class_min_scores is not None else None,
            "tta": list(self.tta.min_sizes) if self.tta is not None else None,
        }
