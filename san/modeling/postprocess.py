"""SAN's post-processing: one image's mask and class logits -> class scores at an output size, or only the
best class per pixel, computed in bands of output columns so that memory stays bounded for any output size
and vocabulary; and an image's vocabulary-free outputs (:class:`ImageRegions`) with the one product that
gives their class logits (:func:`region_logits`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cpu_kernels import inference_linear

# Class scores plus upsampled masks of one band of output columns (32 MiB in float32).
BAND_ELEMENTS = 1 << 23


@dataclass
class ImageRegions:
    """One image's last-level model outputs before any vocabulary: mask logits ``mask_preds`` ``[Q, h, w]`` (at
    1/16 of the padded input), recognition embeddings ``mask_embs`` ``[Q, D]``, the padded input size
    ``padded_size`` ``(Hp, Wp)`` and the image's size within it ``image_size`` ``(Hi, Wi)``. With a
    classifier they become :class:`ImageOutputs` (:meth:`outputs`)."""

    mask_preds: torch.Tensor
    mask_embs: torch.Tensor
    padded_size: tuple[int, int]
    image_size: tuple[int, int]

    def outputs(self, classifier: torch.Tensor) -> ImageOutputs:
        """The :class:`ImageOutputs` for the classifier weights ``[P + 1, D]`` (background last)."""
        logits = region_logits(self.mask_embs, classifier)
        return ImageOutputs(self.mask_preds, logits, self.padded_size, self.image_size)


def region_logits(mask_embs: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Class logits ``[..., Q, P + 1]`` of recognition embeddings ``[..., Q, D]`` for the scaled classifier
    weights ``[P + 1, D]`` (:meth:`~san.modeling.model.SAN.classifier`): the one product in SAN that sees the
    vocabulary, computed in the embeddings' dtype."""
    return torch.einsum("...qd,nd->...qn", mask_embs, classifier.to(mask_embs.dtype))


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
    resized = _ResizedMasks.of(mask_preds, mask_logits, padded_size, image_size, output_size)
    wanted = range(output_size[1])[columns if columns is not None else slice(None)]
    scores = resized.rows.new_empty(resized.probs.shape[1], output_size[0], len(wanted))
    for band in column_bands(*resized.probs.shape, output_size, max_elements):
        start, stop = max(band.start, wanted.start), min(band.stop, wanted.stop)
        if start < stop:
            band_scores = resized.scores(band)
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
    resized = _ResizedMasks.of(mask_preds, mask_logits, padded_size, image_size, output_size)
    best = resized.rows.new_empty(output_size)
    index_dtype = torch.uint8 if resized.probs.shape[1] <= 256 else torch.int32
    index = torch.empty(output_size, dtype=index_dtype, device=mask_preds.device)
    for columns in column_bands(*resized.probs.shape, output_size, max_elements):
        value, arg = resized.scores(columns).max(dim=0)
        best[:, columns] = value
        index[:, columns] = arg
    return best, index


def column_bands(num_queries: int, num_classes: int, output_size: tuple[int, int], max_elements: int) -> list[slice]:
    """The bands of output columns the scores are computed in: each holds at most ``max_elements`` class
    scores and resized masks (at least one column).

    Both :func:`semantic_scores` and :func:`best_class` use these bands, so that their results agree bit
    for bit: PyTorch's kernels (matrix products, sigmoid) round the same element differently in tensors of
    different shapes, so a band computed alone can differ from the same columns of a whole map in the last
    bit.
    """
    height, width = output_size
    band = max(1, max_elements // ((num_queries + num_classes) * height))
    return [slice(start, min(start + band, width)) for start in range(0, width, band)]


def resize_weights(low: int, padded: int, image: int, output: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The ``[output, low]`` matrix ``R`` such that ``R @ x`` resizes ``low`` samples as SAN's post-processing
    does along one axis: bilinear (align_corners=False) to ``padded``, the first ``image`` kept, bilinear to
    ``output``. The weights are ``F.interpolate``'s own (applied to the identity, in float64)."""
    identity = torch.eye(low, dtype=torch.float64, device=device)[None, None]
    weights = F.interpolate(identity, size=(padded, low), mode="bilinear", align_corners=False)[0, 0, :image]
    if output != image:
        weights = F.interpolate(weights[None, None], size=(output, low), mode="bilinear", align_corners=False)[0, 0]
    return weights.to(dtype)


@dataclass
class _ResizedMasks:
    """One image's class probabilities ``probs`` ``[Q, C]`` (background dropped after the softmax), its mask
    logits resized along the rows to the output height, ``rows`` ``[Q, H_out, w]``, and the column weights
    ``columns`` ``[W_out, w]`` (:func:`resize_weights`); float32 (float64 for float64 inputs).

    Both resizes are matrix products with the interpolation weights (a few GFLOP at 640x640, where the upsampled
    masks would take a full-size intermediate and several passes over it), so a band of output columns never
    needs more than its own masks."""

    probs: torch.Tensor
    rows: torch.Tensor
    columns: torch.Tensor

    @classmethod
    def of(
        cls,
        mask_preds: torch.Tensor,
        mask_logits: torch.Tensor,
        padded_size: tuple[int, int],
        image_size: tuple[int, int],
        output_size: tuple[int, int],
    ) -> _ResizedMasks:
        dtype = torch.promote_types(mask_preds.dtype, torch.float32)  # never post-process in half precision
        device = mask_preds.device
        low_height, low_width = mask_preds.shape[1:]
        with torch.autocast(device.type, enabled=False):
            probs = mask_logits.to(dtype).softmax(dim=-1)[:, :-1]
            row_weights = resize_weights(low_height, padded_size[0], image_size[0], output_size[0], dtype, device)
            rows = torch.matmul(row_weights, mask_preds.to(dtype))
        column_weights = resize_weights(low_width, padded_size[1], image_size[1], output_size[1], dtype, device)
        return cls(probs, rows, column_weights)

    def scores(self, band: slice) -> torch.Tensor:
        """``sum_q probs[q, c] * sigmoid(mask_q resized)`` in the output columns ``band``: ``[C, H_out, B]``."""
        with torch.autocast(self.rows.device.type, enabled=False):
            masks = inference_linear(self.rows, self.columns[band]).sigmoid_()
            return torch.einsum("qc,qhb->chb", self.probs, masks)
