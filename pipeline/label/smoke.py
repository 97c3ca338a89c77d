"""Generated images for ``--smoke-test``: see the whole flow without data or weights.

They are written once into a per-user cache folder (:func:`smoke_images`), never into a run's output folder,
so that input listing and the output folder's checks need not know about them; reviews and exports of a smoke
run read them from there, as any run's input.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# Images written: a new folder name when what is generated changes, so that no cache holds stale ones.
SMOKE_FOLDER = "smoke-images-v1"


def smoke_images_folder() -> Path:
    """``$XDG_CACHE_HOME/san-labeler/smoke-images-v1`` (default ``~/.cache``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache, "san-labeler", SMOKE_FOLDER)


def smoke_images() -> Path:
    """The folder of the smoke test's images, written on first use (whole or not at all: generated into a
    temporary folder beside it and renamed, so that jobs started together never see half of them)."""
    folder = smoke_images_folder()
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write_smoke_images(staging)
        staging.rename(folder)
    except OSError:
        if not folder.is_dir():  # another job's rename won the race: its images are the same
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


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
