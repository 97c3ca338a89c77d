"""Saved views of a review dataset for triage: ``worst_miou``, ``least_confident`` and ``class_<name>``
(which, and why at most ``max_class_views`` class views: :mod:`pipeline.review.dataset`).
"""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.core.utils as fou
from fiftyone import ViewField as F

from .mask_values import PREDICTIONS

__all__ = ["MAX_CLASS_VIEWS", "save_review_views"]

MAX_CLASS_VIEWS = 100


def save_review_views(dataset: fo.Dataset, max_class_views: int | None = MAX_CLASS_VIEWS) -> list[str]:
    """(Re)create the saved views (:mod:`pipeline.review.dataset`); returns their names.

    Args:
        max_class_views: at most this many ``class_<name>`` views, for the classes predicted in the most
            samples (ties: vocabulary order); None = one per predicted class. FiftyOne's ``save_view``
            reloads every saved view of the dataset each time, so N views cost O(N^2) (measured: 297
            views took 23 s); the ``classes_present`` sidebar filter covers the remaining classes.
    """
    for name in dataset.list_saved_views():
        if name in ("worst_miou", "least_confident") or name.startswith("class_"):
            dataset.delete_saved_view(name)
    views: dict[str, Any] = {}
    if dataset.has_sample_field("miou") and len(dataset.exists("miou")):
        views["worst_miou"] = dataset.exists("miou").sort_by("miou")
    views["least_confident"] = dataset.exists("mean_score").sort_by("mean_score")
    counts: dict[str, int] = {}
    for present in dataset.values("classes_present"):
        for class_name in present or []:
            counts[class_name] = counts.get(class_name, 0) + 1
    vocabulary = (dataset.info or {}).get("vocabulary", {}).get("names") or list(
        (dataset.mask_targets or {}).get(PREDICTIONS, {}).values()
    )
    ranked = sorted((i for i, c in enumerate(vocabulary) if counts.get(c)), key=lambda i: -counts[vocabulary[i]])
    chosen = set(ranked if max_class_views is None else ranked[: max(max_class_views, 0)])
    slugs = {fou.to_slug(n) for n in views}
    for index, class_name in enumerate(vocabulary):
        if index not in chosen:
            continue
        name = f"class_{class_name}"
        if fou.to_slug(name) in slugs:
            name = f"class_{class_name}_{index + 1}"
        slugs.add(fou.to_slug(name))
        views[name] = dataset.match(F("classes_present").contains(class_name))
    for name, view in views.items():
        dataset.save_view(name, view, overwrite=True)
    return list(views)
