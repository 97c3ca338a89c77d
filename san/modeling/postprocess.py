"""SAN's post-processing: one image's mask and class logits -> class scores at an output size, or only the
best class per pixel, computed in bands of output columns so that memory stays bounded for any output size
and vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Class scores plus upsampled masks of one band of output columns (32 MiB in float32).
BAND_ELEMENTS = 1 << 23


@dataclass
class ImageOutputs:
    """One image's last-level model outputs, all that post-processing needs: mask logits ``mask_preds``
    ``[Q, h, w]``, class logits ``mask_logits`` ``[Q, C + 1]`` (background last), the padded input size and
    the image's size within it (``(H, W)`` each)."""

    mask_preds: torch.Tensor
    mask_logits: torch.Tensor
    padded_size: tuple[int, int]
    image_size: tuple[int, int]


def semantic_scores(
    mask_preds: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    max_elements: int = BAND_ELEMENTS,
    columns: slice | None = None,
) -> torch.Tensor:
    """One image's class scores ``[C, H_out, W_out]`` from mask logits ``[Q, h, w]`` and class logits
    ``[Q, C + 1]``, as SAN's post-processing computes them; with ``columns`` (a slice of step 1), only
    those output columns: ``[C, H_out, len(columns)]``, bit for bit the same columns of the whole.

    Masks are upsampled to the padded size, cropped to the image, resized to the output size (bilinear,
    align_corners=False) and combined as ``sum_q softmax(logits_q)[c] * sigmoid(mask_q)`` (background
    column dropped after the softmax), in bands of output columns (see :func:`column_bands`), exactly as
    :func:`best_class` computes it.
    """
    probs, masks = _probabilities_and_masks(mask_preds, mask_logits, padded_size, image_size)
    wanted = range(output_size[1])[columns if columns is not None else slice(None)]
    scores = masks.new_empty(probs.shape[1], output_size[0], len(wanted))
    for band in column_bands(*probs.shape, output_size, max_elements):
        start, stop = max(band.start, wanted.start), min(band.stop, wanted.stop)
        if start < stop:
            band_scores = _scores(probs, masks, output_size, band).transpose(1, 2)
            scores[:, :, start - wanted.start : stop - wanted.start] = band_scores[
                :, :, start - band.start : stop - band.start
            ]
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
    else int32): exactly ``semantic_scores(..., max_elements).max(dim=0)``, ties to the lowest index, without
    ever holding the scores of more than one band of output columns (``semantic_scores`` holds
    ``C * H_out * W_out`` floats: 4 GiB for 10 classes on a 12000x9000 photo).
    """
    probs, masks = _probabilities_and_masks(mask_preds, mask_logits, padded_size, image_size)
    best = masks.new_empty(output_size)
    index_dtype = torch.uint8 if probs.shape[1] <= 256 else torch.int32
    index = torch.empty(output_size, dtype=index_dtype, device=masks.device)
    for columns in column_bands(*probs.shape, output_size, max_elements):
        value, arg = _scores(probs, masks, output_size, columns).max(dim=0)
        best[:, columns] = value.T
        index[:, columns] = arg.T
    return best, index


def column_bands(num_queries: int, num_classes: int, output_size: tuple[int, int], max_elements: int) -> list[slice]:
    """The bands of output columns the scores are computed in: each holds at most ``max_elements`` class
    scores and upsampled masks (at least one column).

    Both :func:`semantic_scores` and :func:`best_class` use these bands, so that their results agree bit
    for bit: PyTorch's kernels (bilinear resize, sigmoid, matrix products) round the same element
    differently in tensors of different shapes, so a band computed alone can differ from the same columns
    of a whole map in the last bit.
    """
    height, width = output_size
    band = max(1, max_elements // ((num_queries + num_classes) * height))
    return [slice(start, min(start + band, width)) for start in range(0, width, band)]


def _probabilities_and_masks(
    mask_preds: torch.Tensor, mask_logits: torch.Tensor, padded_size: tuple[int, int], image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``[Q, C]`` (background dropped after the softmax) and the mask logits upsampled
    to the padded size and cropped to the image, transposed: ``[Q, w, h]`` (a band of columns is then a
    gather of rows); float32 (float64 for float64 inputs)."""
    dtype = torch.promote_types(mask_preds.dtype, torch.float32)  # never post-process in half precision
    probs = mask_logits.to(dtype).softmax(dim=-1)[:, :-1]
    masks = F.interpolate(mask_preds.to(dtype)[None], size=padded_size, mode="bilinear", align_corners=False)[0]
    return probs, masks[:, : image_size[0], : image_size[1]].transpose(1, 2).contiguous()


def _scores(probs: torch.Tensor, masks: torch.Tensor, output_size: tuple[int, int], columns: slice) -> torch.Tensor:
    """``sum_q probs[q, c] * sigmoid(mask_q resized to output_size)`` for the output ``columns``, from
    transposed masks ``[Q, w, h]``: ``[C, W_cols, H_out]`` (transposed too)."""
    m = _resize_columns(masks, output_size[1], columns)
    if output_size[0] != masks.shape[2]:
        m = F.interpolate(m[None], size=(m.shape[1], output_size[0]), mode="bilinear", align_corners=False)[0]
    return torch.einsum("qc,qwh->cwh", probs, m.sigmoid())


def _resize_columns(masks: torch.Tensor, width: int, columns: slice) -> torch.Tensor:
    """Transposed masks ``[q, w, h]`` resized to ``width`` columns (bilinear, align_corners=False, as
    ``F.interpolate``), only the output ``columns``: ``[q, W_cols, h]``.

    Hand-written because ``F.interpolate`` resizes whole rows: every band of columns would resize the full
    width again. Each output column is ``x[:, i0] * w0 + x[:, i1] * w1``, with ``F.interpolate``'s source
    positions and weights (computed in float64).
    """
    span = range(width)[columns]
    if masks.shape[1] == width:
        return masks[:, span.start : span.stop]
    position = torch.arange(span.start, span.stop, dtype=torch.float64, device=masks.device)
    source = ((position + 0.5) * (masks.shape[1] / width) - 0.5).clamp(min=0)
    first = source.floor().long().clamp(max=masks.shape[1] - 1)
    weight = (source - first).clamp(0, 1).to(masks.dtype)[:, None]
    second = (first + 1).clamp(max=masks.shape[1] - 1)
    return masks.index_select(1, first).mul_(1 - weight).add_(masks.index_select(1, second).mul_(weight))
