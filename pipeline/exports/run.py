"""``jobs/export.py --format``: the options (:class:`FormatOptions`) and :func:`export_format`, which reads the
source (a labeling run's folder, ``fiftyone:DATASET`` or a dataset name) and writes one format."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from san.errors import OptionError, UserError

from ..sources import FIFTYONE_PREFIX, is_label_source, open_label_source
from .files import new_folder
from .yolo_seg import DEFAULT_TOLERANCE

__all__ = ["FORMATS", "ExportError", "FormatOptions", "export_format"]

FORMATS = ("yolo-seg", "cvat", "label-studio", "hf")


class ExportError(UserError):
    """The export cannot be written; the message says why."""


@dataclass(kw_only=True)
class FormatOptions:
    """The options of ``jobs/export.py --format`` (its parser adds these fields)."""

    format: str | None = field(
        default=None,
        metadata={
            "help": "write another tool's format (docs/exports.md): yolo-seg (Ultralytics images/, labels/, "
            "data.yaml), cvat (Segmentation mask 1.1 zip), label-studio (tasks.json pre-annotations), "
            "hf (Hugging Face datasets save_to_disk)",
            "choices": FORMATS,
        },
    )
    output: str | None = field(
        default=None,
        metadata={"help": "where `format` writes: a new or empty folder (cvat: the .zip file)"},
    )
    tolerance: float = field(
        default=DEFAULT_TOLERANCE,
        metadata={"help": "yolo-seg: polygon simplification tolerance in pixels (0 keeps every boundary corner)"},
    )
    image_url: str | None = field(
        default=None,
        metadata={
            "help": "label-studio: what comes before each image's relative path in its task "
            "(default: /data/local-files/?d=, Label Studio's local files)"
        },
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "label-studio: the folder image paths are relative to (default: the images' common folder)"},
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "hf: also push the dataset to this Hugging Face Hub repository"}
    )

    def __post_init__(self) -> None:
        if self.format is None:
            given = [name for name in ("output", "image_url", "image_root", "push_to_hub") if getattr(self, name)]
            if given:
                raise OptionError(f"`{given[0]}` belongs to an export `format`; give `format` too")
            return
        if not self.output:
            raise OptionError(f"`format` {self.format} needs `output`: where to write it")
        if self.tolerance < 0:
            raise OptionError(f"`tolerance` must be >= 0 pixels, got {self.tolerance}")


def export_format(spec: str | os.PathLike[str], options: FormatOptions) -> dict[str, Any]:
    """Write ``options.format`` of the labels ``spec`` names: a labeling run's output folder (its labels as
    the run wrote them), ``fiftyone:DATASET`` or a FiftyOne dataset's name (the reviewed masks). Folders
    appear whole or not at all. Returns a summary: ``format``, ``source``, ``output`` and the format's counts."""
    text = os.fspath(spec)
    source = open_label_source(text if is_label_source(text) else FIFTYONE_PREFIX + text)
    summary: dict[str, Any] = {"format": options.format, "source": source.description, "output": options.output}
    target = Path(os.path.abspath(options.output))  # Ray tasks write there, whatever their working folder
    try:
        if options.format == "cvat":
            from .cvat import write_cvat

            if target.is_dir():
                raise ExportError(f"`output` {options.output!r} is a folder; cvat writes a .zip file")
            return {**summary, **write_cvat(source, target)}
        with new_folder(target, "--output", ExportError) as folder:
            if options.format == "yolo-seg":
                from .yolo_seg import write_yolo_seg

                counts = write_yolo_seg(source, folder, target, options.tolerance)
            elif options.format == "label-studio":
                from .label_studio import DEFAULT_IMAGE_URL, write_label_studio

                url = options.image_url if options.image_url is not None else DEFAULT_IMAGE_URL
                counts = write_label_studio(source, folder, url, options.image_root)
                if counts["image_root"] is None:  # the images were written into the export
                    counts["image_root"] = str(target.resolve())
            else:
                from .hf import write_hf

                counts = write_hf(source, folder, options.push_to_hub)
    except FileNotFoundError as error:
        raise ExportError(f"{source.description}: image file {error.filename!r} not found") from None
    except OSError as error:  # a full disk, a folder without write permission: the user's to fix
        raise ExportError(f"cannot write the export to {options.output!r}: {error.strerror or error}") from error
    return {**summary, **counts}
