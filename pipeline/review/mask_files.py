"""Files of a review dataset next to the labeling run: each ``Segmentation`` mask as a PNG, referenced by
``mask_path`` (FiftyOne's recommendation for large datasets: the database then holds paths, not pixels), and
the images that the run's input embeds (Parquet image bytes, WebDataset members), which have no file of their
own for a sample's ``filepath``.

Layout: ``RUN/review-masks/<dataset slug>-<12 hex>/<field>/<2 hex>/<image_id>.png`` and
``.../media/<2 hex>/<image_id><suffix>`` (the image's own bytes; the suffix from its format). One folder per
dataset build, so a reload with ``--overwrite`` never writes over the masks of the dataset it replaces
until that dataset is gone; 256 subfolders keep folders small for a million images. The PNG is
written as ``Segmentation.export_mask`` writes it (8- or 16-bit grayscale, the mask values unchanged), and
``Segmentation.get_mask()`` reads it back.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou
import fiftyone.utils.image as foui
import numpy as np

__all__ = ["MASKS_FOLDER", "MaskFolder", "remove_mask_folder"]

MASKS_FOLDER = "review-masks"
"""The folder in a labeling run's output folder that holds its review datasets' mask files."""

INFO_KEY = "mask_folder"
"""``dataset.info`` key of the folder of a dataset's mask files."""


class MaskFolder:
    """The new mask folder of one dataset build (created on the first mask written)."""

    def __init__(self, run_root: Path, dataset_name: str):
        self.root = run_root.resolve() / MASKS_FOLDER / f"{fou.to_slug(dataset_name)[:80]}-{uuid.uuid4().hex[:12]}"

    def segmentation(self, field: str, image_id: int, mask: np.ndarray) -> fo.Segmentation:
        """Write ``mask`` (``[H, W]`` uint8 or uint16 mask values) to its file; a ``Segmentation`` with its
        ``mask_path`` and no in-database ``mask``."""
        path = self.root / field / f"{image_id % 256:02x}" / f"{image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # FiftyOne's mask writer (what Segmentation.export_mask calls). Not export_mask itself: clearing the
        # in-memory mask compares the whole array in mongoengine's field setter (27 ms at 640x480).
        foui.write(mask, str(path))
        return fo.Segmentation(mask_path=str(path))

    def media_file(self, image_id: int, data: bytes, suffix: str) -> str:
        """Write an embedded image's ``data`` to its file (``suffix``: its format's extension, which FiftyOne
        reads the media type from); the file's path, a sample's ``filepath``."""
        path = self.root / "media" / f"{image_id % 256:02x}" / f"{image_id}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def missing_file(self, image_id: int) -> str:
        """The path a sample whose image cannot be shown gets: in this folder, never written (``.jpg``: FiftyOne
        reads the media type from the extension)."""
        return str(self.root / "media" / "missing" / f"{image_id}.jpg")

    def remove(self) -> None:
        """Delete the folder and every file in it (a build that failed), and ``review-masks`` itself when
        that leaves it empty."""
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):  # other datasets' folders are still in it
            self.root.parent.rmdir()


def remove_mask_folder(info: dict[str, Any] | None) -> None:
    """Delete the mask files of a deleted review dataset whose ``dataset.info`` was ``info``: the folder it
    names, and only when that folder lies in its labeling run's ``review-masks`` folder (never anything else)."""
    info = info or {}
    folder, run = info.get(INFO_KEY), info.get("labeling_run")
    if not folder or not run:
        return
    folder_path = Path(folder).resolve()
    if folder_path.parent == (Path(run) / MASKS_FOLDER).resolve():
        shutil.rmtree(folder_path, ignore_errors=True)
