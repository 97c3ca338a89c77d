"""What ``jobs/train.py --data`` / ``--val-data`` read: besides the folder layout of ``docs/training.md``, a
labeling run's output folder or ``fiftyone:DATASET`` (``pipeline.sources``), with the run's vocabulary
as class names and unlabeled pixels ignored in the loss."""

from __future__ import annotations

from san.training.data import LabeledImages, LabelMapList, open_folder

from .sources import is_label_source, open_label_source

__all__ = ["open_training_data"]


def open_training_data(data: str, option: str, ignore_index: int) -> LabeledImages:
    """A :data:`san.training.data.DataOpener`: the label source ``data`` names, read into memory once (a
    label-map PNG per image: a reviewed dataset is read at the start, not while training), or the folder
    layout (:func:`san.training.data.open_folder`). ``option`` names the option that gave ``data``."""
    if not is_label_source(data):
        return open_folder(data, option, ignore_index)
    source = open_label_source(data)
    images, labels = [], []
    for item in source.images():
        images.append(item.image_path)
        labels.append(item.label_png)
    return LabelMapList(images, labels, source.vocabulary.names, source.description, ignore_index)
