"""numpy in, numpy out: what a labeling worker wraps around a :class:`~san.modeling.model.SAN`.

Images are resized by a :class:`~san.transforms.ResizeShortestEdge` (SAN's evaluation: short side 640,
long side at most 2560, PIL bilinear), predicted on the model's device (optionally under bf16/fp16
autocast on GPU, or with the model's image trunk cast to bf16 on CPU), and the class scores are mapped back
to each image's original size before the argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import OptionError
from .modeling.model import SAN
from .modeling.text_classifier import check_vocabulary
from .precision import DTYPES, autocast_context, resolve_device, warn_without_cpu_bf16_units
from .transforms import SAN_EVAL_RESIZE, ResizeShortestEdge

# Pixels of a label map mapped from prompts to classes at once (bounds the 64-bit index copy to 8 MiB).
MAP_BAND_PIXELS = 1 << 20


@dataclass
class Prediction:
    """One image's result at its original size.

    ``label_map`` ``[H, W]``: 0-based class index, or ``unlabeled`` (255 for uint8, 65535 for uint16)
    where the best score is below ``min_score``. ``scores`` ``[H, W]`` float32: the best class score at
    each pixel (SAN's semantic score, ``sum_q P(class | mask q) * sigmoid(mask q)``, usually 0..1).
    """

    label_map: np.ndarray
    scores: np.ndarray
    unlabeled: int


class Predictor:
    """Labels numpy images with a fixed vocabulary.

    ``prompts`` are the texts sent to CLIP; ``prompt_to_class`` maps each prompt to its class index
    (several prompts per class = synonyms, combined by the maximum of their scores). Without it,
    each prompt is its own class. The model is moved to ``device``; with ``dtype="bf16"`` on CPU its image
    trunk is also cast to bf16 (see :meth:`~san.modeling.model.SAN.cast_image_trunk`), in place.
    """

    def __init__(
        self,
        model: SAN,
        prompts: Sequence[str],
        prompt_to_class: Sequence[int] | None = None,
        device: str | torch.device | None = None,
        dtype: str = "fp32",
        resize: ResizeShortestEdge = SAN_EVAL_RESIZE,
        min_score: float = 0.0,
        batch_size: int = 8,
    ):
        self.prompts = check_vocabulary(prompts)
        self.prompt_to_class = list(prompt_to_class) if prompt_to_class is not None else list(range(len(prompts)))
        if len(self.prompt_to_class) != len(self.prompts):
            raise ValueError(f"{len(self.prompt_to_class)} class indices for {len(self.prompts)} prompts")
        self.num_classes = max(self.prompt_to_class) + 1
        self.device = resolve_device(device)
        if dtype not in DTYPES:
            raise OptionError(f"unknown `dtype` {dtype!r}; choose from {sorted(DTYPES)}")
        if dtype == "fp16" and self.device.type != "cuda":
            raise OptionError("`dtype` fp16 needs a GPU (fp16 on CPU is slower than fp32); use fp32, or bf16")
        self.dtype = DTYPES[dtype]
        self.resize = resize
        self.min_score = min_score
        self.batch_size = batch_size
        self.model = model.to(self.device).eval()
        cpu_bf16 = self.dtype == torch.bfloat16 and self.device.type == "cpu"
        if cpu_bf16:
            warn_without_cpu_bf16_units()
            self.model.cast_image_trunk(torch.bfloat16)  # autocast would re-cast every weight at every forward
        self.autocast_dtype = None if cpu_bf16 else self.dtype
        with torch.inference_mode():
            self.model.text_classifier(self.prompts)  # fill the text-embedding cache once

    def _model_inputs(
        self, images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]] | None
    ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """``[3, h, w]`` uint8 tensors at the model's input size, and the size each result is wanted at.

        Without ``original_sizes`` the images are resized here by ``self.resize``. With them, the images
        were already resized (e.g. in the labeling job's CPU stage), and each must have the size that
        ``self.resize`` gives its original size: one rule decides the input size, wherever it is applied.
        """
        if original_sizes is not None and len(original_sizes) != len(images):
            raise ValueError(f"{len(original_sizes)} original sizes for {len(images)} images")
        tensors, sizes = [], []
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
            if original_sizes is None:
                size = image.shape[:2]
                image = self.resize(image)
            else:
                size = tuple(int(n) for n in original_sizes[i])
                expected = self.resize.output_size(*size)
                if image.shape[:2] != expected:
                    raise ValueError(
                        f"image {i} is {image.shape[0]}x{image.shape[1]}, but {self.resize} resizes its original "
                        f"size {size[0]}x{size[1]} to {expected[0]}x{expected[1]}"
                    )
            if not image.flags.writeable:  # e.g. zero-copy arrays from Ray's object store
                image = image.copy()
            tensors.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
            sizes.append(size)
        return tensors, sizes

    def class_scores(
        self, images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[torch.Tensor]:
        """Per image ``[num_classes, H, W]`` scores (on the model's device) at the image's original size.

        ``images``: RGB uint8 ``[H, W, 3]`` of any size, or, with ``original_sizes``, already resized by
        ``self.resize`` from those ``(H, W)``."""
        tensors, sizes = self._model_inputs(images, original_sizes)
        with autocast_context(self.device, self.autocast_dtype):
            scores = self.model.predict_scores(tensors, self.prompts, sizes, batch_size=self.batch_size)
        return [self._reduce_synonyms(s) for s in scores]

    def _reduce_synonyms(self, scores: torch.Tensor) -> torch.Tensor:
        if self.num_classes == len(self.prompts):
            return scores
        members = [[p for p, c in enumerate(self.prompt_to_class) if c == k] for k in range(self.num_classes)]
        return torch.stack([scores[m].amax(dim=0) for m in members])

    def predict(
        self, images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[Prediction]:
        """Label RGB uint8 images ``[H, W, 3]`` (see :meth:`class_scores` for ``original_sizes``).

        The best class of a pixel is the class of its best prompt (a class scores the maximum of its
        prompts), taken without holding every class's scores at the output size at once.
        """
        tensors, sizes = self._model_inputs(images, original_sizes)
        with autocast_context(self.device, self.autocast_dtype):
            best = self.model.predict_best(tensors, self.prompts, sizes, batch_size=self.batch_size)
        unlabeled = 255 if self.num_classes <= 255 else 65535
        dtype = np.uint8 if unlabeled == 255 else np.uint16
        results = []
        for score, prompt in best:
            label = self._prompt_classes(prompt, torch.uint8 if dtype == np.uint8 else torch.int32)
            if self.min_score > 0:  # scores are never negative
                label[score < self.min_score] = unlabeled
            label = label.cpu().numpy().astype(dtype, copy=False)
            results.append(Prediction(label, score.float().cpu().numpy(), unlabeled))
        return results

    def _prompt_classes(self, prompt: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The class ``[H, W]`` of each pixel's best prompt ``[H, W]``, in ``dtype``; mapped in bands of rows,
        so that a large photo's map is never held in 64-bit integers."""
        if self.num_classes == len(self.prompts):
            return prompt.to(dtype)
        prompt_class = torch.tensor(self.prompt_to_class, device=prompt.device, dtype=dtype)
        label = torch.empty(prompt.shape, dtype=dtype, device=prompt.device)
        rows = max(1, MAP_BAND_PIXELS // prompt.shape[1])
        for start in range(0, prompt.shape[0], rows):
            label[start : start + rows] = prompt_class[prompt[start : start + rows].int()]
        return label
