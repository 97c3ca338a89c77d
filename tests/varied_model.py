"""A tiny SAN whose label maps vary over an image, and the model input of SAN's evaluation resize, computed
here independently of ``san.transforms`` (for tests that check what the labeling job infers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

import san


def model_input(image: np.ndarray, short_side: int, max_size: int = 2560) -> torch.Tensor:
    """``[3, h, w]`` uint8: detectron2's ResizeShortestEdge (PIL bilinear, sizes rounded half up)."""
    height, width = image.shape[:2]
    scale = min(short_side / min(height, width), max_size / max(height, width))
    size = (int(width * scale + 0.5), int(height * scale + 0.5))
    return torch.from_numpy(np.array(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))).permute(2, 0, 1)


def varied_tiny_model() -> san.SAN:
    """san_tiny whose side adapter and recognition head are re-drawn at std 0.3: a freshly initialised
    model gives every pixel of an image the same class, which would hide a wrong input size."""
    torch.manual_seed(0)
    model = san.build_san("san_tiny").eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("side_adapter.", "clip_recognition.")) and parameter.ndim > 1:
                parameter.normal_(0, 0.3, generator=generator)
    return model


def write_photos(folder: Path) -> dict[str, np.ndarray]:
    """Three scikit-image photos (astronaut, coffee, chelsea) as PNGs in a new ``folder``: ``{file name: pixels}``."""
    photos = {"astronaut.png": data.astronaut(), "coffee.png": data.coffee(), "chelsea.png": data.chelsea()}
    folder.mkdir()
    for name, photo in photos.items():
        Image.fromarray(photo).save(folder / name)
    return photos
