"""The images of a labeling run, read the way its job read them, for the exports and the review.

The run's ``--input`` (as ``manifest.json`` records it) is listed again with the labeling job's own code
(:func:`pipeline.label.inputs.resolve_inputs`, :func:`pipeline.label.containers.expand_container`). An image
embedded in the input (a Parquet image-bytes column, a WebDataset shard's member) gives the bytes stored
there: its ``image_path`` only names it and is never opened, so a row whose path column says
``/etc/hostname`` exports its own bytes, and a member named ``../x.jpg`` names no file on disk. Any other
image is read from the file the listing names, as the decode stage reads it
(:func:`pipeline.label.inputs.read_bytes`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from san.errors import UserError

from .label.containers import expand_container
from .label.images import image_suffix
from .label.inputs import InputItem, read_bytes, resolve_inputs

__all__ = ["RunImage", "RunImagesError", "iter_run_images"]


class RunImagesError(UserError):
    """A labeled image that cannot be read again from the run's input; the message names it and why."""


@dataclass(frozen=True)
class RunImage:
    """One labeled image of the run's input: ``data`` holds its bytes when the input embeds them (``None``:
    the image is the file at ``image_path``)."""

    image_path: str
    data: bytes | None

    @property
    def embedded(self) -> bool:
        """Whether the input holds the image's bytes (then no file is ever read for it)."""
        return self.data is not None

    def read(self) -> bytes:
        """The image's encoded bytes (``OSError`` when its file cannot be read)."""
        return self.data if self.data is not None else read_bytes(self.image_path)

    def suffix(self, data: bytes) -> str:
        """The file extension to write ``data`` (this image's bytes) under: for a file, its own; for embedded
        bytes, the path's when it fits the decoded format, else the format's (``pipeline.label.images``)."""
        return image_suffix(data, self.image_path) if self.embedded else os.path.splitext(self.image_path)[1]


def _input_of(run: Path) -> tuple[str, str | None]:
    """The run's ``--input`` (absolute, as the job recorded it) and ``--bytes-column`` from its manifest."""
    manifest = run / "manifest.json"
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        options = recorded.get("options") or {}
        spec = recorded.get("input") or options.get("input")  # runs before "input" was recorded: as given
    except (OSError, ValueError, AttributeError) as exc:
        raise RunImagesError(f"{manifest}: cannot read the run's input: {exc}") from None
    if not spec:
        raise RunImagesError(f"{manifest} names no input; the run's images cannot be read again")
    return spec, options.get("bytes_column")


def _listing(run: Path) -> Iterator[InputItem]:
    """Every input the run's job listed, in its order (containers expanded here, one after the other)."""
    spec, bytes_column = _input_of(run)
    resolved = resolve_inputs(spec, exclude=str(run), bytes_column=bytes_column)
    yield from resolved.items
    for container in resolved.containers:
        yield from expand_container(container, bytes_column)


def iter_run_images(run: str | os.PathLike[str], wanted: Collection[str]) -> Iterator[RunImage]:
    """The images of the labeling run in folder ``run`` whose ``image_path`` is in ``wanted``, each once, in
    the input's order (a path the input repeats: its first row, as the job labels it).

    Raises:
        RunImagesError: the manifest names no input, or an image of ``wanted`` is no longer in the input
            (moved or deleted since it was labeled), named with the input.
        pipeline.label.inputs.InputError: the input itself is gone or cannot be listed.
    """
    root = Path(run)
    missing = set(wanted)
    for item in _listing(root):
        if item.image_path in missing and item.error is None:
            missing.discard(item.image_path)
            yield RunImage(item.image_path, item.data)
            if not missing:
                return
    if missing:
        example = min(missing)
        raise RunImagesError(
            f"{len(missing)} labeled image(s) of {root} are no longer in its input {_input_of(root)[0]!r} "
            f"(e.g. {example!r}: moved, deleted or unreadable since the run); restore them, or label again"
        )
