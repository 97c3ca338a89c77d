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

__all__ = ["RunImage", "RunImagesError", "iter_run_images", "missing_images_error", "run_input"]


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


def run_input(run: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """The run's ``--input`` (absolute, as the job recorded it; ``None`` when its manifest names none) and
    ``--bytes-column``, from its ``manifest.json``.

    Raises:
        RunImagesError: the manifest cannot be read.
    """
    manifest = Path(run) / "manifest.json"
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        options = recorded.get("options") or {}
        spec = recorded.get("input") or options.get("input")  # runs before "input" was recorded: as given
    except (OSError, ValueError, AttributeError) as exc:
        raise RunImagesError(f"{manifest}: cannot read the run's input: {exc}") from None
    return spec or None, options.get("bytes_column")


def _listing(run: Path, spec: str, bytes_column: str | None) -> Iterator[InputItem]:
    """Every input the run's job listed, in its order (containers expanded here, one after the other); a list
    file's path may come more than once (``once=False``: nothing is held per path; the caller takes the first)."""
    resolved = resolve_inputs(spec, exclude=str(run), bytes_column=bytes_column)
    yield from resolved.items
    for container in resolved.containers:
        yield from expand_container(container, bytes_column, once=False)


def iter_run_images(run: str | os.PathLike[str], wanted: Collection[str], strict: bool = True) -> Iterator[RunImage]:
    """The images of the labeling run in folder ``run`` whose ``image_path`` is in ``wanted``, each once, in
    the input's order (a path the input repeats: its first row, as the job labels it).

    Args:
        strict: raise for an image of ``wanted`` that the input no longer lists, or when the manifest names
            no input; False leaves such images out (the caller tells them by their absence).

    Raises:
        RunImagesError: with ``strict``, the manifest names no input, or an image of ``wanted`` is no longer
            in the input (moved or deleted since it was labeled), named with the input.
        pipeline.label.inputs.InputError: the input itself is gone or cannot be listed.
    """
    root = Path(run)
    spec, bytes_column = run_input(root)
    if spec is None:
        if strict:
            raise RunImagesError(f"{root / 'manifest.json'} names no input; the run's images cannot be read again")
        return
    missing = set(wanted)
    for item in _listing(root, spec, bytes_column):
        if item.image_path in missing and item.error is None:
            missing.discard(item.image_path)
            yield RunImage(item.image_path, item.data)
            if not missing:
                return
    if missing and strict:
        raise missing_images_error(root, spec, len(missing), min(missing))


def missing_images_error(run: Path, spec: str | None, count: int, example: str) -> RunImagesError:
    """The error for ``count`` labeled images of ``run`` that its input ``spec`` no longer lists, ``example`` one."""
    return RunImagesError(
        f"{count} labeled image(s) of {run} are no longer in its input {spec!r} (e.g. {example!r}: moved, deleted "
        "or unreadable since the run); restore them, or label again"
    )
