"""``jobs/label.py``'s options (:class:`LabelOptions`, its parser generated from the fields) and the
:class:`~san.settings.PredictionSettings` they make."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from san.errors import OptionError
from san.modeling.prompts import TEMPLATE_SETS
from san.other_names import OTHER_CHOICES
from san.settings import DEFAULT_TTA_SIZES, DTYPE_NAMES, TTA_MAX_SIZE, PredictionSettings, TestTimeAugmentation
from san.transforms import ResizeShortestEdge

from ..output_finish import COCO_CHOICES
from ..region_shards import REGION_DTYPES
from ..vocabulary import Vocabulary
from .images import DEFAULT_MAX_PIXELS
from .model_stage import NULL_MODEL


def _workers(text: str) -> tuple[int, int]:
    """``--workers N`` or ``MIN-MAX`` as ``(min, max)``."""
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None


def _sizes(text: str) -> tuple[int, ...]:
    """``--tta-sizes 480,640,800`` as ``(480, 640, 800)``."""
    try:
        return tuple(int(size) for size in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected short sides separated by commas, got {text!r}") from None


#: The ``coco`` option of the jobs that write a run (label, relabel): its help and choices.
COCO_OPTION = {
    "help": "COCO annotations written at the end of the run: single (one coco.json), shards (one COCO file per "
    "predictions file, coco/part-*.json, each loadable on its own: for runs past a few hundred thousand images, "
    "whose single file pycocotools could not load), none. A resumed run may change it: the COCO files of the "
    "other choice are removed",
    "choices": list(COCO_CHOICES),
}


def check_coco(coco: str) -> None:
    """Raise :class:`OptionError` for a ``coco`` value that is none of :data:`COCO_CHOICES`."""
    if coco not in COCO_CHOICES:
        raise OptionError(f"`coco` must be one of {list(COCO_CHOICES)}, got {coco!r}")


@dataclass(kw_only=True)
class LabelOptions:
    """Everything ``jobs/label.py`` accepts: its parser is generated from these fields (``help`` metadata)."""

    vocab: str = field(
        metadata={
            "help": "UTF-8 file, one class per line; '#' comments; synonyms as 'name: syn, syn'; a class's own "
            "minimum score at the end of its line, 'name: syn @ 0.4' (else `min_score`); a name whose prompt is "
            "longer than CLIP's 77 tokens is refused (it would be cut)"
        }
    )
    input: str | None = field(
        default=None,
        metadata={
            "help": "a directory (recursive), a glob, a text file of paths, a Parquet file/folder with a path or "
            "image-bytes column, or WebDataset .tar shards; local or any pyarrow filesystem URI (s3://, gs://). "
            "Optional with --smoke-test (then a few generated images)"
        },
    )
    output: str = field(
        metadata={
            "help": "output directory (Parquet shards, coco.json, errors, manifest): new or empty, or an earlier "
            "run's to resume it; a run's folder is never listed as input, so it may lie inside the `input` folder "
            "but may not be or hold it"
        },
    )
    model: str = field(
        default="san_vit_b_16",
        metadata={
            "help": "a released preset (san_vit_b_16, san_vit_l_14; cached download from Hugging Face, or "
            "$SAN_WEIGHTS), this project's .safetensors checkpoint, an official .pth checkpoint with --config, "
            "random:<preset> (random weights, for benchmarks), or null (no model: a fixed label map, to measure "
            "the pipeline alone)"
        },
    )
    config: str | None = field(
        default=None,
        metadata={"help": "config of an official .pth checkpoint: a preset name or the official YAML/JSON"},
    )
    batch_size: int = field(
        default=4,
        metadata={"help": "images per model call in each worker (images are grouped by padded size to fill them)"},
    )
    workers: tuple[int, int] | None = field(
        default=None,
        metadata={
            "help": "predictor actor pool size, N or MIN-MAX (default: 1 to as many as the cluster fits)",
            "type": _workers,
        },
    )
    gpus_per_worker: float | None = field(
        default=None,
        metadata={"help": "GPUs per predictor actor, fractions allowed (default: 1 when the cluster has GPUs, else 0)"},
    )
    short_side: int = field(default=640, metadata={"help": "resize the short side to this"})
    max_size: int = field(default=2560, metadata={"help": "cap on the resized long side"})
    templates: str | None = field(
        default=None,
        metadata={"help": "prompt templates (default: the model's, vild)", "choices": sorted(TEMPLATE_SETS)},
    )
    dtype: str = field(
        default="fp32",
        metadata={
            "help": "fp32; bf16 (GPU autocast, or a bf16 model on CPUs with AMX/AVX512-BF16 units); fp16 (GPU)",
            "choices": list(DTYPE_NAMES),
        },
    )
    min_score: float = field(
        default=0.0,
        metadata={
            "help": "pixels whose best class score is below this become 255 (unlabeled) and join no segment "
            "(default: 0, label everything)"
        },
    )
    other: str | None = field(
        default=None,
        metadata={
            "help": "distractor names added to the vocabulary (as the official SAN demo does); pixels they win "
            "become 255 (unlabeled): coco-stuff (COCO-Stuff's 91 background names: sky-other, grass, wall-brick, "
            "...), coco-all (its 171 names, objects too), none (every pixel gets one of your classes; use it to "
            "reproduce the paper's numbers), or a UTF-8 file of names, one per line. A name equal to one of your "
            "classes or synonyms (ignoring case) is not added (default: coco-stuff; none with `smoke_test`, whose "
            "random model would leave every pixel to a distractor)"
        },
    )
    tta: bool = field(
        default=False,
        metadata={
            "help": "test-time augmentation as SAN's official evaluation: average the scores of the model input "
            "resized to each of `tta_sizes` and of each flipped horizontally (12 passes at the default sizes)"
        },
    )
    tta_sizes: tuple[int, ...] = field(
        default=DEFAULT_TTA_SIZES,
        metadata={
            "help": "short sides of the `tta` passes, e.g. 480,640,800 (long side at most "
            f"{TTA_MAX_SIZE}; default: {','.join(map(str, DEFAULT_TTA_SIZES))})",
            "type": _sizes,
        },
    )
    keep_regions: str | None = field(
        default=None,
        metadata={
            "help": "also keep each image's regions (SAN's vocabulary-free outputs: 100 masks at 1/16 of the model "
            "input and their 512 recognition values for ViT-B/16) in OUTPUT/regions/, so that jobs/relabel.py "
            "labels the images again with another vocabulary, `other` names, minimum scores or templates without "
            "the image model, and jobs/search.py finds the images that hold a text. fp16 (given without a value): "
            "about 0.5 MB per 640x480 image, label maps nearly equal to a fresh run's; fp32: twice that, label "
            "maps identical to a fresh run's. Part of the run: a resumed run keeps the value it started with. Not "
            "with `tta` (each scale is its own forward pass)",
            "choices": list(REGION_DTYPES),
            "const": "fp16",
        },
    )
    limit: int | None = field(default=None, metadata={"help": "label at most this many new images"})
    shard_size: int = field(
        default=256,
        metadata={
            "help": "rows per Parquet file; the workers write a file once this many images are done (or at the "
            "end), and progress and resume advance file by file"
        },
    )
    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={
            "help": "largest image accepted (width * height); a larger one becomes an error row before it is "
            "decoded (at most PIL's own limit)"
        },
    )
    coco: str = field(default="single", metadata=COCO_OPTION)
    bytes_column: str | None = field(
        default=None, metadata={"help": "Parquet column with the encoded image bytes (default: auto-detect)"}
    )
    smoke_test: bool = field(
        default=False,
        metadata={"help": "a tiny random model on CPU (labels are meaningless): see the whole flow in a minute"},
    )
    progress: bool = field(default=True, metadata={"help": "do not show the progress bar"})
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def __post_init__(self) -> None:
        """Raise :class:`OptionError` naming the option when a value cannot work (before anything starts)."""
        for name in ("batch_size", "shard_size", "short_side", "max_size", "max_pixels"):
            if getattr(self, name) < 1:
                raise OptionError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and not 1 <= self.workers[0] <= self.workers[1]:
            low, high = self.workers
            raise OptionError(f"`workers` must be N or MIN-MAX with 1 <= MIN <= MAX, got {low}-{high}")
        if self.max_size < self.short_side:
            raise OptionError(f"`max_size` ({self.max_size}) must not be smaller than `short_side` ({self.short_side})")
        if self.max_pixels > DEFAULT_MAX_PIXELS:
            raise OptionError(f"`max_pixels` must be at most {DEFAULT_MAX_PIXELS} (PIL's limit), got {self.max_pixels}")
        if self.limit is not None and self.limit < 0:
            raise OptionError(f"`limit` must be 0 or more, got {self.limit}")
        check_coco(self.coco)
        if self.dtype not in DTYPE_NAMES:
            raise OptionError(f"`dtype` must be one of {list(DTYPE_NAMES)}, got {self.dtype!r}")
        if self.input is None and not self.smoke_test:
            raise OptionError("`input` is required (a folder, glob, list file, Parquet or WebDataset shards)")
        if not self.tta_sizes or not all(1 <= size <= TTA_MAX_SIZE for size in self.tta_sizes):
            raise OptionError(f"`tta_sizes` must be short sides from 1 to {TTA_MAX_SIZE}, got {self.tta_sizes}")
        if len(set(self.tta_sizes)) != len(self.tta_sizes):
            raise OptionError(f"`tta_sizes` names a size twice: {self.tta_sizes}")
        if self.keep_regions is not None and self.tta:
            raise OptionError(
                "`keep_regions` cannot be used with `tta`: each test-time scale is its own forward pass with its own "
                "regions, so no one pass's regions reproduce the averaged labels; drop one of the two"
            )
        if self.keep_regions is not None and self.model == NULL_MODEL:
            raise OptionError("`keep_regions` needs a model: `model` null computes no regions")
        if self.other is None:
            self.other = "none" if self.smoke_test else "coco-stuff"
        if self.other not in OTHER_CHOICES and not Path(self.other).is_file():
            choices = ", ".join(OTHER_CHOICES)
            raise OptionError(f"`other` {self.other!r} is neither one of {choices} nor a file of names")

    def prediction_settings(self, vocabulary: Vocabulary, other: list[str]) -> PredictionSettings:
        """What decides this run's label maps: these options, the ``vocabulary``'s own minimum scores and the
        ``other`` names to add (resolved from `other` by the job)."""
        return PredictionSettings(
            resize=ResizeShortestEdge(self.short_side, self.max_size),
            min_score=self.min_score,
            class_min_scores=tuple(vocabulary.min_scores),
            other=tuple(other),
            tta=TestTimeAugmentation(tuple(self.tta_sizes)) if self.tta else None,
            dtype=self.dtype,
            batch_size=self.batch_size,
            templates=self.templates,
        )
