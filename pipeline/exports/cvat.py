"""``cvat``: CVAT's "Segmentation mask 1.1" format (Pascal VOC's segmentation layout) for semantic masks, one
zip: ``labelmap.txt`` (``name:r,g,b::`` per label, ``background`` first), ``ImageSets/Segmentation/default.txt``
(the image names) and ``SegmentationClass/<name>.png`` (RGB, each pixel its label's colour).

Unlabeled pixels are ``background`` (0, 0, 0), the format's own convention; class i has colour i + 1 of the
Pascal VOC palette, which has a different colour for every index below 2**24, so the export is lossless.
Image names are the images' paths relative to their common folder, without suffix, as CVAT matches them
against a task's images.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from san.atomic import write_atomic
from san.errors import UserError

from ..sources import LabelSource
from .files import mask_file_names

__all__ = ["BACKGROUND", "CvatError", "palette", "write_cvat"]

BACKGROUND = "background"


class CvatError(UserError):
    """The labels cannot be written in CVAT's format; the message says why."""


def palette(count: int) -> np.ndarray:
    """The first ``count`` colours of the Pascal VOC palette, ``[count, 3]`` uint8 (index 0 is black).

    Written out (a few lines) rather than taken from Datumaro, which CVAT uses, to avoid its dependencies;
    the bits of the index are spread over the channels' bits from the top, 3 at a time, as VOC's code does."""
    index = np.arange(count, dtype=np.int64)
    colours = np.zeros((count, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * shift + channel)) & 1) << (7 - shift)
    return colours.astype(np.uint8)


def write_cvat(source: LabelSource, target: Path) -> dict[str, int]:
    """Write the zip ``target`` (whole or not at all). Returns ``{"images"}``.

    Raises:
        CvatError: a vocabulary class is named ``background`` (the format's name for unlabeled pixels).
    """
    names = source.vocabulary.names
    if any(name.casefold() == BACKGROUND for name in names):
        raise CvatError(
            f"the vocabulary of {source.description} has a class named {BACKGROUND!r}, which CVAT's format "
            "reserves for unlabeled pixels; rename the class in the vocabulary and label again, or choose another "
            "format"
        )
    colours = palette(len(names) + 1)
    labels = zip([BACKGROUND, *names], colours, strict=True)
    labelmap = ["# label:color_rgb:parts:actions"] + [f"{name}:{','.join(map(str, c))}::" for name, c in labels]
    items = list(source.images())
    file_names = mask_file_names([(item.image_path, item.image_id) for item in items], suffix="")

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("labelmap.txt", "\n".join(labelmap) + "\n")
            listing = "".join(f"{file_names[item.image_path]}\n" for item in items)
            archive.writestr("ImageSets/Segmentation/default.txt", listing)
            for item in items:
                rgb = colours[item.label_map() + 1]  # -1 (unlabeled) -> background
                buffer = io.BytesIO()
                Image.fromarray(rgb).save(buffer, format="PNG")
                archive.writestr(f"SegmentationClass/{file_names[item.image_path]}.png", buffer.getvalue())

    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, write)
    return {"images": len(items)}
