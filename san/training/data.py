"""Semantic-segmentation training data: (image, label map) pairs and the training sample stream.

:class:`LabeledImages` are the pairs training reads: :class:`SegmentationFolder` reads a ``DATASET/`` of
``classes.txt``, ``images/`` and ``labels/``, :class:`LabelMapList` holds label maps that readers of other
sources made (``pipeline.training_data``: a labeling run, a reviewed FiftyOne dataset);
:class:`TrainSamples` and :class:`StepSampler` make the endless stream whose data at a step depend only on
``(seed, step)``, so that a resumed run continues exactly. The folder layout and the stream: ``docs/training.md``.
"""

from __future__ import annotations

import abc
import functools
import io
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DataError, OptionError
from ..text_files import read_class_names
from .augment import TrainAugmentation

__all__ = [
    "IMAGE_SUFFIXES",
    "DataOpener",
    "LabelMapList",
    "LabeledImages",
    "SegmentationFolder",
    "StepSampler",
    "TrainSamples",
    "collate",
    "open_folder",
    "read_classes",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")


def read_classes(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a class-name file (:mod:`san.text_files`): line i (1-based) names class i - 1, so
    that no line may be blank or a ``#`` line (trailing ones excepted)."""
    try:
        names = read_class_names(path, DataError)
    except OSError as error:
        raise DataError(f"{path}: cannot read the class names: {error.strerror or error}") from error
    blank = [str(value + 1) for value, name in enumerate(names) if name is None]  # editor line numbers, 1-based
    if blank:
        raise DataError(
            f"{path}: blank line(s) {', '.join(blank)}; line i names class i - 1, so none may be blank or a '#' line"
        )
    return names  # type: ignore[return-value]  # no None left


def _files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Relative path without suffix -> file, for the non-hidden files under ``folder`` with a suffix."""
    found: dict[str, Path] = {}
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder)
        if file.suffix.lower() in suffixes and not any(p.startswith(".") for p in rel.parts) and file.is_file():
            key = rel.with_suffix("").as_posix()
            if key in found:
                raise DataError(f"{folder}: two files for {key!r}: {found[key].name} and {file.name}")
            found[key] = file
    return found


class LabeledImages(abc.ABC):
    """(image, label map) pairs with class names: what training and evaluation read.

    Subclasses say where the pairs come from (:meth:`image_path`, :meth:`_read_label_values`, :attr:`source`);
    this class checks the labels' values and sizes. ``dataset[i]`` is ``(image [H, W, 3] uint8 RGB,
    label [H, W] int32)``, a label pixel being a class index (``classes[v]``) or ``ignore_index``.
    """

    classes: list[str]
    ignore_index: int
    source: str  # what the pairs come from, for messages (a folder, a labeling run, a dataset)

    def _set_classes(self, classes: Sequence[str], ignore_index: int) -> None:
        self.classes = list(classes)
        self.ignore_index = int(ignore_index)
        if 0 <= self.ignore_index < len(self.classes):
            raise DataError(
                f"{self.source}: ignore_index {ignore_index} is a class index ({len(self.classes)} classes); "
                f"training takes at most {self.ignore_index} classes"
            )

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of samples."""

    @abc.abstractmethod
    def image_path(self, index: int) -> Path:
        """The image file of sample ``index``."""

    @abc.abstractmethod
    def label_name(self, index: int) -> str:
        """What names label ``index`` in messages (its file, or its image's path)."""

    @abc.abstractmethod
    def _read_label_values(self, index: int) -> np.ndarray:
        """Label ``index``'s values as stored, ``[H, W]`` integers (checked by :meth:`read_label`)."""

    def read_image(self, index: int) -> np.ndarray:
        """Image ``index`` as RGB uint8 ``[H, W, 3]`` (EXIF orientation applied, as detectron2 reads it)."""
        with Image.open(self.image_path(index)) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))

    def read_label(self, index: int) -> np.ndarray:
        """Label map ``index`` as int32 ``[H, W]``; raises :class:`DataError` on values that are no class."""
        label = self._read_label_values(index).astype(np.int32)
        bad = (label >= len(self.classes)) & (label != self.ignore_index) | (label < 0)
        if bad.any():
            raise DataError(
                f"label {self.label_name(index)} has values {np.unique(label[bad])[:10].tolist()} that are neither "
                f"a class (0..{len(self.classes) - 1}) nor ignore_index {self.ignore_index}"
            )
        return label

    def _check_size(self, index: int, image_size: tuple[int, ...], label_size: tuple[int, ...]) -> None:
        """Raise :class:`DataError` unless image ``index`` and its label have the same ``(H, W)``."""
        if tuple(image_size) != tuple(label_size):
            raise DataError(f"{self.image_path(index)} is {tuple(image_size)} but its label is {tuple(label_size)}")

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.read_image(index), self.read_label(index)
        self._check_size(index, image.shape[:2], label.shape)
        return image, label

    def check(self, rank: int = 0, world_size: int = 1, shown: int = 5) -> None:
        """Check every sample once, before training: its image file exists, its label is read
        (:meth:`read_label`'s rules) and compared with its image's size, read from the image's header.
        Raises :class:`DataError` naming the first ``shown`` problems (with file names) and their count.
        Worker ``rank`` of ``world_size`` checks samples ``rank::world_size``."""
        indices = range(rank, len(self), world_size)
        problems = [problem for problem in map(self._sample_problem, indices) if problem]
        if problems:
            raise DataError(
                f"{len(problems)} of {len(indices)} samples of {self.source} are unusable"
                f"{f' (the first {shown})' if len(problems) > shown else ''}:\n  " + "\n  ".join(problems[:shown])
            )

    def _sample_problem(self, index: int) -> str | None:
        """Why sample ``index`` cannot be trained on (the message of :meth:`__getitem__`'s error), or None."""
        image = self.image_path(index)
        if not image.is_file():
            return f"image file {str(image)!r} not found"
        try:
            label = self.read_label(index)
            self._check_size(index, _image_size(image), label.shape)
        except (DataError, ValueError, OSError) as error:  # ValueError, OSError: PIL on unreadable or truncated files
            return str(error)
        return None


