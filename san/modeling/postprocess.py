"""SAN's post-processing: one image's mask and class logits -> class scores at an output size, or only the
best class per pixel, computed in bands of output columns so that memory stays bounded for any output size
and vocabulary."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Elements of one chunk of upsampled mask logits (bounds peak memory; sets how many queries a chunk holds).
POSTPROCESS_CHUNK_ELEMENTS = 1 << 26
# Class scores (plus one chunk of upsampled masks) held at once per band of output columns in best_class
# (64 MiB in float32).
BAND_ELEMENTS = 1 << 24


def semantic_scores(
    mask_preds: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    max_elements: int = BAND_ELEMENTS,
) -> torch.Tensor:
    """One image's class scores ``[C, H_out, W_out]`` from mask logits ``[Q, h, w]`` and class logits
    ``[Q, C + 1]``, as SAN's post-processing computes them.

    Masks are upsampled to the padded size, cropped to the image, resized to the output size (bilinear,
    align_corners=False) and combined as ``sum_q softmax(logits_q)[c] * sigmoid(mask_q)`` (background
    column dropped after the softmax). The sum runs over chunks of queries, in bands of output columns
    (see :func:`column_bands`), exactly as :func:`best_class` computes it.
    """
    probs, masks = _probabilities_and_masks(mask_preds, mask_logits, padded_size, image_size)
    chunk = _queries_per_chunk(padded_size, output_size)
    scores = masks.new_empty(probs.shape[1], *output_size)
    for columns in column_bands(probs.shape[1], padded_size, output_size, max_elements):
        scores[:, :, columns] = _scores(probs, masks, chunk, output_size, columns)
    return scores


def best_class(
    mask_preds: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    max_elements: int = BAND_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best score ``[H_out, W_out]`` and its class index ``[H_out, W_out]`` (uint8 for up to 256 classes,
    else int32): exactly
    ``semantic_scores(..., max_elements).max(dim=0)``, ties to the lowest index, without ever holding the
    scores of more than one band of output columns (``semantic_scores`` holds ``C * H_out * W_out`` floats:
    4 GiB for 10 classes on a 12000x9000 photo).
    """
    probs, masks = _probabilities_and_masks(mask_preds, mask_logits, padded_size, image_size)
    chunk = _queries_per_chunk(padded_size, output_size)
    best = masks.new_empty(output_size)
    index_dtype = torch.uint8 if probs.shape[1] <= 256 else torch.int32
    index = torch.empty(output_size, dtype=index_dtype, device=masks.device)
    for columns in column_bands(probs.shape[1], padded_size, output_size, max_elements):
        value, arg = _scores(probs, masks, chunk, output_size, columns).max(dim=0)
        best[:, columns] = value
        index[:, columns] = arg
    return best, index


def column_bands(
    num_classes: int, padded_size: tuple[int, int], output_size: tuple[int, int], max_elements: int
) -> list[slice]:
    """The bands of output columns the scores are computed in: each holds at most ``max_elements`` class
    scores and upsampled masks (at least one column).

    Both :func:`semantic_scores` and :func:`best_class` use these bands, so that their results agree bit
    for bit: PyTorch's kernels (bilinear resize, sigmoid, matrix products) round the same element
    differently in tensors of different shapes, so a band computed alone can differ from the same columns
    of a whole map in the last bit.
    """
    height, width = output_size
    band = max(1, max_elements // ((num_classes + _queries_per_chunk(padded_size, output_size)) * height))
    return [slice(start, min(start + band, width)) for start in range(0, width, band)]


def _queries_per_chunk(padded_size: tuple[int, int], output_size: tuple[int, int]) -> int:
    (hp, wp), (ho, wo) = padded_size, output_size
    return max(1, POSTPROCESS_CHUNK_ELEMENTS // (hp * wp + ho * wo))


def _probabilities_and_masks(
    mask_preds: torch.Tensor, mask_logits: torch.Tensor, padded_size: tuple[int, int], image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``[Q, C]`` (background dropped after the softmax) and the mask logits upsampled
    to the padded size and cropped to the image, ``[Q, h, w]``; float32 (float64 for float64 inputs)."""
    dtype = torch.promote_types(mask_preds.dtype, torch.float32)  # never post-process in half precision
    probs = mask_logits.to(dtype).softmax(dim=-1)[:, :-1]
    masks = F.interpolate(mask_preds.to(dtype)[None], size=padded_size, mode="bilinear", align_corners=False)[0]
    return probs, masks[:, : image_size[0], : image_size[1]]


def _scores(
    probs: torch.Tensor, masks: torch.Tensor, chunk: int, output_size: tuple[int, int], columns: slice
) -> torch.Tensor:
    """``sum_q probs[q, c] * sigmoid(mask_q resized to output_size)`` for the output ``columns``:
    ``[C, H_out, W_cols]``, ``chunk`` queries at a time."""
    rows = _LinearResize(masks.shape[1], output_size[0], masks.device, masks.dtype)
    cols = _LinearResize(masks.shape[2], output_size[1], masks.device, masks.dtype, columns)
    scores = torch.zeros(probs.shape[1], output_size[0], cols.size, device=masks.device, dtype=masks.dtype)
    for start in range(0, masks.shape[0], chunk):
        m = rows(cols(masks[start : start + chunk], dim=2), dim=1)
        scores += torch.einsum("qc,qhw->chw", probs[start : start + chunk], m.sigmoid())
    return scores


class _LinearResize:
    """Bilinear resize along one axis (align_corners=False, as ``F.interpolate``), for the output positions
    ``positions`` only.

    Hand-written because ``F.interpolate`` computes whole rows: a band of output columns would need the
    resize of the full width for every band. Each output element is ``x[i0] * w0 + x[i1] * w1``, with
    ``F.interpolate``'s source positions and weights (computed in float64).
    """

    def __init__(
        self, size_in: int, size_out: int, device: torch.device, dtype: torch.dtype, positions: slice = slice(None)
    ):
        span = range(size_out)[positions]
        self.size = len(span)
        self.identity = size_in == size_out
        self.offset = span.start
        position = torch.arange(span.start, span.stop, dtype=torch.float64, device=device)
        source = ((position + 0.5) * (size_in / size_out) - 0.5).clamp(min=0)
        self.first = source.floor().long().clamp(max=size_in - 1)
        self.second = (self.first + 1).clamp(max=size_in - 1)
        weight = (source - self.first).clamp(0, 1)
        self.first_weight = (1 - weight).to(dtype)
        self.second_weight = weight.to(dtype)

    def __call__(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """``x`` resized along ``dim`` to the selected output positions."""
        if self.identity:
            return x.narrow(dim, self.offset, self.size)
        shape = [-1 if d == dim % x.ndim else 1 for d in range(x.ndim)]
        out = x.index_select(dim, self.first).mul_(self.first_weight.view(shape))
        return out.add_(x.index_select(dim, self.second).mul_(self.second_weight.view(shape)))
