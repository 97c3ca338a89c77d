"""Where a parallel export reads each image (:class:`ImageLocations`): the run's input listed again as its job
listed it (:mod:`pipeline.run_images`' rules), its containers (folders, Parquet files, WebDataset shards, list
files) one per Ray task (:func:`scan_container`). An image the input embeds is written by that task into a staging
folder of the export (``<staging>/<container>/<image_id>``), so that its bytes never pass through the driver and the
task that exports it reads them there; any other image is read from its file, as the labeling job read it.

The locations take 12 bytes per image (its id and where it is, in NumPy), combined by a task and kept in the object
store (:mod:`pipeline.exports.parallel`): the driver holds none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..label.containers import expand_container
from ..label.inputs import Container, InputItem
from ..label.inputs import image_id as path_image_id
from ..run_images import RunImage, RunImagesError

__all__ = ["FILE", "ImageLocations", "combine_locations", "listed_files", "scan_container"]

FILE = -1  # the owner of an image read from its file


@dataclass(frozen=True)
class ImageLocations:
    """Each exported image's id (sorted) and where its bytes are: :data:`FILE`, or the container whose staged copy
    holds them."""

    ids: np.ndarray
    owners: np.ndarray
    staging: str

    @property
    def embedded(self) -> bool:
        """Whether any image is embedded in the input."""
        return bool((self.owners != FILE).any())

    def image(self, image_path: str, image_id: int) -> RunImage:
        """The image as the run read it (``RunImagesError`` when the input no longer lists it)."""
        index = int(np.searchsorted(self.ids, image_id))
        if index == len(self.ids) or self.ids[index] != image_id:
            raise RunImagesError(
                f"labeled image {image_path!r} is no longer in the run's input; restore it, or label again"
            )
        owner = int(self.owners[index])
        if owner == FILE:
            return RunImage(image_path, None)
        return RunImage(image_path, (Path(self.staging) / str(owner) / str(image_id)).read_bytes())


def _found(items: list[tuple[int, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """The ids (sorted) and embedded flags of ``(image_id, embedded)`` items of distinct ids."""
    ids = np.fromiter((image_id for image_id, _ in items), np.int64, len(items))
    embedded = np.fromiter((embedded for _, embedded in items), bool, len(items))
    order = np.argsort(ids)
    return ids[order], embedded[order]


def listed_files(items: list[InputItem], wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids of the input's own items (files, listed on the driver) among ``wanted``, and that none is embedded."""
    ids = np.unique(np.fromiter((path_image_id(i.image_path) for i in items if i.error is None), np.int64))
    ids = ids[np.isin(ids, wanted)]
    return ids, np.zeros(len(ids), bool)


def scan_container(
    container: Container, bytes_column: str | None, wanted: np.ndarray, staging: str
) -> tuple[np.ndarray, np.ndarray]:
    """The ids among ``wanted`` of the images ``container`` lists (sorted), each once (its first entry), and whether
    each is embedded; an embedded one is written to ``staging/<image_id>`` (a folder this task owns)."""
    found: dict[int, bool] = {}
    for item in expand_container(container, bytes_column):
        if item.error is not None:
            continue
        image_id = path_image_id(item.image_path)
        index = int(np.searchsorted(wanted, image_id))
        if image_id in found or index == len(wanted) or wanted[index] != image_id:
            continue
        found[image_id] = item.data is not None
        if item.data is not None:
            os.makedirs(staging, exist_ok=True)
            Path(staging, str(image_id)).write_bytes(item.data)
    return _found(list(found.items()))


def combine_locations(parts: list[tuple[np.ndarray, np.ndarray]], staging: str) -> ImageLocations:
    """The :class:`ImageLocations` of the listing's parts in its order (the driver's own items, then each container;
    each part's ids sorted and distinct): an image listed twice is read where it is listed first. A single part that
    lists images (a folder, a list file) is taken as it is, without a sort of every id on the driver."""
    listing = [k for k, (ids, _) in enumerate(parts) if len(ids)]
    if len(listing) == 1:
        ids, embedded = parts[listing[0]]
        owners = np.full(len(ids), FILE, np.int32)
        owners[embedded] = listing[0] - 1
        return ImageLocations(ids, owners, staging)
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    owners = (
        np.concatenate([np.where(embedded, k - 1, FILE).astype(np.int32) for k, (_, embedded) in enumerate(parts)])
        if parts
        else np.zeros(0, np.int32)
    )
    unique, first = np.unique(ids, return_index=True)
    return ImageLocations(unique, owners[first], staging)
