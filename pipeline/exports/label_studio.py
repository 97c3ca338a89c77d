"""``label-studio``: Label Studio pre-annotations: ``tasks.json`` (one task per image, its labels as a
prediction of brush regions, one per class, in Label Studio's own RLE) and ``label_config.xml`` (the labeling
interface that the tasks' ``from_name``/``to_name`` refer to, with the vocabulary as brush labels).

The RLE comes from ``label_studio_sdk.converter.brush.mask2rle`` and decodes with its ``decode_rle`` to the
class's mask bit for bit (an RGBA image whose alpha is 255 on the class). Unlabeled pixels get no brush.
Each task's ``data.image`` is ``image_url`` followed by the image's path relative to ``image_root`` (default:
the folder all images share), so that Label Studio serves it from local files (``/data/local-files/?d=``,
with ``LOCAL_FILES_DOCUMENT_ROOT`` set to that folder) or from any URL prefix. A run whose input embeds its
images (Parquet image bytes, WebDataset shards: :mod:`pipeline.run_images`) has no files to point at: every
image is then written into the export's ``images/`` folder, and the URLs are paths under the export.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from san.atomic import write_json_atomic
from san.errors import UserError

from ..run_images import RunImage, iter_run_images
from ..sources import LabeledImage, LabelSource
from .files import mask_file_names

__all__ = ["DEFAULT_IMAGE_URL", "FROM_NAME", "TO_NAME", "common_folder", "label_config", "write_label_studio"]

DEFAULT_IMAGE_URL = "/data/local-files/?d="
FROM_NAME, TO_NAME = "label", "image"  # the names of the BrushLabels and Image tags in label_config.xml
MODEL_VERSION = "san-labeler"


class LabelStudioError(UserError):
    """The Label Studio export cannot be made; the message says why."""


def _brush():
    """``label_studio_sdk.converter.brush``, or an error naming the extra that installs it."""
    try:
        from label_studio_sdk.converter import brush
    except ImportError as error:
        raise LabelStudioError(
            f"the label-studio format needs label-studio-sdk ({error}); install the project's exports extra: "
            "pip install -e '.[exports]'"
        ) from None
    return brush


def common_folder(paths: list[str]) -> str:
    """The deepest folder that holds every path."""
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ""


def label_config(names: list[str]) -> str:
    """The labeling interface: the image and one brush label per class."""
    labels = "".join(f"    <Label value={quoteattr(name)}/>\n" for name in names)
    return (
        f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}  </BrushLabels>\n</View>\n'
    )


def _task(label_map: np.ndarray, segments: list[dict[str, Any]], names: list[str], url: str) -> dict[str, Any]:
    """One task: the image's URL and a prediction with one brush region per class present."""
    brush = _brush()
    height, width = label_map.shape
    score = {int(s["category_id"]) - 1: s["score"] for s in segments}
    results = []
    for value in np.unique(label_map[label_map >= 0]).tolist():
        mask = np.where(label_map == value, 255, 0).astype(np.uint8)
        result = {
            "id": f"class-{value}",
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": brush.mask2rle(mask), "brushlabels": [names[value]]},
        }
        if score.get(value) is not None:
            result["score"] = float(score[value])
        results.append(result)
    return {"data": {"image": url}, "predictions": [{"model_version": MODEL_VERSION, "result": results}]}


def _copy_images(source: LabelSource, folder: Path, items: list[LabeledImage]) -> dict[str, str] | None:
    """When the run's input embeds any of its images: write every image (as the run read it) into
    ``folder/images/`` and return image path -> its path under ``folder``; else ``None`` (all are files)."""
    names = mask_file_names([(item.image_path, item.image_id) for item in items], suffix="")
    written: dict[str, str] = {}

    def write(run_image: RunImage) -> None:
        data = run_image.read()
        relative = f"images/{names[run_image.image_path]}{run_image.suffix(data)}"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
        written[run_image.image_path] = relative

    files = []  # read only when an embedded image turns up
    for run_image in iter_run_images(source.run, names):
        if run_image.embedded:
            write(run_image)
        else:
            files.append(run_image)
    if not written:
        return None
    for run_image in files:
        write(run_image)
    return written


def write_label_studio(
    source: LabelSource, folder: Path, image_url: str = DEFAULT_IMAGE_URL, image_root: str | None = None
) -> dict[str, Any]:
    """Write ``tasks.json`` and ``label_config.xml`` into ``folder`` (new and empty), and the images into
    ``images/`` when the run's input embeds them (module docstring). Returns ``{"images", "regions",
    "image_root"}``; ``image_root`` is ``None`` when the URLs are paths under the export.

    Raises:
        LabelStudioError: label-studio-sdk is not installed, an image is not under ``image_root``, or
            ``image_root`` is given for a run whose images are written into the export.
    """
    _brush()
    items = list(source.images())
    copied = _copy_images(source, folder, items)
    if copied is not None and image_root:
        raise LabelStudioError(
            f"`image_root` {image_root!r}: the input of {source.description} embeds its images (Parquet image "
            "bytes or WebDataset shards), so they are written into the export's images/ folder and the task URLs "
            "are paths under the export; leave out `image_root`"
        )
    root = None
    if copied is None:
        root = os.path.abspath(image_root) if image_root else common_folder([i.image_path for i in items])
    names = source.vocabulary.names
    tasks = []
    for item in items:
        if copied is not None:
            relative = copied[item.image_path]
        else:
            relative = Path(os.path.relpath(os.path.abspath(item.image_path), root)).as_posix()
            if relative.startswith(".."):
                raise LabelStudioError(f"image {item.image_path!r} is not under `image_root` {root!r}")
        url = image_url + urllib.parse.quote(relative)
        tasks.append(_task(item.label_map(), item.segments, names, url))
    write_json_atomic(tasks, folder / "tasks.json")
    (folder / "label_config.xml").write_text(label_config(names), encoding="utf-8")
    regions = sum(len(task["predictions"][0]["result"]) for task in tasks)
    return {"images": len(items), "regions": regions, "image_root": root}
