"""``hf``: a Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (and pushed to the Hub with
``push_to_hub``): per image ``image`` (the image's bytes, as the run read them: ``pipeline.run_images``) and
``label_map`` (the run's label-map PNG) as ``Image`` features, ``image_path``, and ``segments`` (per class
present: ``label``, a ``ClassLabel`` whose names are the vocabulary, and the run's ``area``, ``bbox``, COCO
``rle`` and ``score``).

``label_map`` holds the class index per pixel (``label`` of the segments) and 255 for unlabeled pixels, the
``ignore_index`` of Hugging Face's semantic-segmentation training scripts (65535 in the 16-bit PNG of a
vocabulary with more than 255 classes).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from san.errors import UserError

from ..run_images import iter_run_images
from ..sources import LabelSource
from .files import escape_name

__all__ = ["features", "write_hf"]


def features(names: list[str]):
    """The dataset's ``datasets.Features`` for a vocabulary's class ``names``."""
    from datasets import ClassLabel, Features, Image, List, Value

    segment = {
        "label": ClassLabel(names=names),
        "area": Value("int64"),
        "bbox": List(Value("float64")),
        "rle": Value("string"),
        "score": Value("float64"),
    }
    return Features({"image": Image(), "label_map": Image(), "image_path": Value("string"), "segments": List(segment)})


def _file_name(image_path: str, suffix: str) -> str:
    """The file name the ``image`` feature records: the path's last part, with the image's ``suffix`` when it
    lacks it, escaped as every export's file names are (:func:`pipeline.exports.files.escape_name`)."""
    name = PurePosixPath(image_path).name
    return escape_name(name if name.endswith(suffix) else f"{name}{suffix}")


def _rows(source: LabelSource) -> Iterator[dict[str, Any]]:
    """One row per labeled image, in the run's input order, the image as the run read it
    (:mod:`pipeline.run_images`: embedded bytes from the input, other images from their files)."""
    items = {item.image_path: item for item in source.images()}
    for run_image in iter_run_images(source.run, items):
        item = items[run_image.image_path]
        data = run_image.read()
        yield {
            "image": {"bytes": data, "path": _file_name(item.image_path, run_image.suffix(data))},
            "label_map": {"bytes": item.label_png, "path": None},
            "image_path": item.image_path,
            "segments": [
                {
                    "label": int(s["category_id"]) - 1,
                    "area": int(s["area"]),
                    "bbox": [float(v) for v in s["bbox"]],
                    "rle": s["rle"],
                    "score": None if s["score"] is None else float(s["score"]),
                }
                for s in item.segments
            ],
        }


def write_hf(source: LabelSource, folder: Path, push_to_hub: str | None = None) -> dict[str, Any]:
    """Build the dataset (through a temporary ``datasets`` cache beside ``folder``), ``save_to_disk`` it into
    ``folder`` (new and empty) and, when given, push it to the Hub repository ``push_to_hub``. Returns
    ``{"images", "pushed"}``."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    cache = Path(tempfile.mkdtemp(prefix=".hf-cache-", dir=folder.parent))
    try:
        try:
            dataset = datasets.Dataset.from_generator(
                _rows,
                gen_kwargs={"source": source},
                features=features(source.vocabulary.names),
                cache_dir=str(cache),
            )
        except DatasetGenerationError as error:  # wraps what the rows raised: a missing image is the user's
            if isinstance(error.__cause__, (OSError, UserError)):
                raise error.__cause__ from None
            raise
        dataset.save_to_disk(str(folder))
        if push_to_hub:
            dataset.push_to_hub(push_to_hub)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"images": len(dataset), "pushed": push_to_hub}