class SegmentationFolder(LabeledImages):
    """(image, label) pairs from an images folder and a labels folder, paired by relative path and stem.

    Args:
        images: the images folder (searched recursively).
        labels: the label maps folder.
        classes: the class names (label value i = ``classes[i]``).
        ignore_index: label value of ignored pixels (default 255).
        strict: if True (default) every image needs a label and vice versa; if False, unpaired files are
            skipped.

    :meth:`from_folder` reads the layout of ``docs/training.md``.
    """

    def __init__(
        self,
        images: str | os.PathLike[str],
        labels: str | os.PathLike[str],
        classes: Sequence[str],
        ignore_index: int = 255,
        strict: bool = True,
    ):
        self.images_dir, self.labels_dir = Path(images), Path(labels)
        self.source = str(self.labels_dir)
        for folder in (self.images_dir, self.labels_dir):
            if not folder.is_dir():
                raise DataError(f"dataset folder {str(folder)!r} does not exist")
        self._set_classes(classes, ignore_index)
        images_by_key = _files(self.images_dir, IMAGE_SUFFIXES)
        labels_by_key = _files(self.labels_dir, LABEL_SUFFIXES)
        keys = sorted(images_by_key.keys() & labels_by_key.keys())
        if strict:
            missing = sorted(images_by_key.keys() - labels_by_key.keys())
            orphans = sorted(labels_by_key.keys() - images_by_key.keys())
            if missing or orphans:
                raise DataError(
                    f"{self.images_dir} / {self.labels_dir}: {len(missing)} images without a label "
                    f"(e.g. {missing[:3]}), {len(orphans)} labels without an image (e.g. {orphans[:3]})"
                )
        if not keys:
            raise DataError(f"no (image, label) pairs in {self.images_dir} and {self.labels_dir}")
        self.pairs = [(images_by_key[k], labels_by_key[k]) for k in keys]

    @classmethod
    def from_folder(cls, root: str | os.PathLike[str], **kwargs) -> SegmentationFolder:
        """The ``images/`` + ``labels/`` + ``classes.txt`` layout under ``root``."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"dataset folder {str(root)!r} does not exist")
        if not (root / "classes.txt").is_file():
            raise DataError(f"{root}/classes.txt not found (the dataset layout: see san.training.data)")
        return cls(root / "images", root / "labels", read_classes(root / "classes.txt"), **kwargs)

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, index: int) -> Path:
        return self.pairs[index][0]

    def label_name(self, index: int) -> str:
        return str(self.pairs[index][1])

    def _read_label_values(self, index: int) -> np.ndarray:
        """The label file's values; a multi-channel image is a :class:`DataError`."""
        path = self.pairs[index][1]
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I") and not img.mode.startswith("I;16"):
                raise DataError(f"label {path} is a {img.mode!r} image; expected 8/16-bit single-channel class indices")
            return np.asarray(img)


