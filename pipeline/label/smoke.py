"""Generated images for ``--smoke-test``: see the whole flow without data or weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_smoke_images(folder: Path, count: int = 8, seed: int = 0) -> Path:
    """Write ``count`` synthetic RGB JPEG/PNG images of mixed sizes (gradients, discs, stripes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        height, width = int(rng.integers(96, 320)), int(rng.integers(96, 320))
        y, x = np.mgrid[0:height, 0:width]
        image = np.stack(
            [
                255 * x / width,
                127 + 127 * np.sin(y / rng.uniform(5, 20)),
                255 * ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(height, width) / 3) ** 2),
            ],
            axis=-1,
        ).astype(np.uint8)
        suffix = ".jpg" if i % 2 else ".png"
        Image.fromarray(image).save(folder / f"smoke_{i:02d}{suffix}")
    return folder
