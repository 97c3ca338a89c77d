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

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..sources import LabelSource
from .files import STAGING, escape_name
from .parallel import ExportItem, export_pieces

__all__ = ["features", "write_hf"]

_BATCH_ROWS = 64  # rows a task holds before it writes them (each with its image's bytes)


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


def _row(item: ExportItem) -> dict[str, Any]:
    """The dataset's row of one image, the image as the run read it (:mod:`pipeline.run_images`)."""
    data = item.image.read()
    return {
        "image": {"bytes": data, "path": _file_name(item.labeled.image_path, item.image.suffix(data))},
        "label_map": {"bytes": item.labeled.label_png, "path": None},
        "image_path": item.labeled.image_path,
        "segments": [
            {
                "label": int(s["category_id"]) - 1,
                "area": int(s["area"]),
                "bbox": [float(v) for v in s["bbox"]],
                "rle": s["rle"],
                "score": None if s["score"] is None else float(s["score"]),
            }
            for s in item.labeled.segments
        ],
    }


def _shard(folder: Path, part: int) -> Path:
    return folder / f".part-{part:08d}.arrow"


@dataclass(frozen=True)
class _HfPieces:
    """Writes a piece's rows as one Arrow file of the dataset (in a task: :mod:`pipeline.exports.parallel`), as
    ``save_to_disk`` writes each of its shards (``datasets``' ``ArrowWriter``)."""

    folder: str
    names: list[str]

    def write(self, part: int, items: Iterator[ExportItem]) -> dict[str, int]:
        from datasets.arrow_writer import ArrowWriter

        schema = features(self.names)
        writer = ArrowWriter(features=schema, path=str(_shard(Path(self.folder), part)), writer_batch_size=_BATCH_ROWS)
        try:
            for item in items:
                writer.write(schema.encode_example(_row(item)))
        finally:
            rows, _ = writer.finalize()
        return {"images": rows}


def _save_state(folder: Path, names: list[str], parts: int) -> None:
    """Rename the pieces' files ``data-NNNNN-of-MMMMM.arrow`` in order and write the two JSON files
    ``datasets.load_from_disk`` reads: ``dataset_info.json`` (``DatasetInfo.write_to_directory``, the features) and
    ``state.json``, listing the files as ``save_to_disk`` writes it (datasets has no public call that writes it for
    files it did not write itself)."""
    from datasets import DatasetInfo
    from datasets.fingerprint import Hasher

    files = [f"data-{part:05d}-of-{parts:05d}.arrow" for part in range(parts)]
    for part, name in enumerate(files):
        os.replace(_shard(folder, part), folder / name)
    DatasetInfo(features=features(names)).write_to_directory(str(folder), pretty_print=True)
    state = {
        "_data_files": [{"filename": name} for name in files],
        "_fingerprint": Hasher.hash([names, [(folder / name).stat().st_size for name in files]]),
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")


def write_hf(source: LabelSource, folder: Path, push_to_hub: str | None = None) -> dict[str, Any]:
    """Write the dataset into ``folder`` (new and empty) in ``save_to_disk``'s layout, one Arrow file per piece of
    the source written by a Ray task (:mod:`pipeline.exports.parallel`), and, when given, push it to the Hub
    repository ``push_to_hub`` (from the files, memory-mapped). Returns ``{"images", "pushed"}``."""
    names = list(source.vocabulary.names)
    counts, _, parts = export_pieces(
        source, lambda _: _HfPieces(str(folder), names), staging=folder / STAGING, desc="hf"
    )
    _save_state(folder, names, parts)
    if push_to_hub:
        import datasets

        datasets.load_from_disk(str(folder)).push_to_hub(push_to_hub)
    return {"images": counts.get("images", 0), "pushed": push_to_hub}
