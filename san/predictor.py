"""numpy in, numpy out: what a labeling worker wraps around a :class:`~san.modeling.model.SAN`.

Images are resized by a :class:`~san.transforms.ResizeShortestEdge` (SAN's evaluation: short side 640,
long side at most 2560, PIL bilinear), predicted on the model's device (optionally under bf16/fp16
autocast on GPU, or with the model's image trunk cast to bf16 on CPU), and the class scores are mapped back
to each image's original size before the argmax.

What decides a label map besides the model and the prompts is one :class:`~san.settings.PredictionSettings`:
``other`` names (distractors, :mod:`san.other_names`) compete with the classes and leave the pixels they win
unlabeled; ``tta`` averages the scores of several passes (:mod:`san.tta`); ``class_min_scores`` gives classes
their own minimum score.

Everything after the model's one vocabulary-dependent product is shared: :class:`PromptClasses` (prompts to
classes, minimum scores, the unlabeled value) and :class:`RegionLabeler` (an image's kept regions and a
classifier to its :class:`~san.image_labels.ImageLabels`), which :meth:`Predictor.predict` runs on the regions it
has just computed and a relabeling job on regions read back, so that fp32 regions give the same label maps bit for
bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .class_scores import class_mean_scores
from .errors import OptionError
from .image_labels import ImageLabels, label_encoding
from .modeling.cpu_kernels import kernel_choice
from .modeling.model import SAN
from .modeling.postprocess import ImageOutputs, ImageRegions, best_class
from .modeling.text_classifier import check_vocabulary
from .other_names import added_names
from .precision import DTYPES, autocast_context, resolve_device, warn_without_cpu_bf16_units
from .settings import PredictionSettings, TestTimeAugmentation
from .transforms import ResizeShortestEdge
from .tta import average_best_class, pass_input

DEFAULT_SETTINGS = PredictionSettings()

# Pixels of a label map mapped from prompts to classes at once (bounds the 64-bit index copy to 8 MiB).
MAP_BAND_PIXELS = 1 << 20


class PromptClasses:
    """How prompt scores become a label map, without the model: ``prompts`` (the texts sent to CLIP) and
    ``prompt_to_class`` (each prompt's class index; several prompts per class = synonyms, combined by the maximum
    of their scores; without it each prompt is its own class), and the ``settings``' minimum scores and ``other``
    names.

    :attr:`added_names` are the settings' ``other`` names the model adds as classes (those equal to a prompt,
    ignoring case and Unicode form, left out): :attr:`model_prompts` are the prompts then the added names, and
    :attr:`model_classes` each one's class (an added name its own, after the vocabulary's). Pixels an added name
    wins are unlabeled, as are pixels whose best class scores below its minimum (:attr:`min_scores`).
    """

    def __init__(
        self,
        prompts: Sequence[str],
        prompt_to_class: Sequence[int] | None = None,
        settings: PredictionSettings = DEFAULT_SETTINGS,
    ):
        self.prompts = check_vocabulary(prompts)
        self.prompt_to_class = list(prompt_to_class) if prompt_to_class is not None else list(range(len(prompts)))
        if len(self.prompt_to_class) != len(self.prompts):
            raise ValueError(f"{len(self.prompt_to_class)} class indices for {len(self.prompts)} prompts")
        self.num_classes = max(self.prompt_to_class) + 1
        self.unlabeled, self.label_dtype = label_encoding(self.num_classes)
        self.added_names = added_names(settings.other, self.prompts)
        self.model_prompts = self.prompts + self.added_names
        self.model_classes = self.prompt_to_class + [self.num_classes + i for i in range(len(self.added_names))]
        self.min_scores = settings.min_scores(self.num_classes)

    def reduce_synonyms(self, scores: torch.Tensor) -> torch.Tensor:
        """Model prompt scores ``[P + A, ...]`` -> class scores ``[C + A, ...]`` (a class: the max of its prompts)."""
        if len(self.model_classes) == max(self.model_classes) + 1:
            return scores
        classes = range(max(self.model_classes) + 1)
        members = [[p for p, c in enumerate(self.model_classes) if c == k] for k in classes]
        return torch.stack([scores[m].amax(dim=0) for m in members])

    def image_labels(self, score: torch.Tensor, index: torch.Tensor, index_class: Sequence[int]) -> ImageLabels:
        """An image's :class:`~san.image_labels.ImageLabels` from its best score ``[H, W]`` and the best prompt or
        class ``index`` ``[H, W]`` (``index_class`` maps an index to its class), with each class's mean score
        taken on their device."""
        label = self._labels(index, index_class, score)
        means = class_mean_scores(label, score, self.num_classes).float().cpu().numpy()
        label_map = label.cpu().numpy().astype(self.label_dtype, copy=False)
        return ImageLabels(label_map, score.float().cpu().numpy(), self.unlabeled, means)

    def _labels(self, index: torch.Tensor, index_class: Sequence[int], score: torch.Tensor) -> torch.Tensor:
        """The label ``[H, W]`` of each pixel from its best prompt or class ``index`` ``[H, W]`` (``index_class``
        maps an index to its class): added names, and scores below their class's minimum, become unlabeled.
        Mapped in bands of rows, so that a large photo's map is never held in 64-bit integers."""
        dtype = torch.uint8 if self.label_dtype == np.uint8 else torch.int32
        index_label = [c if c < self.num_classes else self.unlabeled for c in index_class]
        thresholds = any(score > 0 for score in self.min_scores)  # scores are never negative
        if index_label == list(range(len(index_label))) and not thresholds:
            return index.to(dtype)
        index_label = torch.tensor(index_label, device=index.device, dtype=dtype)
        # Each class's minimum score, 0 for the unlabeled value (and the values between).
        label_min = torch.zeros(self.unlabeled + 1, device=index.device, dtype=score.dtype)
        label_min[: self.num_classes] = torch.tensor(self.min_scores, dtype=score.dtype)
        label = torch.empty(index.shape, dtype=dtype, device=index.device)
        rows = max(1, MAP_BAND_PIXELS // index.shape[1])
        for start in range(0, index.shape[0], rows):
            band = index_label[index[start : start + rows].int()]
            if thresholds:
                band[score[start : start + rows] < label_min[band.int()]] = self.unlabeled
            label[start : start + rows] = band
        return label


class RegionLabeler:
    """Label maps from images' regions (:class:`~san.modeling.postprocess.ImageRegions`, e.g. kept by a labeling
    run) without the model: the class logits of the scaled ``classifier`` weights ``[P + A + 1, D]`` (one row per
    model prompt of ``classes``, background last: :meth:`~san.modeling.model.SAN.classifier`), SAN's
    post-processing to each image's original size, and ``classes``' label rule. :meth:`Predictor.predict` runs
    exactly this on the regions it has just computed.

    The classifier and the regions are used in their own dtypes, on the classifier's device: pass float32
    regions read from float16 to compute in float32."""

    def __init__(self, classifier: torch.Tensor, classes: PromptClasses):
        if classifier.ndim != 2 or classifier.shape[0] != len(classes.model_prompts) + 1:
            raise ValueError(
                f"classifier weights {tuple(classifier.shape)} do not fit {len(classes.model_prompts)} prompts "
                "plus the background"
            )
        self.classifier = classifier
        self.classes = classes

    @torch.inference_mode()
    def predict(self, regions: Sequence[ImageRegions], output_sizes: Sequence[tuple[int, int]]) -> list[ImageLabels]:
        """Each image's :class:`~san.image_labels.ImageLabels` at its ``output_sizes`` ``(H, W)`` (its original
        size): a pixel's label is the class of its best prompt, unlabeled where that is an added name or scores
        below its class's minimum, taken without holding every class's scores at the output size at once."""
        if len(output_sizes) != len(regions):
            raise ValueError(f"{len(output_sizes)} output sizes for {len(regions)} images")
        device = self.classifier.device
        results = []
        for image, size in zip(regions, output_sizes, strict=True):
            preds, embs = image.mask_preds.to(device), image.mask_embs.to(device)
            outputs = ImageRegions(preds, embs, image.padded_size, image.image_size).outputs(self.classifier)
            score, index = best_class(
                outputs.mask_preds, outputs.mask_logits, outputs.padded_size, outputs.image_size, tuple(size)
            )
            results.append(self.classes.image_labels(score, index, self.classes.model_classes))
        return results


class Predictor:
    """Labels numpy images with a fixed vocabulary, as ``settings`` say (:class:`~san.settings.PredictionSettings`:
    resize rule, minimum scores, distractor names, test-time augmentation, dtype, batch size, templates).

    ``prompts`` and ``prompt_to_class``: see :class:`PromptClasses` (:attr:`classes`, whose :attr:`added_names` are
    also the predictor's). The model is moved to ``device``; with ``dtype="bf16"`` on CPU its image trunk is also
    cast to bf16 (see :meth:`~san.modeling.model.SAN.cast_image_trunk`), and with ``templates`` its text classifier
    takes that template set: both in place. :attr:`classifier` holds the scaled classifier weights
    ``[P + A + 1, D]`` of the model prompts, the only text-tower output the label maps need.
    """

    def __init__(
        self,
        model: SAN,
        prompts: Sequence[str],
        prompt_to_class: Sequence[int] | None = None,
        device: str | torch.device | None = None,
        settings: PredictionSettings = DEFAULT_SETTINGS,
    ):
        self.settings = settings
        self.classes = PromptClasses(prompts, prompt_to_class, settings)
        self.prompts, self.prompt_to_class = self.classes.prompts, self.classes.prompt_to_class
        self.num_classes, self.added_names = self.classes.num_classes, self.classes.added_names
        self.unlabeled, self.label_dtype = self.classes.unlabeled, self.classes.label_dtype
        self.min_scores = self.classes.min_scores
        self.device = resolve_device(device)
        if settings.dtype == "fp16" and self.device.type != "cuda":
            raise OptionError("`dtype` fp16 needs a GPU (fp16 on CPU is slower than fp32); use fp32, or bf16")
        self.dtype = DTYPES[settings.dtype]
        self.model = model.to(self.device).eval()
        if settings.templates is not None:
            self.model.text_classifier.set_template_set(settings.templates)
        if self.device.type == "cpu":
            kernel_choice()  # an unknown SAN_CPU_KERNELS fails here, once, rather than at every batch
        cpu_bf16 = self.dtype == torch.bfloat16 and self.device.type == "cpu"
        if cpu_bf16:
            warn_without_cpu_bf16_units()
            self.model.cast_image_trunk(torch.bfloat16)  # autocast would re-cast every weight at every forward
        self.autocast_dtype = None if cpu_bf16 else self.dtype
        with torch.inference_mode():
            # Fills the text-embedding cache once: the model's own calls take these very weights.
            self.classifier = self.model.classifier(self.classes.model_prompts)
        self.labeler = RegionLabeler(self.classifier, self.classes)

    @property
    def resize(self) -> ResizeShortestEdge:
        """The model input size rule (``settings.resize``)."""
        return self.settings.resize

    def _model_inputs(
        self, images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]] | None
    ) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """RGB uint8 ``[h, w, 3]`` arrays at the model's input size, and the size each result is wanted at.

        Without ``original_sizes`` the images are resized here by ``self.resize``. With them, the images
        were already resized (e.g. in the labeling job's CPU stage), and each must have the size that
        ``self.resize`` gives its original size: one rule decides the input size, wherever it is applied.
        """
        if original_sizes is not None and len(original_sizes) != len(images):
            raise ValueError(f"{len(original_sizes)} original sizes for {len(images)} images")
        arrays, sizes = [], []
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
            arrays.append(np.ascontiguousarray(image))
            sizes.append(size)
        return arrays, sizes

    def class_scores(
        self, images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[torch.Tensor]:
        """Per image ``[num_classes + len(added_names), H, W]`` scores (on the model's device) at the image's
        original size, of one pass (no test-time augmentation): the classes, then the added names.

        ``images``: RGB uint8 ``[H, W, 3]`` of any size, or, with ``original_sizes``, already resized by
        ``self.resize`` from those ``(H, W)``."""
        arrays, sizes = self._model_inputs(images, original_sizes)
        with autocast_context(self.device, self.autocast_dtype):
            scores = self.model.predict_scores(
                [_tensor(a) for a in arrays], self.classes.model_prompts, sizes, batch_size=self.settings.batch_size
            )
        return [self.classes.reduce_synonyms(s) for s in scores]

    def predict(
        self, images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[ImageLabels]:
        """Label RGB uint8 images ``[H, W, 3]`` (see :meth:`class_scores` for ``original_sizes``).

        The best class of a pixel is the class of its best prompt (a class scores the maximum of its
        prompts), taken without holding every class's scores at the output size at once. A pixel whose
        best class is an added name, or whose best score is below its class's minimum, is unlabeled.
        """
        if self.settings.tta is not None:
            arrays, sizes = self._model_inputs(images, original_sizes)
            best = self._average_best(arrays, sizes, self.settings.tta)
            every_class = list(range(max(self.classes.model_classes) + 1))  # TTA's index is the best class
            return [self.classes.image_labels(score, index, every_class) for score, index in best]
        return [labels for labels, _ in self.predict_regions(images, original_sizes)]

    def predict_regions(
        self, images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[tuple[ImageLabels, ImageRegions]]:
        """:meth:`predict`, and each image's regions (on the model's device), from which
        :class:`RegionLabeler` makes the same label map for this or any other vocabulary and settings. One pass
        per image: refused with test-time augmentation."""
        if self.settings.tta is not None:
            raise OptionError("kept regions are one pass's, and `tta` averages several passes: label without `tta`")
        arrays, sizes = self._model_inputs(images, original_sizes)
        with autocast_context(self.device, self.autocast_dtype):
            regions = self.model.regions([_tensor(a) for a in arrays], batch_size=self.settings.batch_size)
            labels = self.labeler.predict(regions, sizes)
        return list(zip(labels, regions, strict=True))

    def _average_best(
        self, arrays: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], tta: TestTimeAugmentation
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image, the best average class score ``[H, W]`` over the ``tta`` passes and its class ``[H, W]``.
        The passes' model outputs are kept (small); the average is taken at the output size chunk by chunk."""
        passes: list[list[tuple[ImageOutputs, bool]]] = [[] for _ in arrays]
        for resize, flipped in tta.passes:
            inputs = [pass_input(array, resize, flipped) for array in arrays]
            with autocast_context(self.device, self.autocast_dtype):
                outputs = self.model.predict_outputs(
                    inputs, self.classes.model_prompts, batch_size=self.settings.batch_size
                )
            for image_passes, output in zip(passes, outputs, strict=True):
                image_passes.append((output, flipped))
        return [
            average_best_class(image_passes, size, self.classes.reduce_synonyms)
            for image_passes, size in zip(passes, sizes, strict=True)
        ]


def _tensor(image: np.ndarray) -> torch.Tensor:
    """``[3, H, W]`` view of an RGB uint8 array ``[H, W, 3]``."""
    return torch.from_numpy(image).permute(2, 0, 1)
