"""Image resizing as SAN's evaluation does it (detectron2's ``ResizeShortestEdge``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


def shortest_edge_size(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """Output ``(height, width)`` scaling the short side to ``short_side`` while the long side stays
    within ``max_size`` (detectron2 ``ResizeShortestEdge.get_output_shape``, rounding half up).

    Each side is at least 1 pixel: a strip such as 12000x2 (short side 640, long side 2560) would round
    its short side to 0, which detectron2 leaves to fail; here it becomes 1 x 2560."""
    scale = short_side / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resize_shortest_edge(
    image: np.ndarray,
    short_side: int = 640,
    max_size: int = 2560,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> np.ndarray:
    """Resize an RGB uint8 image ``[H, W, 3]`` (or a label map ``[H, W]``, with ``Image.Resampling.NEAREST``)
    with PIL so that its short side is ``short_side`` and its long side at most ``max_size``, as SAN's
    test-time mapper and training augmentation do (detectron2 ``ResizeTransform``).

    Returns the array unchanged (not copied) when it already has the target size.
    """
    height, width = image.shape[:2]
    size = shortest_edge_size(height, width, short_side, max_size)
    if size == (height, width):
        return image
    return np.array(Image.fromarray(image).resize((size[1], size[0]), resample))


@dataclass(frozen=True)
class ResizeShortestEdge:
    """The model's input size rule, as one value that the labeling job's decode stage applies and the
    predictor checks: short side ``short_side``, long side at most ``max_size`` (SAN's evaluation: 640, 2560)."""

    short_side: int = 640
    max_size: int = 2560

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` that an image of ``height`` x ``width`` is resized to."""
        return shortest_edge_size(height, width, self.short_side, self.max_size)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``image`` ``[H, W, 3]`` uint8 resized with PIL bilinear (see :func:`resize_shortest_edge`)."""
        return resize_shortest_edge(image, self.short_side, self.max_size)

    def resize_image(self, image: Image.Image) -> Image.Image:
        """A PIL RGB ``image`` resized as :meth:`__call__` resizes its array (the same pixels, without the copies
        to an array and back); ``image`` itself when it has the size already."""
        height, width = self.output_size(image.height, image.width)
        if (height, width) == (image.height, image.width):
            return image
        return image.resize((width, height), Image.Resampling.BILINEAR)


#: SAN's evaluation resize (detectron2 ``INPUT.MIN_SIZE_TEST`` 640, ``INPUT.MAX_SIZE_TEST`` 2560).
SAN_EVAL_RESIZE = ResizeShortestEdge()
