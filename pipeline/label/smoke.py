"""Generated images for ``--smoke-test``: see the whole flow without data or weights.

They are one Parquet file of image bytes in the output folder (``OUT/smoke-inputs.parquet``), named as the run's
``--input``: an explicitly named Parquet file is read as any other, so input listing needs no exception for it,
and on a cluster the workers read it where they write their results.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from san.atomic import write_atomic


def smoke_images(count: int = 8, seed: int = 0) -> dict[str, bytes]:
    """``count`` synthetic RGB images of mixed sizes (gradients, discs, stripes): file name -> PNG or JPEG bytes."""
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(count):
        height, width = int(rng.integers(96, 320)), int(rng.integers(96, 320))
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack(
            [
                255 * x / width,
                127 + 127 * np.sin(y / rng.uniform(5, 20)),
                255 * ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(height, width) / 3) ** 2),
            ],
            axis=-1,
        ).astype(np.uint8)
        kind, suffix = ("JPEG", ".jpg") if i % 2 else ("PNG", ".png")
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=kind)
        images[f"smoke_{i:02d}{suffix}"] = buffer.getvalue()
    return images


def write_smoke_inputs(path: Path) -> Path:
    """Write :func:`smoke_images` to the Parquet file ``path`` (columns ``image_path``, ``image_bytes``), whole
    or not at all."""
    images = smoke_images()
    table = pa.table({"image_path": list(images), "image_bytes": list(images.values())})
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))
