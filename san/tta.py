"""Test-time augmentation as SAN's official evaluation runs it (``TEST.AUG``, Mask2Former's
``SemanticSegmentorWithTTA`` with detectron2's ``DatasetMapperTTA``); its passes are
:class:`san.settings.TestTimeAugmentation`.

The model input (the image already resized by SAN's evaluation rule, short side 640) is resized again so
that its short side is each of ``min_sizes`` (long side at most ``max_size``), and, with ``flip``, each of
those is also flipped horizontally. Every pass predicts the class scores at the image's original size
(a flipped pass's scores flipped back); the scores are averaged in pass order, and a pixel's label is the
class with the best average score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .modeling.postprocess import BAND_ELEMENTS, ImageOutputs, column_bands, semantic_scores
from .transforms import ResizeShortestEdge

__all__ = ["average_best_class", "pass_input"]

# Scores of all passes' prompts and of the running sum held at once for a chunk of output columns
# (512 MiB in float32): beyond it, the output is averaged chunk by chunk.
CHUNK_ELEMENTS = 1 << 27


def pass_input(image: np.ndarray, resize: ResizeShortestEdge, flipped: bool) -> torch.Tensor:
    """The model input ``[3, h, w]`` uint8 of one pass (of :attr:`san.settings.TestTimeAugmentation.passes`) over
    the RGB uint8 image ``[H, W, 3]``."""
    image = resize(image)
    if flipped:
        image = image[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def average_best_class(
    passes: Sequence[tuple[ImageOutputs, bool]],
    output_size: tuple[int, int],
    reduce: Callable[[torch.Tensor], torch.Tensor],
    max_elements: int = BAND_ELEMENTS,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best average score ``[H, W]`` and its class ``[H, W]`` (int64) over the ``(outputs, flipped)``
    passes of one image, at ``output_size`` ``(H, W)``.

    ``reduce`` maps a pass's prompt scores ``[P, H, w]`` to class scores ``[C, H, w]`` (synonyms). The
    average is ``(s_1 + s_2 + ... + s_n) / n`` of the passes' class scores (a flipped pass's flipped back),
    summed in pass order, bit for bit what :func:`semantic_scores` of each pass would give; it is taken one
    chunk of output columns at a time, so memory stays bounded for any image size and vocabulary.
    """
    height, width = output_size
    first = passes[0][0]
    num_prompts = first.mask_logits.shape[1] - 1
    band = column_bands(first.mask_preds.shape[0], num_prompts, output_size, max_elements)[0]
    band_width = band.stop - band.start
    # Chunks of whole bands, so that the unflipped passes compute no band twice.
    chunk = band_width * max(1, chunk_elements // (2 * num_prompts * height * band_width))
    best = torch.empty(output_size, dtype=torch.float32, device=first.mask_preds.device)
    index = torch.empty(output_size, dtype=torch.int64, device=first.mask_preds.device)
    for start in range(0, width, chunk):
        stop = min(start + chunk, width)
        total = _pass_scores(*passes[0], output_size, (start, stop), reduce, max_elements)
        for outputs, flipped in passes[1:]:
            total += _pass_scores(outputs, flipped, output_size, (start, stop), reduce, max_elements)
        value, arg = (total / len(passes)).max(dim=0)
        best[:, start:stop], index[:, start:stop] = value, arg
    return best, index


def _pass_scores(
    outputs: ImageOutputs,
    flipped: bool,
    output_size: tuple[int, int],
    chunk: tuple[int, int],
    reduce: Callable[[torch.Tensor], torch.Tensor],
    max_elements: int,
) -> torch.Tensor:
    """One pass's class scores ``[C, H, stop - start]`` in the output columns ``chunk`` = ``(start, stop)``,
    a flipped pass's flipped back (its own columns ``width - stop .. width - start``, reversed)."""
    start, stop = chunk
    width = output_size[1]
    columns = slice(width - stop, width - start) if flipped else slice(start, stop)
    scores = reduce(
        semantic_scores(
            outputs.mask_preds,
            outputs.mask_logits,
            outputs.padded_size,
            outputs.image_size,
            output_size,
            max_elements,
            columns,
        )
    )
    return scores.flip(-1) if flipped else scores
