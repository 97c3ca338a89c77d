"""Model batches of one padded size, formed before the images are decoded (a CPU stage of the labeling job).

The model runs together only images that pad to the same size (their results then do not depend on the
batch), so a batch of photos of mixed aspect ratios would become several small model calls. This stage
reads each image's size from its header (no pixels decoded), takes a window of many batches' worth of
inputs, sorts it by padded size and cuts it into batches of ``batch_size`` images of one padded size: one
output row per model batch. A size read wrongly only makes a batch less full (the model still groups by
the decoded sizes), never a result different.
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
        source = _open(image_path, data)
        if source is None:
            return None
        with source, Image.open(source) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in _TRANSPOSING:
                width, height = height, width
            return height, width
    except Exception:  # any reader failure: the decode stage reports it with its reason
        return None


def _open(image_path: str, data: bytes) -> IO[bytes] | None:
    if len(data):
        return io.BytesIO(data)
    fs, path = filesystem_of(image_path)
    if isinstance(fs, pafs.LocalFileSystem) and not_regular_reason(path):  # never open a named pipe
        return None
    return fs.open_input_file(path)


@dataclass
class GroupStage:
    """CPU stage: a window of input rows (``image_path``, ``data``, ``error``, ``fingerprint``) -> model batches,
    one row per batch holding lists of those columns (``BATCH_ROW_SCHEMA``), each batch of one padded size."""

    resize: ResizeShortestEdge
    batch_size: int

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        paths = [str(p) for p in batch["image_path"]]
        datas = [bytes(d) for d in batch.get("data", [b""] * len(paths))]
        errors = [str(e) for e in batch["error"]]
        fingerprints = [str(f) for f in batch["fingerprint"]]
        keys = [self._key(p, d, e) for p, d, e in zip(paths, datas, errors, strict=True)]
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

    def _key(self, image_path: str, data: bytes, error: str) -> tuple[int, int]:
        if error:
            return _FAILED
        size = probe_size(image_path, data)
        return _UNKNOWN if size is None or min(size) < 1 else padded_size(*size, self.resize)


def one_batch_per_block(dataset: ray.data.Dataset, remote_args: dict[str, Any]) -> ray.data.Dataset:
    """``dataset`` (one model batch per row) with each row in a block of its own, so that every later task or
    actor call takes one batch and a batch held up (a slow image, a dead worker) holds up no other.

    The repartition runs with ``remote_args``, the grouping stage's own resources, so that Ray fuses it into
    that stage. ``Dataset.repartition`` takes no resources in Ray 2.60 and its tasks ask for a whole CPU: on a
    1-CPU node beside a model actor of half a CPU they never start and the job hangs (measured).
    """
    return set_stage_resources(dataset.repartition(target_num_rows_per_block=1), remote_args)
