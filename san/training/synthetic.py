"""A small synthetic dataset in the training folder layout (``docs/training.md``): coloured shapes on noise, for
smoke tests and overfitting checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SYNTHETIC_CLASSES", "write_synthetic_dataset"]

SYNTHETIC_CLASSES = ("red disc", "green square", "blue stripes", "yellow triangle", "gray background")


def write_synthetic_dataset(
    root: str | os.PathLike[str], count: int = 8, size: int = 96, seed: int = 0, num_classes: int = 5
) -> Path:
    """Write a small dataset in the folder layout: each image a noisy background (the last class) with a
    few coloured shapes of the other classes, for smoke tests and overfitting checks."""
    if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"num_classes must be 2..{len(SYNTHETIC_CLASSES)}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    classes = list(SYNTHETIC_CLASSES[: num_classes - 1]) + [SYNTHETIC_CLASSES[-1]]
    (root / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    colours = np.array([(220, 30, 30), (30, 200, 30), (40, 40, 230), (230, 220, 30)], dtype=np.float32)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    background = num_classes - 1
    for i in range(count):
        image = np.full((size, size, 3), 128.0, dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
        label = np.full((size, size), background, dtype=np.uint8)
        for c in rng.permutation(num_classes - 1)[: int(rng.integers(1, num_classes))]:
            r = rng.uniform(0.15, 0.3) * size
            cy, cx = rng.uniform(r, size - r, 2)
            if c == 0:
                region = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            elif c == 1:
                region = (abs(yy - cy) < r) & (abs(xx - cx) < r)
            elif c == 2:
                region = (abs(yy - cy) < r) & (abs(xx - cx) < r) & ((xx // 4) % 2 == 0)
            else:
                region = (yy > cy - r) & (yy - (cy - r) > 2 * abs(xx - cx)) & (yy < cy + r)
            image[region] = colours[c] + rng.normal(0, 12, (int(region.sum()), 3))
            label[region] = c
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"img_{i:04d}.jpg", quality=95)
        Image.fromarray(label).save(root / "labels" / f"img_{i:04d}.png")
    return root
