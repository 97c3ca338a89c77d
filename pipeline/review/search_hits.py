"""A region search's hits (:func:`pipeline.region_search.search_run`) as a FiftyOne dataset: one sample per image,
best first, with the region as a ``Detection`` (box and mask, labeled with the query, its score as confidence)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import fiftyone as fo

from ..region_search import SearchHit
from ..run_images import iter_run_images
from .errors import ReviewError
from .mask_files import INFO_KEY as MASK_FOLDER_KEY
from .mask_files import MaskFolder, remove_mask_folder

__all__ = ["save_search_hits"]

#: The sample field of the hit's region.
REGION_FIELD = "region"


def _detection(hit: SearchHit, query: str) -> fo.Detection:
    """The hit's region, box relative to the image and its mask cropped to the box, as FiftyOne stores masks."""
    height, width = hit.mask.shape
    if hit.box is None:
        return fo.Detection(label=query, confidence=hit.score, bounding_box=[0.0, 0.0, 0.0, 0.0])
    x, y, w, h = hit.box
    return fo.Detection(
        label=query,
        confidence=hit.score,
        bounding_box=[x / width, y / height, w / width, h / height],
        mask=hit.mask[y : y + h, x : x + w],
    )


def _check_name(name: str, overwrite: bool) -> bool:
    """Whether a dataset named ``name`` exists and may be replaced: only a search's hits, and only with
    ``overwrite`` (a review dataset may hold edits, any other is not ours)."""
    if name not in fo.list_datasets():
        return False
    if "search" not in (fo.load_dataset(name).info or {}):
        raise ReviewError(
            f"a FiftyOne dataset named {name!r} already exists and holds no search hits; it is never replaced: "
            "choose another name with `dataset` OTHER"
        )
    if not overwrite:
        raise ReviewError(f"FiftyOne dataset {name!r} already exists; add `overwrite` to replace it")
    return True


def save_search_hits(run: str | Path, query: str, hits: Sequence[SearchHit], name: str, overwrite: bool = False) -> str:
    """Save ``hits`` of ``query`` in the run in folder ``run`` as the persistent dataset ``name`` (sample field
    ``region``, ``search_rank`` and ``search_score``); images the run's input embeds are written next to the run
    (``review-masks/``). Returns the dataset's name.

    Raises:
        pipeline.review.errors.ReviewError: ``name`` is taken by another kind of dataset, or ``overwrite`` is
            False.
    """
    _check_name(name, overwrite)
    root = Path(run).resolve()
    wanted = {hit.image_path for hit in hits}
    images = {image.image_path: image for image in iter_run_images(root, wanted, strict=False)}
    folder = MaskFolder(root, name)
    dataset = fo.Dataset()
    samples = []
    for rank, hit in enumerate(hits, start=1):
        image = images.get(hit.image_path)  # None: no longer listed; shown by its path (missing in the App)
        if image is not None and image.embedded:
            data = image.read()
            filepath = folder.media_file(hit.image_id, data, image.suffix(data))
        else:
            filepath = hit.image_path
        sample = fo.Sample(filepath=filepath, search_rank=rank, search_score=hit.score, image_path=hit.image_path)
        sample[REGION_FIELD] = fo.Detections(detections=[_detection(hit, query)])
        samples.append(sample)
    dataset.add_samples(samples, progress=False)
    dataset.info = {"labeling_run": str(root), "search": query, MASK_FOLDER_KEY: str(folder.root)}
    dataset.save()
    if _check_name(name, overwrite):
        old_info = fo.load_dataset(name).info
        fo.delete_dataset(name)
        remove_mask_folder(old_info)
    dataset.name = name
    dataset.persistent = True
    return name
