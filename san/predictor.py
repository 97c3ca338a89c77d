"""numpy in, numpy out: what a labeling worker wraps around a :class:`~san.modeling.model.SAN`.

Images are resized as SAN's evaluation does (short side 640, long side at most 2560, PIL bilinear),
predicted on the model's device (optionally under bf16/fp16 autocast on GPU), and the class scores
are mapped back to each image's original size before the argmax.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import OptionError
from .modeling.model import SAN
from .modeling.text_classifier import check_vocabulary
from .transforms import resize_shortest_edge

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Labels numpy images with a fixed vocabulary.

    ``prompts`` are the texts sent to CLIP; ``prompt_to_class`` maps each prompt to its class index
    (several prompts per class = synonyms, combined by the maximum of their scores). Without it,
    each prompt is its own class.
    """

    def __init__(
        self,
        model: SAN,
        prompts: Sequence[str],
        prompt_to_class: Sequence[int] | None = None,
        device: str | torch.device | None = None,
        dtype: str = "fp32",
        short_side: int = 640,
        max_size: int = 2560,
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
        if dtype != "fp32" and self.device.type != "cuda":
            raise OptionError(f"`dtype` {dtype} needs a GPU (autocast on CPU is slower than fp32); use fp32")
        self.dtype = DTYPES[dtype]
        self.short_side, self.max_size = short_side, max_size
        self.min_score = min_score
        self.batch_size = batch_size
        self.model = model.to(self.device).eval()
        with torch.inference_mode():
            self.model.text_classifier(self.prompts)  # fill the text-embedding cache once

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _model_inputs(
        self, images: Sequence[np.ndarray], output_sizes: Sequence[tuple[int, int]] | None
    ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """Resized ``[3, h, w]`` uint8 tensors, and the size each image's result is wanted at."""
        tensors, sizes = [], []
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
            resized = resize_shortest_edge(image, self.short_side, self.max_size)
            if not resized.flags.writeable:  # e.g. zero-copy arrays from Ray's object store
                resized = resized.copy()
            tensors.append(torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1))
            sizes.append(image.shape[:2])
        if output_sizes is not None:
            sizes = [tuple(size) for size in output_sizes]
        return tensors, sizes

    def class_scores(
        self, images: Sequence[np.ndarray], output_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[torch.Tensor]:
        """Per image ``[num_classes, H, W]`` scores (on the model's device) at the image's size, or at
        ``output_sizes`` when the images were already resized for the model (their original sizes)."""
        tensors, sizes = self._model_inputs(images, output_sizes)
        with self._autocast():
            scores = self.model.predict_scores(tensors, self.prompts, sizes, batch_size=self.batch_size)
        return [self._reduce_synonyms(s) for s in scores]

    def _reduce_synonyms(self, scores: torch.Tensor) -> torch.Tensor:
        if self.num_classes == len(self.prompts):
            return scores
        members = [[p for p, c in enumerate(self.prompt_to_class) if c == k] for k in range(self.num_classes)]
        return torch.stack([scores[m].amax(dim=0) for m in members])

    def predict(
        self, images: Sequence[np.ndarray], output_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[Prediction]:
        """Label RGB uint8 images ``[H, W, 3]`` of any sizes (see :meth:`class_scores` for ``output_sizes``).

        The best class of a pixel is the class of its best prompt (a class scores the maximum of its
        prompts), taken without holding every class's scores at the output size at once.
        """
        tensors, sizes = self._model_inputs(images, output_sizes)
        with self._autocast():
            best = self.model.predict_best(tensors, self.prompts, sizes, batch_size=self.batch_size)
        unlabeled = 255 if self.num_classes <= 255 else 65535
        dtype = np.uint8 if unlabeled == 255 else np.uint16
        prompt_class = torch.tensor(self.prompt_to_class, device=self.device)
        results = []
        for score, prompt in best:
            label = prompt_class[prompt]
            label[score < self.min_score] = unlabeled
            results.append(Prediction(label.cpu().numpy().astype(dtype), score.float().cpu().numpy(), unlabeled))
        return results
