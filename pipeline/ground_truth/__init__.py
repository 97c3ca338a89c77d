"""Ground truth for evaluating a labeling run: choosing a reader from a ``--gt`` spec.

:func:`open_ground_truth` turns ``png:DIR`` (or a folder), ``coco:FILE`` (or a ``.json``),
``fiftyone:DATASET[:FIELD]`` or a benchmark's ``NAME:ROOT`` into a
:class:`pipeline.ground_truth.base.GroundTruth`; :func:`register_ground_truth` adds a ``scheme:``.
The readers are described in ``docs/evaluation.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..eval_sets import EVAL_SETS
from .base import GroundTruth, GroundTruthError
from .classes import read_class_names
from .coco import CocoGroundTruth
from .png import PngFolderGroundTruth

__all__ = ["open_ground_truth", "register_ground_truth"]

#: ``factory(location, gt_classes, vocabulary_names, ignore_index) -> GroundTruth`` per ``--gt`` scheme.
GroundTruthFactory = Callable[[str, "str | None", Sequence[str], int], GroundTruth]
_READERS: dict[str, GroundTruthFactory] = {}


def register_ground_truth(scheme: str, factory: GroundTruthFactory) -> None:
    """Make ``--gt SCHEME:LOCATION`` open ``factory(LOCATION, gt_classes, vocabulary_names, ignore_index)``.

    E.g. a FiftyOne reader registers ``"fiftyone"`` for ``--gt fiftyone:DATASET:FIELD``.
    """
    if not scheme.isidentifier():
        raise ValueError(f"scheme must be an identifier, got {scheme!r}")
    _READERS[scheme] = factory


def _open_png(location: str, gt_classes: str | None, vocabulary_names: Sequence[str], ignore_index: int):
    names: Sequence[str | None] = read_class_names(gt_classes) if gt_classes else list(vocabulary_names)
    return PngFolderGroundTruth(location, names, ignore_index)


def _open_coco(location: str, gt_classes: str | None, vocabulary_names: Sequence[str], ignore_index: int):
    if gt_classes:
        raise GroundTruthError("`gt_classes` does not apply to a COCO JSON (its 'categories' name the classes)")
    return CocoGroundTruth(location)


def _open_fiftyone(location: str, gt_classes: str | None, vocabulary_names: Sequence[str], ignore_index: int):
    from .fiftyone import open_fiftyone_ground_truth  # imports FiftyOne only when this scheme is used

    return open_fiftyone_ground_truth(location, gt_classes, vocabulary_names, ignore_index)


register_ground_truth("png", _open_png)
register_ground_truth("coco", _open_coco)
register_ground_truth("fiftyone", _open_fiftyone)  # --gt fiftyone:DATASET[:FIELD], see pipeline.ground_truth.fiftyone


def _eval_set_opener(name: str) -> GroundTruthFactory:
    def open_eval_set(location: str, gt_classes: str | None, vocabulary_names: Sequence[str], ignore_index: int):
        from ..eval_sets.reader import open_eval_set_ground_truth  # numpy and PIL: only when such a spec is opened

        return open_eval_set_ground_truth(name, location, gt_classes, vocabulary_names, ignore_index)

    return open_eval_set


for _name in EVAL_SETS:  # --gt ade150:ROOT, pc59:ROOT, ... (the SAN paper's evaluation sets)
    register_ground_truth(_name, _eval_set_opener(_name))


def open_ground_truth(
    spec: str, gt_classes: str | None = None, vocabulary_names: Sequence[str] = (), ignore_index: int = 255
) -> GroundTruth:
    """Open the ground truth a ``--gt`` spec names.

    ``SCHEME:LOCATION`` with a registered scheme (``png``, ``coco``, and whatever
    :func:`register_ground_truth` added) uses that reader; otherwise a directory is a PNG folder and a
    ``.json`` file a COCO JSON.

    Raises:
        GroundTruthError: the path does not exist, an unknown kind, or a reader's complaint.
    """
    scheme, sep, location = str(spec).partition(":")
    if sep and scheme in _READERS and not os.path.exists(spec):
        return _READERS[scheme](location, gt_classes, vocabulary_names, ignore_index)
    path = Path(spec)
    if path.is_dir():
        return _open_png(spec, gt_classes, vocabulary_names, ignore_index)
    if path.is_file() and path.suffix.lower() == ".json":
        return _open_coco(spec, gt_classes, vocabulary_names, ignore_index)
    if not path.exists():
        raise GroundTruthError(f"`gt` {spec!r} does not exist")
    raise GroundTruthError(
        f"`gt` {spec!r} is neither a folder of label images nor a COCO .json file "
        f"(or prefix one of the schemes: {', '.join(sorted(_READERS))})"
    )
