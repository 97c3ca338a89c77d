"""``cvat``: CVAT's "Segmentation mask 1.1" format (Pascal VOC's segmentation layout) for semantic masks, one
zip: ``labelmap.txt`` (``name:r,g,b::`` per label, ``background`` first), ``ImageSets/Segmentation/default.txt``
(the image names) and ``SegmentationClass/<name>.png`` (RGB, each pixel its label's colour).

Unlabeled pixels are ``background`` (0, 0, 0), the format's own convention; class i has colour i + 1 of the
Pascal VOC palette, which has a different colour for every index below 2**24, so the export is lossless.
Image names are the images' paths relative to their common folder, without suffix, as CVAT matches them
against a task's images.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from san.atomic import write_atomic
from san.errors import UserError

from ..sources import LabelSource
from .parallel import ExportItem, export_pieces

__all__ = ["BACKGROUND", "CvatError", "palette", "spooled_zip", "write_cvat"]

BACKGROUND = "background"
_SPOOL_BATCH = 256  # ZipInfos pickled together (their attribute names are then stored once per batch)


class CvatError(UserError):
    """The labels cannot be written in CVAT's format; the message says why."""


def palette(count: int) -> np.ndarray:
    """The first ``count`` colours of the Pascal VOC palette, ``[count, 3]`` uint8 (index 0 is black).

    Written out (a few lines) rather than taken from Datumaro, which CVAT uses, to avoid its dependencies;
    the bits of the index are spread over the channels' bits from the top, 3 at a time, as VOC's code does."""
    index = np.arange(count, dtype=np.int64)
    colours = np.zeros((count, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * shift + channel)) & 1) << (7 - shift)
    return colours.astype(np.uint8)


@dataclass(frozen=True)
class _CvatPieces:
    """Writes a piece's masks into ``parts/SegmentationClass/`` and its image names into ``parts/lists/`` (in a
    task: :mod:`pipeline.exports.parallel`)."""

    parts: str
    colours: np.ndarray

    def write(self, part: int, items: Iterator[ExportItem]) -> dict[str, int]:
        names = []
        for item in items:
            mask = Path(self.parts, "SegmentationClass", f"{item.name}.png")
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(self.colours[item.labeled.label_map() + 1]).save(mask, format="PNG")  # -1 -> background
            names.append(item.name)
        listing = _listing(Path(self.parts), part)
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
        return {"images": len(names)}


class _SpooledInfos:
    """A ``ZipFile``'s list of its entries (``filelist``), from which it writes the central directory when it
    closes, kept in a temporary file rather than in memory: a ``ZipInfo`` per entry (about 570 bytes) would make
    the driver hold 570 MB for a million masks. zipfile has no option for this, and streaming zip libraries
    (stream-zip) hold their central directory in memory too; so zipfile still writes every byte of the zip, and
    only the list it keeps between an entry and the central directory is swapped for this one (``append``,
    ``len``, one pass of ``iter`` at the close, which are all that zipfile asks of it when writing)."""

    def __init__(self, spool: BinaryIO) -> None:
        self._spool = spool
        self._batch: list[zipfile.ZipInfo] = []
        self._count = 0

    def append(self, info: zipfile.ZipInfo) -> None:
        self._batch.append(info)
        self._count += 1
        if len(self._batch) == _SPOOL_BATCH:
            pickle.dump(self._batch, self._spool, pickle.HIGHEST_PROTOCOL)
            self._batch = []

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[zipfile.ZipInfo]:
        self._spool.seek(0)
        for _ in range(self._count // _SPOOL_BATCH):
            yield from pickle.load(self._spool)
        yield from self._batch


class _NoNames(dict):
    """A ``ZipFile``'s name -> ``ZipInfo`` map (``NameToInfo``) that keeps nothing: a writing ``ZipFile`` only
    looks names up in it to warn of a duplicate, and the export's names are unique (:mod:`pipeline.exports.pieces`)."""

    def __setitem__(self, name: str, info: zipfile.ZipInfo) -> None:
        pass


@contextlib.contextmanager
def spooled_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """A new zip file (deflated, ZIP64 as needed) whose central directory is kept in a temporary file until it is
    written (:class:`_SpooledInfos`): its memory does not grow with its entries. Its entries are written, never
    read back, nor replaced."""
    with tempfile.TemporaryFile() as spool, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.filelist = _SpooledInfos(spool)  # type: ignore[assignment]
        archive.NameToInfo = _NoNames()
        yield archive


def _listing(parts: Path, part: int) -> Path:
    return parts / "lists" / f"part-{part:08d}.txt"


def _names(parts: Path, count: int) -> Iterator[str]:
    """The image names the pieces listed, in order, one line at a time (names hold no line break:
    :func:`pipeline.exports.files.escape_name`)."""
    for part in range(count):
        with open(_listing(parts, part), encoding="utf-8", newline="\n") as listing:
            for line in listing:
                yield line.removesuffix("\n")


def write_cvat(source: LabelSource, target: Path) -> dict[str, int]:
    """Write the zip ``target`` (whole or not at all): Ray tasks write each piece's masks and names into a temporary
    folder beside it (:mod:`pipeline.exports.parallel`), then the zip is written from them one entry at a time.
    Returns ``{"images"}``.

    Raises:
        CvatError: a vocabulary class is named ``background`` (the format's name for unlabeled pixels).
    """
    names = source.vocabulary.names
    if any(name.casefold() == BACKGROUND for name in names):
        raise CvatError(
            f"the vocabulary of {source.description} has a class named {BACKGROUND!r}, which CVAT's format "
            "reserves for unlabeled pixels; rename the class in the vocabulary and label again, or choose another "
            "format"
        )
    colours = palette(len(names) + 1)
    labels = zip([BACKGROUND, *names], colours, strict=True)
    labelmap = ["# label:color_rgb:parts:actions"] + [f"{name}:{','.join(map(str, c))}::" for name, c in labels]
    target.parent.mkdir(parents=True, exist_ok=True)
    parts = target.parent / f".{target.name}.{uuid.uuid4().hex}.parts"
    try:
        counts, _, pieces = export_pieces(source, lambda _: _CvatPieces(str(parts), colours), desc="cvat")

        def write(tmp: Path) -> None:
            with spooled_zip(tmp) as archive:
                archive.writestr("labelmap.txt", "\n".join(labelmap) + "\n")
                with archive.open("ImageSets/Segmentation/default.txt", "w") as listing:
                    for part in range(pieces):
                        with open(_listing(parts, part), "rb") as names_file:
                            shutil.copyfileobj(names_file, listing)
                masks = str(parts / "SegmentationClass")  # joined as text: pathlib would intern every name's parts
                for name in _names(parts, pieces):
                    archive.write(os.path.join(masks, f"{name}.png"), f"SegmentationClass/{name}.png")

        write_atomic(target, write)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return {"images": counts.get("images", 0)}
