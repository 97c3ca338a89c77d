"""Ground truth from a folder of label images (``--gt png:DIR`` or a directory): :class:`PngFolderGroundTruth`.

Label images (``.png``, ``.tif``, ``.tiff``; 8-bit grayscale or palette, or 16-bit) are searched
recursively (hidden files and folders skipped). Pixel value ``v`` is the class on line ``v`` (0-based)
of the class-names file (see :func:`pipeline.ground_truth.classes.read_class_names`); without one, the
vocabulary's order (value ``i`` = vocabulary class ``i``). Ignored: ``ignore_index`` (255 unless the class
list names a class at value 255, then 65535, as detectron2 does for ADE-847 / Pascal Context-459), 65535
(the predictions' 16-bit "unlabeled"), and gap lines. Any other value with no class is an error naming
the file. :func:`read_label_image` also serves other readers of single-channel label files.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from san.image_labels import UNLABELED_U16

from .base import GroundTruth, GroundTruthError, LabelValues

__all__ = ["LABEL_SUFFIXES", "PngFolderGroundTruth", "read_label_image"]

LABEL_SUFFIXES = (".png", ".tif", ".tiff")


def read_label_image(path: Path, expected: str) -> np.ndarray:
    """The pixels of a single-channel label image, ``[H, W]`` of the integer type PIL reads it as (``uint8``
    for 8-bit and palette images, ``uint16`` or ``int32`` for 16-bit ones, ``int32`` for mode ``I``).

    Raises :class:`GroundTruthError` naming the file when it cannot be read, or when it has colour
    channels (``expected`` says what the reader wants instead).
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            raw = np.asarray(img)
    except Exception as exc:  # PIL raises many types on bad files
        raise GroundTruthError(f"cannot read ground truth {path}: {type(exc).__name__}: {exc}") from None
    if mode not in ("L", "P", "I") and not mode.startswith("I;16"):
        raise GroundTruthError(f"ground truth {path} is a {mode!r} image; {expected}")
    return raw


class PngFolderGroundTruth(GroundTruth):
    """Label images in a folder (recursive), one per image, matched by file stem (module docstring and
    :mod:`pipeline.ground_truth.base`).

    Args:
        folder: the directory.
        names_by_value: class name per pixel value, None for a gap (see
            :func:`pipeline.ground_truth.classes.read_class_names`).
        ignore_index: the raw value of ignored pixels (default 255); when ``names_by_value`` names a class
            at that value it is replaced by 65535 (see :attr:`raw_ignore`).
    """

    def __init__(self, folder: str | os.PathLike[str], names_by_value: Sequence[str | None], ignore_index: int = 255):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise GroundTruthError(f"`gt` folder {str(self.folder)!r} does not exist or is not a directory")
        if len(names_by_value) > UNLABELED_U16:
            raise GroundTruthError(f"{len(names_by_value)} class values do not fit 16-bit label images")
        ignore = int(ignore_index)
        if 0 <= ignore < len(names_by_value) and names_by_value[ignore] is not None:
            if ignore != 255:
                raise GroundTruthError(
                    f"`ignore_index` {ignore} is the value of class {names_by_value[ignore]!r}; give a value that "
                    "names no class (a blank or '#' line in `gt_classes` leaves a value free)"
                )
            ignore = UNLABELED_U16  # 255 is a class (large vocabularies): detectron2 uses 65535 then
        self.raw_ignore = sorted({ignore, UNLABELED_U16})
        self._files: list[str] = []
        for file in self.folder.rglob("*"):
            rel = file.relative_to(self.folder).as_posix()
            hidden = any(part.startswith(".") for part in rel.split("/"))
            if file.suffix.lower() in LABEL_SUFFIXES and not hidden and file.is_file():
                self._files.append(rel)
        self._files.sort()
        if not self._files:
            raise GroundTruthError(f"no label images ({', '.join(LABEL_SUFFIXES)}) found under {self.folder}")
        classes = [n for n in names_by_value if n is not None]
        self.class_names = tuple(classes)
        self.description = f"PNG folder {self.folder} ({len(self._files)} files, {len(classes)} classes)"
        self._num_values = len(names_by_value)
        class_values = [value for value, name in enumerate(names_by_value) if name is not None]
        gap_values = [value for value, name in enumerate(names_by_value) if name is None]
        self._values = LabelValues(class_values, [*gap_values, *self.raw_ignore])

    def keys(self) -> list[Hashable]:
        return list(self._files)

    def path_of(self, key: Hashable) -> str:
        return str(key)

    def read(self, key: Hashable) -> np.ndarray:
        path = self.folder / str(key)
        raw = read_label_image(
            path,
            "label images must be 8-bit grayscale or palette, or 16-bit grayscale, holding one class value per pixel",
        )
        hint = f"the class list covers values 0..{self._num_values - 1}; check --gt-classes"
        return self._values.classes(raw, f"ground truth {path}", hint)
