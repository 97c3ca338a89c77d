"""Ground-truth reader for SAN's benchmarks: ``--gt NAME:ROOT`` (see :mod:`pipeline.eval_sets`)."""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from ..ground_truth.base import GroundTruth, GroundTruthError, LabelValues
from ..ground_truth.png import read_label_image
from .sets import EvalSetError, EvalSetSpec, default_root, get_eval_set

__all__ = ["EvalSetGroundTruth", "open_eval_set_ground_truth"]

_MAX_U16 = 65535


class EvalSetGroundTruth(GroundTruth):
    """The label files of one benchmark's validation split; class ``v`` = label value ``v``.

    Keys are the label files' names in the label folder (file stems are unique there, so the stem
    matching of :meth:`GroundTruth.match` is exact). The benchmark's own ignore value (255 or 65535) is
    ignored; any other value outside ``0..K-1`` is an error naming the file. All label files count as
    ground truth, also those whose image is missing (they are reported as "without prediction").
    """

    def __init__(self, spec: EvalSetSpec, root: str | os.PathLike[str]):
        self.spec = spec
        try:
            self.folder = spec.label_folder(root)
            files = spec.label_files(root)  # warns when the count is not the official one
        except EvalSetError as exc:
            raise GroundTruthError(str(exc)) from None
        self._files = [f.name for f in files]
        self.class_names = spec.class_names
        self.raw_ignore = [spec.ignore_value]
        self.description = (
            f"{spec.title} ({spec.name}) labels {self.folder} ({len(self._files)} files, "
            f"{len(self.class_names)} classes)"
        )
        self._values = LabelValues(range(len(self.class_names)), [spec.ignore_value])

    def keys(self) -> list[Hashable]:
        return list(self._files)

    def path_of(self, key: Hashable) -> str:
        return str(self.folder / str(key))

    def read(self, key: Hashable) -> np.ndarray:
        path = self.folder / str(key)
        bits = "16" if self.spec.ignore_value == _MAX_U16 else "8"
        raw = read_label_image(path, f"{self.spec.name} labels are single-channel {bits}-bit label maps")
        if self.spec.ignore_value == _MAX_U16:
            raw = np.where(raw == -1, _MAX_U16, raw)  # a signed 32-bit TIFF of "value - 1": -1 is unlabeled
        hint = f"{self.spec.name} classes are 0..{len(self.class_names) - 1}, {self.spec.ignore_value} is ignored"
        return self._values.classes(raw, f"ground truth {path}", hint)


def open_eval_set_ground_truth(
    name: str,
    location: str,
    gt_classes: str | None = None,
    vocabulary_names: Sequence[str] = (),
    ignore_index: int = 255,
) -> EvalSetGroundTruth:
    """The ``register_ground_truth`` factory behind ``--gt NAME:ROOT``.

    ``ROOT`` is the datasets root (or the dataset's own folder); empty means ``$DETECTRON2_DATASETS``
    (else ``datasets``). The class list and ignore value are the benchmark's own: ``--gt-classes`` is an
    error, and ``--ignore-index`` may only be 255 (the default) or the benchmark's ignore value.

    Raises:
        EvalSetError: ``ROOT`` does not exist.
        GroundTruthError: unknown benchmark, wrong options, or a layout problem.
    """
    try:
        spec = get_eval_set(name)
    except EvalSetError as exc:
        raise GroundTruthError(str(exc)) from None
    if gt_classes:
        raise GroundTruthError(
            f"`gt_classes` does not apply to `gt` {spec.name}:ROOT (its {spec.num_classes} classes are built in)"
        )
    if ignore_index not in (255, spec.ignore_value):
        raise GroundTruthError(
            f"`ignore_index` {ignore_index} does not apply to `gt` {spec.name}:ROOT (it ignores {spec.ignore_value})"
        )
    root = location or default_root()
    if not Path(root).is_dir():
        raise EvalSetError(f"`gt` {spec.name}:{location}: datasets root {str(root)!r} does not exist")
    return EvalSetGroundTruth(spec, root)
