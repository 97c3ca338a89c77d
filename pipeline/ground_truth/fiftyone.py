"""Ground truth from a FiftyOne dataset's ``Segmentation`` field (``--gt fiftyone:DATASET[:FIELD]``).

Imports FiftyOne, so :mod:`pipeline.ground_truth` imports this module only when the ``fiftyone:`` scheme
is used. A dataset made by :func:`pipeline.review.dataset.load_run` works as it is (its ``ground_truth`` field).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import fiftyone as fo
import numpy as np

from ..review.mask_values import GROUND_TRUTH
from .base import GroundTruth, GroundTruthError, LabelValues
from .classes import read_class_names

__all__ = ["FiftyOneGroundTruth", "open_fiftyone_ground_truth"]


class FiftyOneGroundTruth(GroundTruth):
    """A ``Segmentation`` field of a FiftyOne dataset as ground truth (``--gt fiftyone:DATASET[:FIELD]``).

    Classes: the field's mask targets (``dataset.mask_targets[FIELD]``, else ``default_mask_targets``),
    integer values only, in increasing value order; with ``--gt-classes`` the file instead (line ``v``
    names value ``v``, gap lines are ignored values). Ignored pixels: value 0 and ``ignore_index`` (and
    65535) unless a class names them. Any other value without a class is an error. Images: the samples
    whose field has a mask; their path for matching is the ``image_path`` field when there is one
    (datasets made by :func:`pipeline.review.dataset.load_run`), else ``filepath``.
    """

    def __init__(
        self,
        dataset_name: str,
        field: str = GROUND_TRUTH,
        names_by_value: dict[int, str] | None = None,
        ignore_index: int = 255,
    ):
        if not fo.dataset_exists(dataset_name):
            raise GroundTruthError(f"no FiftyOne dataset named {dataset_name!r}")
        self.dataset = fo.load_dataset(dataset_name)
        self.field = field
        if not self.dataset.has_sample_field(field):
            raise GroundTruthError(f"FiftyOne dataset {dataset_name!r} has no field {field!r}")
        if names_by_value is None:
            targets = (self.dataset.mask_targets or {}).get(field) or self.dataset.default_mask_targets or {}
            if not targets:
                raise GroundTruthError(
                    f"FiftyOne dataset {dataset_name!r} has no mask targets for {field!r}; pass `gt_classes`"
                )
            if any(not isinstance(v, int) for v in targets):
                raise GroundTruthError(f"{dataset_name!r}.{field}: RGB mask targets are not supported")
            names_by_value = {int(v): " ".join(str(n).split()) for v, n in targets.items()}
        values = sorted(names_by_value)
        if values and (values[0] < 0 or values[-1] > 65535):
            raise GroundTruthError(f"{dataset_name!r}.{field}: mask values must lie in 0..65535")
        self.class_names = tuple(names_by_value[v] for v in values)
        if len({n.casefold() for n in self.class_names}) != len(self.class_names):
            raise GroundTruthError(f"{dataset_name!r}.{field}: two mask values have the same class name")
        ignored = [v for v in (0, int(ignore_index), 65535) if 0 <= v <= 65535 and v not in names_by_value]
        self._values = LabelValues(values, ignored)
        self.raw_ignore = sorted(set(ignored))
        view = self.dataset.exists(field)
        path_field = "image_path" if self.dataset.has_sample_field("image_path") else "filepath"
        ids, paths, filepaths = view.values("id"), view.values(path_field), view.values("filepath")
        self._paths = {i: p if p is not None else f for i, p, f in zip(ids, paths, filepaths, strict=True)}
        self.description = (
            f"FiftyOne dataset {dataset_name!r} field {field!r} ({len(self._paths)} images, "
            f"{len(self.class_names)} classes)"
        )

    def __getstate__(self) -> dict:
        """Pickled (for Ray workers) with the dataset's name: a dataset object does not pickle."""
        return {**self.__dict__, "dataset": self.dataset.name}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.dataset = fo.load_dataset(state["dataset"])

    def keys(self) -> list[Hashable]:
        return list(self._paths)

    def path_of(self, key: Hashable) -> str:
        return str(self._paths[key])

    def read(self, key: Hashable) -> np.ndarray:
        label = self.dataset[key][self.field]
        mask = label.get_mask() if label is not None and label.has_mask else None
        if mask is None or mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            shown = None if mask is None else f"{mask.dtype} {list(mask.shape)}"
            raise GroundTruthError(f"{self.description}: sample {key} has no 2-D integer mask ({shown})")
        what = f"{self.description}: sample {key} ({self.path_of(key)})"
        return self._values.classes(mask, what, "the classes are the field's mask targets, or the --gt-classes lines")


def open_fiftyone_ground_truth(
    location: str, gt_classes: str | None, vocabulary_names: Sequence[str], ignore_index: int
) -> FiftyOneGroundTruth:
    """``--gt fiftyone:DATASET[:FIELD]`` (FIELD defaults to ``ground_truth``; a dataset name that itself
    contains ``:`` works when FIELD is given)."""
    name, sep, field = location.rpartition(":")
    if not sep or not name:
        name, field = location, GROUND_TRUTH
    names_by_value = None
    if gt_classes:
        names = read_class_names(gt_classes)
        names_by_value = {v: n for v, n in enumerate(names) if n is not None}
    return FiftyOneGroundTruth(name, field or GROUND_TRUTH, names_by_value, ignore_index)
