"""Model batches of one padded size, formed before the images are decoded (a CPU stage of the labeling job).

The model runs together only images that pad to the same size (their results then do not depend on the
batch), so a batch of photos of mixed aspect ratios would become several small model calls. This stage
reads each image's size from its header (no pixels decoded), takes a window of many batches' worth of
inputs, sorts it by padded size and cuts it into batches of ``batch_size`` images of one padded size: one
output row per model batch. A size read wrongly only makes a batch less full (the model still groups by
the decoded sizes), never a result different.

Each file is read once: an image given by path is read whole here, its size taken from the bytes read, and
the bytes go on in the batch's ``data`` (as a container's images already do) for the decode stage, which then
opens no file. A window keeps at most :data:`WINDOW_KEPT_BYTES` of such bytes: past that, only the header is
read here and the decode stage reads the file (a window of large photos is never held whole). A file that
cannot be read here goes on without bytes, and the decode stage reads it and reports why it failed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
from PIL import Image

from san.transforms import ResizeShortestEdge

from ..ray_internals import set_stage_resources
from .inputs import filesystem_of
from .local_files import not_regular_reason

# SAN pads its input to a multiple of this (``size_divisibility`` of every preset and released config); a
# model with another multiple only gets fuller or emptier batches, never other results.
PAD_MULTIPLE = 32
# Model batches of inputs sorted at once: with k padded sizes in a window, at most k of its
# WINDOW_BATCHES batches are not full (>= 94% full with 4 sizes).
WINDOW_BATCHES = 64
# Images of the model batches in one block of the later stages (several batches of a small batch size): each block
# costs the driver, the raylet and a worker the same whatever its size. Blocks of 64 images against 16, 2 CPUs,
# batch 16: driver 14.7% and 14.4% -> 9.4% of a core, whole job +24% (BENCHMARKS.md, issue 26, session 10).
BLOCK_IMAGES = 64
# File bytes read by path that one grouping task hands on to the decode stage per window (the window's block
# holds them until its batches are decoded); files past it are read again by the decode stage.
WINDOW_KEPT_BYTES = 256 * 2**20
# EXIF orientations that swap width and height (transposed, rotated by 90 or 270 degrees).
_TRANSPOSING = frozenset({5, 6, 7, 8})
# Keys of the rows that are not images to run: inputs that already failed, and sizes that cannot be read.
_FAILED, _UNKNOWN = (-1, -1), (0, 0)

BATCH_ROW_SCHEMA = pa.schema(
    [
        ("image_path", pa.list_(pa.string())),
        ("data", pa.list_(pa.binary())),
        ("error", pa.list_(pa.string())),
        ("fingerprint", pa.list_(pa.string())),
    ]
)


def padded_size(height: int, width: int, resize: ResizeShortestEdge) -> tuple[int, int]:
    """The model's padded input size, in units of :data:`PAD_MULTIPLE`, of an image of ``height x width``."""
    h, w = resize.output_size(height, width)
    return -(-h // PAD_MULTIPLE), -(-w // PAD_MULTIPLE)


def probe_size(image_path: str, data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` as displayed (EXIF orientation applied), read from the header only; ``None`` when
    it cannot be read (the decode stage then says why)."""
    try:
        source = io.BytesIO(data) if len(data) else _open(image_path)
        if source is None:
            return None
        with source:
            return _header_size(source)
    except Exception:  # any reader failure: the decode stage reports it with its reason
        return None


def read_and_probe(image_path: str, budget: int) -> tuple[tuple[int, int] | None, bytes]:
    """An image given by path: its size (as :func:`probe_size`) and its whole bytes when the file is at most
    ``budget`` bytes long, else ``b""`` (only its header read); ``(None, b"")`` when it cannot be read (the
    decode stage reads it again and says why)."""
    try:
        source = _open(image_path)
        if source is None:
            return None, b""
        with source:
            if source.size() > budget:
                return _header_size(source), b""
            data = source.read()
    except Exception:  # any reader failure: the decode stage reports it with its reason
        return None, b""
    return probe_size(image_path, data), data


def _header_size(source: IO[bytes]) -> tuple[int, int]:
    """``(height, width)`` as displayed, from the header of the image that ``source`` holds."""
    with Image.open(source) as image:
        width, height = image.size
        if image.getexif().get(0x0112, 1) in _TRANSPOSING:
            width, height = height, width
        return height, width


def _open(image_path: str) -> pa.NativeFile | None:
    """The file at ``image_path`` opened for reading; ``None`` for a local special file (never opened)."""
    fs, path = filesystem_of(image_path)
    if isinstance(fs, pafs.LocalFileSystem) and not_regular_reason(path):  # never open a named pipe
        return None
    return fs.open_input_file(path)


@dataclass
class GroupStage:
    """CPU stage: a window of input rows (``image_path``, ``data``, ``error``, ``fingerprint``) -> model batches,
    one row per batch holding lists of those columns (``BATCH_ROW_SCHEMA``), each batch of one padded size;
    ``data`` holds each image's bytes, also of those given by path (up to :data:`WINDOW_KEPT_BYTES`)."""

    resize: ResizeShortestEdge
    batch_size: int

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        paths = [str(p) for p in batch["image_path"]]
        datas = [bytes(d) for d in batch.get("data", [b""] * len(paths))]
        errors = [str(e) for e in batch["error"]]
        fingerprints = [str(f) for f in batch["fingerprint"]]
        keys, kept = [], 0
        for i, (path, error) in enumerate(zip(paths, errors, strict=True)):
            if error:
                keys.append(_FAILED)
                continue
            if len(datas[i]):
                size = probe_size(path, datas[i])
            else:  # given by path: read here once, the bytes handed on while the window's budget lasts
                size, datas[i] = read_and_probe(path, WINDOW_KEPT_BYTES - kept)
                kept += len(datas[i])
            keys.append(_UNKNOWN if size is None or min(size) < 1 else padded_size(*size, self.resize))
        # A batch is cut as soon as its last image is seen, the rest at the end: batches leave in the order of
        # their last input (the window's last input goes last).
        chunks, open_batches = [], {}
        for i, key in enumerate(keys):
            chunk = open_batches.setdefault(key, [])
            chunk.append(i)
            if len(chunk) == self.batch_size:
                chunks.append(open_batches.pop(key))
        chunks += sorted(open_batches.values(), key=lambda chunk: chunk[-1])
        columns: dict[str, Any] = {
            "image_path": [[paths[i] for i in c] for c in chunks],
            "data": [[datas[i] for i in c] for c in chunks],
            "error": [[errors[i] for i in c] for c in chunks],
            "fingerprint": [[fingerprints[i] for i in c] for c in chunks],
        }
        return pa.table(columns, schema=BATCH_ROW_SCHEMA)


def batches_per_block(batch_size: int) -> int:
    """Model batches that go together in one block: enough for :data:`BLOCK_IMAGES` images, at least one."""
    return max(1, BLOCK_IMAGES // batch_size)


def model_batch_blocks(dataset: ray.data.Dataset, batch_size: int, remote_args: dict[str, Any]) -> ray.data.Dataset:
    """``dataset`` (one model batch of ``batch_size`` images per row) in blocks of :func:`batches_per_block` rows,
    so that every later task or actor call takes those batches: a batch held up (a slow image, a dead worker) holds
    up only its block, and small batches still make tasks of about :data:`BLOCK_IMAGES` images (each task and
    actor call costs the driver, the raylet and the worker some CPU whatever its size).

    The repartition runs with ``remote_args``, the grouping stage's own resources, so that Ray fuses it into
    that stage. ``Dataset.repartition`` takes no resources in Ray 2.60 and its tasks ask for a whole CPU: on a
    1-CPU node beside a model actor of half a CPU they never start and the job hangs (measured).
    """
    rows = batches_per_block(batch_size)
    return set_stage_resources(dataset.repartition(target_num_rows_per_block=rows), remote_args)