class LabelMapList(LabeledImages):
    """(image file, label map) pairs held in memory as PNG bytes, in a labeling run's encoding: class index per
    pixel, the PNG's largest value (255 in an 8-bit PNG, 65535 in a 16-bit one) = unlabeled, which becomes
    ``ignore_index``. Made by readers of other sources (a labeling run, a reviewed dataset: ``pipeline``).

    Args:
        images: the image files.
        labels: one label-map PNG (bytes) per image.
        classes: the class names (label value i = ``classes[i]``).
        source: what the pairs come from, for messages.
        ignore_index: label value of ignored pixels (default 255).
    """

    def __init__(
        self,
        images: Sequence[str | os.PathLike[str]],
        labels: Sequence[bytes],
        classes: Sequence[str],
        source: str,
        ignore_index: int = 255,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.source = source
        self._set_classes(classes, ignore_index)
        if not images:
            raise DataError(f"{source} holds no labeled images")
        self.images = [Path(image) for image in images]
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.images[index]

    def label_name(self, index: int) -> str:
        return f"of {self.images[index]} in {self.source}"

    def _read_label_values(self, index: int) -> np.ndarray:
        """The label map with unlabeled pixels set to ``ignore_index``, int32."""
        with Image.open(io.BytesIO(self.labels[index])) as img:
            if img.mode != "L" and not img.mode.startswith("I;16"):
                raise DataError(f"label {self.label_name(index)} is a {img.mode!r} PNG; expected 8 or 16-bit gray")
            unlabeled = 255 if img.mode == "L" else 65535
            label = np.asarray(img).astype(np.int32)
        label[label == unlabeled] = self.ignore_index
        return label


# Opens the training or validation data a `TrainConfig` names: ``(data, option, ignore_index)``, ``option`` being
# the field that names it ("data", "val_data"), for messages. Jobs give one that reads more kinds of sources.
DataOpener = Callable[[str, str, int], LabeledImages]


def open_folder(data: str, option: str, ignore_index: int) -> LabeledImages:
    """The dataset folder (:meth:`SegmentationFolder.from_folder`) that option ``option`` names: the default
    :data:`DataOpener`.

    Raises:
        OptionError: the folder does not exist.
    """
    if not Path(data).is_dir():
        raise OptionError(f"`{option}` folder {data!r} does not exist")
    return SegmentationFolder.from_folder(data, ignore_index=ignore_index)


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of the image :meth:`SegmentationFolder.read_image` reads, from the file's header (EXIF
    orientation applied) without decoding its pixels. A PNG's EXIF after its pixel data is not seen."""
    with Image.open(path) as img:
        width, height = img.size
        cheap = img.format != "PNG" or "exif" in img.info  # a PNG's getexif() decodes the image
        orientation = img.getexif().get(0x0112) if cheap else None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


class TrainSamples(torch.utils.data.Dataset):
    """Endless augmented stream over a dataset, indexed by global sample number (``docs/training.md``).

    ``samples[k]`` is ``(image [3, h, w] uint8 tensor, label [h, w] int64 tensor)``.
    """

    def __init__(self, dataset: LabeledImages, augmentation: TrainAugmentation | None, seed: int = 0):
        self.dataset = dataset
        self.augmentation = augmentation
        self.seed = int(seed)

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a few permutations per dataset object
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def __len__(self) -> int:
        return 2**62  # endless; the sampler decides which samples are read

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.dataset)
        image, label = self.dataset[int(self.permutation(k // n)[k % n])]
        if self.augmentation is not None:
            image, label = self.augmentation(image, label, np.random.default_rng([self.seed, 1, k]))
        image_t = torch.from_numpy(np.array(image.transpose(2, 0, 1)))  # a writable, contiguous copy
        return image_t, torch.from_numpy(np.asarray(label, dtype=np.int64).copy())


class StepSampler(torch.utils.data.Sampler[int]):
    """Global sample numbers of worker ``rank``: per step ``s >= start_step``, the ``batch_size``
    samples ``s*G + rank*batch_size + j`` with ``G = batch_size * world_size``."""

    def __init__(self, batch_size: int, start_step: int = 0, rank: int = 0, world_size: int = 1):
        self.batch_size, self.start_step, self.rank, self.world_size = batch_size, start_step, rank, world_size

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            base = step * self.batch_size * self.world_size + self.rank * self.batch_size
            yield from range(base, base + self.batch_size)
            step += 1


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(images: list of [3, h_i, w_i] uint8, labels [B, H, W] int64)``; labels padded bottom/right with
    255 to the largest size (the model pads images the same way)."""
    images = [image for image, _ in batch]
    h = max(label.shape[0] for _, label in batch)
    w = max(label.shape[1] for _, label in batch)
    labels = torch.full((len(batch), h, w), 255, dtype=torch.int64)
    for i, (_, label) in enumerate(batch):
        labels[i, : label.shape[0], : label.shape[1]] = label
    return images, labels
