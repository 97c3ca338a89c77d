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

import json
import os
import shutil
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from san.atomic import write_atomic
from san.errors import UserError

from ..sources import LabelSource
from .files import STAGING
from .parallel import ExportItem, Layout, export_pieces

__all__ = ["DEFAULT_IMAGE_URL", "FROM_NAME", "TO_NAME", "label_config", "write_label_studio"]

DEFAULT_IMAGE_URL = "/data/local-files/?d="
FROM_NAME, TO_NAME = "label", "image"  # the names of the BrushLabels and Image tags in label_config.xml
MODEL_VERSION = "san-labeler"
_FRAGMENTS = ".tasks"  # the pieces' tasks, joined into tasks.json
_JSON = {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")}  # as san.atomic.write_json_atomic


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


@dataclass(frozen=True)
class _LabelStudioPieces:
    """Writes a piece's tasks as a JSON fragment (``.tasks/part-N.json``: the tasks, comma-separated) and, when
    ``root`` is ``None``, its images into ``images/`` (in a task: :mod:`pipeline.exports.parallel`)."""

    folder: str
    names: list[str]
    image_url: str
    root: str | None

    def _relative(self, item: ExportItem) -> str:
        if self.root is None:
            data = item.image.read()
            relative = f"images/{item.name}{item.image.suffix(data)}"
            Path(self.folder, relative).parent.mkdir(parents=True, exist_ok=True)
            Path(self.folder, relative).write_bytes(data)
            return relative
        relative = Path(os.path.relpath(os.path.abspath(item.labeled.image_path), self.root)).as_posix()
        if relative.startswith(".."):
            raise LabelStudioError(f"image {item.labeled.image_path!r} is not under `image_root` {self.root!r}")
        return relative

    def write(self, part: int, items: Iterator[ExportItem]) -> dict[str, int]:
        fragment = _fragment(Path(self.folder), part)
        fragment.parent.mkdir(parents=True, exist_ok=True)
        images = regions = 0
        with open(fragment, "w", encoding="utf-8") as out:
            for item in items:
                url = self.image_url + urllib.parse.quote(self._relative(item))
                task = _task(item.labeled.label_map(), item.labeled.segments, self.names, url)
                out.write(("," if images else "") + json.dumps(task, **_JSON))
                images += 1
                regions += len(task["predictions"][0]["result"])
        return {"images": images, "regions": regions}


def _fragment(folder: Path, part: int) -> Path:
    return folder / _FRAGMENTS / f"part-{part:08d}.json"


def _join_fragments(folder: Path, parts: int) -> None:
    """``tasks.json`` from the pieces' fragments, in order, one at a time (as :func:`san.atomic.write_json_atomic`
    would write the list)."""

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as out:
            out.write(b"[")
            first = True
            for part in range(parts):
                with open(_fragment(folder, part), "rb") as fragment:
                    if fragment.read(1):
                        out.write(b"" if first else b",")
                        fragment.seek(0)
                        shutil.copyfileobj(fragment, out)
                        first = False
            out.write(b"]")

    write_atomic(folder / "tasks.json", write, kind=".json file")
    shutil.rmtree(folder / _FRAGMENTS)


def write_label_studio(
    source: LabelSource, folder: Path, image_url: str = DEFAULT_IMAGE_URL, image_root: str | None = None
) -> dict[str, Any]:
    """Write ``tasks.json`` and ``label_config.xml`` into ``folder`` (new and empty), and the images into
    ``images/`` when the run's input embeds them (module docstring); Ray tasks write the pieces' tasks
    (:mod:`pipeline.exports.parallel`), joined into ``tasks.json`` in the source's order. Returns ``{"images",
    "regions", "image_root"}``; ``image_root`` is ``None`` when the URLs are paths under the export.

    Raises:
        LabelStudioError: label-studio-sdk is not installed, an image is not under ``image_root``, or
            ``image_root`` is given for a run whose images are written into the export.
    """
    _brush()
    names = source.vocabulary.names
    roots: list[str | None] = []

    def writer_for(layout: Layout) -> _LabelStudioPieces:
        if layout.embedded and image_root:
            raise LabelStudioError(
                f"`image_root` {image_root!r}: the input of {source.description} embeds its images (Parquet image "
                "bytes or WebDataset shards), so they are written into the export's images/ folder and the task URLs "
                "are paths under the export; leave out `image_root`"
            )
        root = None if layout.embedded else os.path.abspath(image_root) if image_root else layout.folder
        roots.append(root)
        return _LabelStudioPieces(str(folder), names, image_url, root)

    counts, _, parts = export_pieces(source, writer_for, staging=folder / STAGING, desc="label-studio")
    _join_fragments(folder, parts)
    (folder / "label_config.xml").write_text(label_config(names), encoding="utf-8")
    return {"images": counts.get("images", 0), "regions": counts.get("regions", 0), "image_root": roots[0]}
