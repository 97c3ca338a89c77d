"""Generated inputs for the labeling-job tests: good images of mixed sizes and modes, real photos
from scikit-image, and the bad inputs a real folder contains."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

VOCABULARY = "# test vocabulary\nperson: man, woman\ncat\ncoffee cup: mug\nsky\ngrass\n"


def _pattern(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([255 * x / width, 127 + 127 * np.sin(y / rng.uniform(4, 12)), 255 * ((x + y) % 40 < 20)], axis=-1)
    return image.astype(np.uint8)


def write_good_images(folder: Path, count: int = 24, seed: int = 0) -> list[Path]:
    """``count`` decodable images: RGB JPEG/PNG, grayscale, RGBA, palette, 16-bit PNG, CMYK JPEG,
    and three real photos; sizes from 40 to 300 pixels, in nested folders."""
    rng = np.random.default_rng(seed)
    paths = []
    photos = {"astronaut.jpg": skdata.astronaut(), "coffee.png": skdata.coffee(), "chelsea.jpg": skdata.chelsea()}
    for name, pixels in photos.items():
        path = folder / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((pixels.shape[1] // 3, pixels.shape[0] // 3)).save(path)
        paths.append(path)
    modes = ["RGB-jpg", "RGB-png", "L", "RGBA", "P", "I;16", "CMYK"]
    for i in range(count - len(photos)):
        height, width = int(rng.integers(40, 300)), int(rng.integers(40, 300))
        rgb = Image.fromarray(_pattern(rng, height, width))
        mode = modes[i % len(modes)]
        sub = folder / ("nested/deeper" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        if mode == "RGB-jpg":
            path = sub / f"img_{i:02d}.jpg"
            rgb.save(path, quality=90)
        elif mode == "CMYK":
            path = sub / f"img_{i:02d}_cmyk.jpg"
            rgb.convert("CMYK").save(path)
        elif mode == "I;16":
            path = sub / f"img_{i:02d}_16bit.png"
            gray16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
            Image.fromarray(gray16).save(path)
        else:
            path = sub / f"img_{i:02d}_{mode.lower().replace('-png', '')}.png"
            (rgb if mode == "RGB-png" else rgb.convert(mode)).save(path)
        paths.append(path)
    return paths


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """Bad inputs, mapped to a fragment of the reason the errors table must give."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    (folder / "random_bytes.jpg").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    buffer = io.BytesIO()
    Image.fromarray(_pattern(rng, 120, 160)).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    Image.new("RGB", (1, 1)).save(folder / "tiny_1x1.png")
    (folder / "folder_named.jpg").mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("not an image\n")
    reasons = {
        "random_bytes.jpg": "not an image",
        "truncated.jpg": "truncated",
        "empty.png": "empty file",
        "tiny_1x1.png": "too small",
        "folder_named.jpg": "is a directory",
        "notes.txt": "not an image file",
    }
    try:  # a name that is not UTF-8 (it stopped the whole run), shown with its byte escaped
        with open(os.fsencode(folder) + b"/bad\xff.jpg", "wb") as file:
            file.write(buffer.getvalue())
        reasons["bad\\xff.jpg"] = "not valid UTF-8"
    except OSError:  # a filesystem that refuses such names (macOS): nothing to test there
        pass
    return reasons
