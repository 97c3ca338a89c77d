"""SAN's training augmentation (the official ``MaskFormerSemanticDatasetMapper``), in numpy/PIL.

Resize (random short side), crop, SSD colour jitter, flip and pad, on an RGB uint8 image ``[H, W, 3]``
and its label map ``[H, W]``; all randomness comes from the ``numpy.random.Generator`` passed in. The
official settings of each step: ``docs/training.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..transforms import resize_shortest_edge

__all__ = [
    "OFFICIAL_SHORT_EDGES",
    "TrainAugmentation",
    "color_aug_ssd",
    "official_short_edges",
    "pad_to",
    "random_crop",
    "random_flip",
]


def official_short_edges(crop: int) -> tuple[int, ...]:
    """The official recipe's short sides for a ``crop x crop`` crop: ``0.5..1.5 x crop`` in steps of ``0.1 x crop``."""
    return tuple(int(x * 0.1 * crop) for x in range(5, 16))


OFFICIAL_SHORT_EDGES = official_short_edges(640)


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    crop_size: tuple[int, int],
    rng: np.random.Generator,
    single_category_max_area: float = 1.0,
    ignore: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """An ``crop_size = (h, w)`` crop (each side clipped to the image) at a uniform position.

    With ``single_category_max_area < 1`` a crop is redrawn (at most 10 draws, the last one kept) until
    it holds at least two labels and its largest class has fewer than that share of the non-ignored
    pixels (detectron2 ``RandomCrop_CategoryAreaConstraint``).
    """
    h, w = label.shape
    ch, cw = min(crop_size[0], h), min(crop_size[1], w)
    for _ in range(1 if single_category_max_area >= 1.0 else 10):
        y0 = int(rng.integers(h - ch + 1))
        x0 = int(rng.integers(w - cw + 1))
        if single_category_max_area >= 1.0:
            break
        values, counts = np.unique(label[y0 : y0 + ch, x0 : x0 + cw], return_counts=True)
        counts = counts[values != ignore]
        if len(counts) > 1 and counts.max() < counts.sum() * single_category_max_area:
            break
    return image[y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 HSV with H in degrees ``[0, 360)``, S and V in ``[0, 255]``."""
    rgb = image.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    s = np.where(v > 0, 255.0 * delta / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(delta, 1e-6)
    h = np.where(
        v == r, 60.0 * (g - b) / safe, np.where(v == g, 120.0 + 60.0 * (b - r) / safe, 240.0 + 60.0 * (r - g) / safe)
    )
    h = np.where(delta > 0, h % 360.0, 0.0)
    return np.stack([h, s, v], axis=-1).astype(np.float32)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_rgb_to_hsv`, rounded to uint8 RGB."""
    h, s, v = hsv[..., 0] / 60.0, hsv[..., 1] / 255.0, hsv[..., 2]
    c = v * s
    x = c * (1 - np.abs(h % 2 - 1))
    m = v - c
    zero = np.zeros_like(c)
    sector = np.floor(h).astype(np.int64) % 6
    choices = [(c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c), (c, zero, x)]
    rgb = np.zeros(hsv.shape, dtype=np.float32)
    for k, (r, g, b) in enumerate(choices):
        sel = sector == k
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=-1)
    return np.clip(np.rint(rgb + m[..., None]), 0, 255).astype(np.uint8)


def color_aug_ssd(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """SSD photometric distortion of an RGB uint8 image (Mask2Former's ``ColorAugSSDTransform``).

    Brightness (``+U(-delta, delta)``), then with probability 1/2 contrast, saturation, hue, else
    saturation, hue, contrast; each step applied with probability 1/2. ``hue_delta`` is in OpenCV's
    8-bit hue units (2 degrees). HSV arithmetic is done in float here rather than in OpenCV's 8-bit HSV,
    which the official code round-trips through (a sub-level rounding difference).
    """

    def contrast(img: np.ndarray) -> np.ndarray:
        return _convert(img, alpha=rng.uniform(*contrast_range)) if rng.integers(2) else img

    def saturation(img: np.ndarray) -> np.ndarray:
        if not rng.integers(2):
            return img
        hsv = _rgb_to_hsv(img)
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*saturation_range), 0, 255)
        return _hsv_to_rgb(hsv)

    def hue(img: np.ndarray) -> np.ndarray:
        if not rng.integers(2):
            return img
        hsv = _rgb_to_hsv(img)
        hsv[..., 0] = (hsv[..., 0] + 2.0 * int(rng.integers(-hue_delta, hue_delta + 1))) % 360.0
        return _hsv_to_rgb(hsv)

    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    if rng.integers(2):
        image = hue(saturation(contrast(image)))
    else:
        image = contrast(hue(saturation(image)))
    return image


def random_flip(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, prob: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip with probability ``prob``."""
    if rng.random() < prob:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def pad_to(
    image: np.ndarray, label: np.ndarray, size: tuple[int, int], image_value: int = 128, ignore: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right up to ``size = (h, w)`` (never crops): image with ``image_value``, labels with ``ignore``."""
    h, w = label.shape
    ph, pw = max(size[0], h), max(size[1], w)
    if (ph, pw) == (h, w):
        return image, label
    padded_image = np.full((ph, pw, 3), image_value, dtype=image.dtype)
    padded_label = np.full((ph, pw), ignore, dtype=label.dtype)
    padded_image[:h, :w] = image
    padded_label[:h, :w] = label
    return padded_image, padded_label


@dataclass(frozen=True)
class TrainAugmentation:
    """The official training augmentation (``docs/training.md``); ``crop_size`` ``(h, w)``.

    Calling it with ``(image [H, W, 3] uint8, label [H, W], rng)`` returns a contiguous
    ``(image [ch, cw, 3] uint8, label [ch, cw])`` of exactly ``crop_size`` (padded when smaller).
    """

    short_edge_lengths: Sequence[int] = OFFICIAL_SHORT_EDGES
    max_size: int = 2560
    crop_size: tuple[int, int] = (640, 640)
    single_category_max_area: float = 1.0
    color_aug: bool = True
    flip_prob: float = 0.5
    pad_value: int = 128
    ignore: int = 255

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if image.shape[:2] != label.shape:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
        short_side = int(self.short_edge_lengths[int(rng.integers(len(self.short_edge_lengths)))])
        image = resize_shortest_edge(image, short_side, self.max_size)
        label = resize_shortest_edge(label, short_side, self.max_size, Image.Resampling.NEAREST)
        image, label = random_crop(image, label, self.crop_size, rng, self.single_category_max_area, self.ignore)
        if self.color_aug:
            image = color_aug_ssd(image, rng)
        image, label = random_flip(image, label, rng, self.flip_prob)
        image, label = pad_to(image, label, self.crop_size, self.pad_value, self.ignore)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)
