"""The SAN model: CLIP feature extractor, side adapter, recognition head and text classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from ..config import SANConfig, get_preset
from .clip import ClipFeatureExtractor, RecognitionHead, build_clip, load_pretrained_clip
from .cpu_kernels import cpu_inference_kernels
from .postprocess import ImageOutputs, ImageRegions, best_class, region_logits, semantic_scores
from .side_adapter import SideAdapter
from .text_classifier import TextClassifier, check_vocabulary

Result = TypeVar("Result")
# CLIP parameters SAN trains (CLIP_FROZEN_EXCLUDE) plus the classifier's background embedding.
TRAINABLE_CLIP_PARAMETERS = ("clip_features.positional_embedding", "text_classifier.bg_embed")


@dataclass
class SANOutput:
    """Per decoded level (eval: only the last): mask logits ``[B, Q, h, w]`` at the side grid,
    mask embeddings ``[B, Q, D]`` and class logits ``[B, Q, C + 1]`` (background last)."""

    mask_preds: list[torch.Tensor]
    mask_embs: list[torch.Tensor]
    mask_logits: list[torch.Tensor]


class SAN(nn.Module):
    """Side Adapter Network (Xu et al., CVPR 2023) for open-vocabulary semantic segmentation."""

    def __init__(self, config: SANConfig, clip_model: CLIP | None = None):
        super().__init__()
        self.config = config
        clip_model = clip_model if clip_model is not None else build_clip(config.clip)
        visual = clip_model.visual
        k = config.clip.feature_last_layer
        self.clip_features = ClipFeatureExtractor(visual, k)
        self.clip_recognition = RecognitionHead(visual, k, config.rec_downsample)
        self.side_adapter = SideAdapter(config.side_adapter, self.clip_features.width)
        self.text_classifier = TextClassifier(clip_model, config.clip.template_set)
        mean = torch.tensor([255.0 * m for m in config.pixel_mean], dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor([255.0 * s for s in config.pixel_std], dtype=torch.float32).view(3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.freeze_clip()
        num_bias_heads = config.side_adapter.attn_bias.num_heads
        if num_bias_heads not in (1, self.clip_recognition.num_heads):
            raise ValueError(
                f"attention-bias heads ({num_bias_heads}) must be 1 or CLIP's head count "
                f"({self.clip_recognition.num_heads})"
            )

    def freeze_clip(self) -> None:
        """Freeze CLIP as SAN trains it: everything but the visual positional embedding (and the
        learnable background embedding) stays fixed; the side adapter is trainable."""
        for name, param in self.named_parameters():
            if name.startswith(("clip_features.", "clip_recognition.", "text_classifier.")):
                param.requires_grad_(name in TRAINABLE_CLIP_PARAMETERS)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def image_trunk(self) -> list[nn.Module | nn.Parameter]:
        """What carries the image work: CLIP's patch embedding and blocks (features and recognition),
        the side adapter's ViT, queries and fusion layers. The text classifier, the mask decoder and the
        recognition head's ``ln_post``/``proj`` (small, and where precision decides the classes) are not
        part of it."""
        side = self.side_adapter
        return [
            self.clip_features,
            self.clip_recognition.resblocks,
            side.vit,
            side.query_embed,
            side.query_pos_embed,
            side.fusion_layers,
        ]

    def cast_image_trunk(self, dtype: torch.dtype) -> SAN:
        """Cast the :meth:`image_trunk` to ``dtype``, in place (like ``.to``), for fast reduced-precision
        inference without autocast (on CPUs with bf16 matrix units): activations stay in ``dtype`` from
        block to block; the mask decoder, ``ln_post``/``proj``, the class logits and post-processing run in
        float32. Returns the model."""
        with torch.no_grad():
            for part in self.image_trunk():
                if isinstance(part, nn.Parameter):
                    part.data = part.data.to(dtype)
                else:
                    part.to(dtype)
        return self

    def normalize_and_pad(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 images ``[3, H_i, W_i]`` -> normalised batch ``[B, 3, Hp, Wp]``, zero-padded at the
        bottom/right to the largest size rounded up to ``size_divisibility``."""
        div = self.config.size_divisibility
        hp = -(-max(im.shape[1] for im in images) // div) * div
        wp = -(-max(im.shape[2] for im in images) // div) * div
        batch = torch.zeros(len(images), 3, hp, wp, device=self.device, dtype=self.pixel_mean.dtype)
        for i, image in enumerate(images):
            x = (image.to(self.device, self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
            batch[i, :, : x.shape[1], : x.shape[2]] = x
        return batch

    def clip_input(self, images: torch.Tensor) -> torch.Tensor:
        """The CLIP input: the padded batch scaled by ``clip_resolution`` (bilinear; the scale factor,
        not the output size, sets the sampling grid, as in SAN)."""
        if self.config.clip_resolution == 1.0:
            return images
        return F.interpolate(images, scale_factor=self.config.clip_resolution, mode="bilinear", align_corners=False)

    def classifier(self, vocabulary: Sequence[str]) -> torch.Tensor:
        """Scaled classifier weights ``[C + 1, D]`` (``logit_scale.exp()`` times the unit rows, background last):
        what :func:`~san.modeling.postprocess.region_logits` multiplies the recognition embeddings with."""
        return self.text_classifier.logit_scale.exp() * self.text_classifier(vocabulary)

    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The vocabulary-free part of :meth:`forward` on a normalised, padded batch ``[B, 3, Hp, Wp]``: per decoded
        level (eval: only the last), mask logits ``[B, Q, h, w]`` and recognition embeddings ``[B, Q, D]``."""
        clip = self.clip_features(self.clip_input(images))
        side = self.side_adapter(images, clip)
        return side.mask_preds, [self.clip_recognition(clip, biases) for biases in side.attn_biases]

    def forward(self, images: torch.Tensor, vocabulary: Sequence[str]) -> SANOutput:
        """Run SAN on a normalised, padded batch ``[B, 3, Hp, Wp]`` (see :meth:`normalize_and_pad`)."""
        classifier = self.classifier(vocabulary)
        mask_preds, mask_embs = self.encode(images)
        return SANOutput(mask_preds, mask_embs, [region_logits(e, classifier) for e in mask_embs])

    @torch.inference_mode()
    def regions(self, images: Sequence[torch.Tensor], batch_size: int = 8) -> list[ImageRegions]:
        """Per uint8 RGB image ``[3, H_i, W_i]``, its :class:`~san.modeling.postprocess.ImageRegions`: mask logits
        ``[Q, h, w]`` and recognition embeddings ``[Q, D]`` (on the model's device), the padded input size and the
        image's size, which with any vocabulary's :meth:`classify_regions` give what :meth:`predict_scores` and
        :meth:`predict_best` post-process, bit for bit. Images are batched as there (only with others of their padded
        size), so a result never depends on the rest of the batch."""
        return self._predict(images, None, None, batch_size, lambda regions, _size: regions)

    @torch.inference_mode()
    def classify_regions(self, mask_embs: torch.Tensor, vocabulary: Sequence[str]) -> torch.Tensor:
        """Class logits ``[..., Q, len(vocabulary) + 1]`` (background last) of recognition embeddings
        ``[..., Q, D]`` (:meth:`regions`): :func:`~san.modeling.postprocess.region_logits` with this model's
        :meth:`classifier` for ``vocabulary``."""
        return region_logits(mask_embs, self.classifier(check_vocabulary(vocabulary)))

    @torch.inference_mode()
    def predict_scores(
        self,
        images: Sequence[torch.Tensor],
        vocabulary: Sequence[str],
        output_sizes: Sequence[tuple[int, int]] | None = None,
        batch_size: int = 8,
    ) -> list[torch.Tensor]:
        """Semantic scores ``[len(vocabulary), H_i, W_i]`` for each uint8 RGB image ``[3, H_i, W_i]``.

        Equal to the official implementation's ``sem_seg`` for each image run alone: images are
        batched only with others that pad to the same size, so a result never depends on the rest
        of the batch. ``output_sizes`` (one ``(H, W)`` per image) resizes the scores the way SAN's
        evaluation maps them back to an original image size. Scores are float32 (float64 for a
        float64 model), also under autocast.
        """
        return self._predict(images, vocabulary, output_sizes, batch_size, _classified(semantic_scores))

    @torch.inference_mode()
    def predict_best(
        self,
        images: Sequence[torch.Tensor],
        vocabulary: Sequence[str],
        output_sizes: Sequence[tuple[int, int]] | None = None,
        batch_size: int = 8,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image, the best score ``[H_i, W_i]`` and its class index ``[H_i, W_i]`` (uint8; int32 above 256
        classes): the max and argmax over classes of :meth:`predict_scores`, bit for bit, with memory bounded
        for any number of classes and output size (see :func:`~san.modeling.postprocess.best_class`)."""
        return self._predict(images, vocabulary, output_sizes, batch_size, _classified(best_class))

    @torch.inference_mode()
    def predict_outputs(
        self, images: Sequence[torch.Tensor], vocabulary: Sequence[str], batch_size: int = 8
    ) -> list[ImageOutputs]:
        """Per uint8 RGB image ``[3, H_i, W_i]``, the model outputs that :func:`semantic_scores` post-processes
        (mask logits ``[Q, h, w]``, class logits ``[Q, len(vocabulary) + 1]``): small, so that several passes
        over an image (test-time augmentation) can be kept and post-processed together."""
        return self._predict(images, vocabulary, None, batch_size, lambda regions, weights, _: regions.outputs(weights))

    def _predict(
        self,
        images: Sequence[torch.Tensor],
        vocabulary: Sequence[str] | None,
        output_sizes: Sequence[tuple[int, int]] | None,
        batch_size: int,
        postprocess: Callable[..., Result],
    ) -> list[Result]:
        """Run the model on same-padded-size groups and ``postprocess`` each image's :class:`ImageRegions`, with the
        classifier of ``vocabulary`` (``postprocess(regions, classifier, output_size)``), or, without a vocabulary,
        alone (``postprocess(regions, output_size)``)."""
        vocabulary = check_vocabulary(vocabulary) if vocabulary is not None else None
        _check_images(images)
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        output_sizes = list(output_sizes) if output_sizes is not None else sizes
        if len(output_sizes) != len(images):
            raise ValueError(f"{len(output_sizes)} output sizes for {len(images)} images")
        was_training = self.training
        self.eval()
        try:
            results: list[Result | None] = [None] * len(images)
            with cpu_inference_kernels(self.device):
                classifier = (self.classifier(vocabulary),) if vocabulary is not None else ()
                for group in _padded_size_groups(sizes, self.config.size_divisibility, batch_size):
                    batch = self.normalize_and_pad([images[i] for i in group])
                    mask_preds, mask_embs = (level[-1] for level in self.encode(batch))
                    padded = (int(batch.shape[-2]), int(batch.shape[-1]))
                    for j, i in enumerate(group):
                        # Contiguous copies: one image's regions, as kept regions are read back, whatever the batch.
                        regions = ImageRegions(mask_preds[j].contiguous(), mask_embs[j].contiguous(), padded, sizes[i])
                        results[i] = postprocess(regions, *classifier, output_sizes[i])
            return results  # type: ignore[return-value]
        finally:
            self.train(was_training)


def _classified(postprocess: Callable[..., Result]) -> Callable[[ImageRegions, torch.Tensor, tuple[int, int]], Result]:
    """``postprocess(mask_preds, mask_logits, padded_size, image_size, output_size)`` of an image's regions with the
    classifier's class logits (:func:`semantic_scores`, :func:`best_class`)."""

    def run(regions: ImageRegions, classifier: torch.Tensor, output_size: tuple[int, int]) -> Result:
        out = regions.outputs(classifier)
        return postprocess(out.mask_preds, out.mask_logits, out.padded_size, out.image_size, output_size)

    return run


def _check_images(images: Sequence[torch.Tensor]) -> None:
    if isinstance(images, torch.Tensor):
        raise TypeError("images must be a list of [3, H, W] uint8 tensors, not one tensor")
    if len(images) == 0:
        raise ValueError("no images given")
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image {i} is a {type(image).__name__}, expected a torch.Tensor [3, H, W] uint8")
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
            raise ValueError(
                f"image {i} must be a 3 x H x W uint8 RGB tensor, got {image.dtype} of shape {tuple(image.shape)}"
            )


def _padded_size_groups(sizes: list[tuple[int, int]], divisibility: int, batch_size: int) -> list[list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        key = (-(-h // divisibility), -(-w // divisibility))
        groups.setdefault(key, []).append(i)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


def build_san(config: SANConfig | str, pretrained_clip: bool = False, **preset_kwargs) -> SAN:
    """A SAN from a config or a preset name (``san_vit_b_16``, ``san_tiny``, ...).

    The side adapter is randomly initialised; CLIP too, unless ``pretrained_clip`` loads the CLIP
    weights that ``config.clip.pretrained`` names (the start of training from scratch).
    """
    if isinstance(config, str):
        config = get_preset(config, **preset_kwargs)
    return SAN(config, load_pretrained_clip(config.clip) if pretrained_clip else None)
