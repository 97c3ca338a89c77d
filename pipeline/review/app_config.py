"""What the App shows when a review dataset opens, set through FiftyOne's own dataset App config
(``dataset.app_config``): the masks drawn, one colour per class in both mask fields, and the review
fields in the first sidebar group (the choices: ``docs/review.md``).
"""

from __future__ import annotations

import colorsys

import fiftyone as fo

from .mask_values import GROUND_TRUTH, PREDICTIONS

__all__ = ["REVIEW_FIELDS", "REVIEW_GROUP", "class_colors", "configure_app"]

REVIEW_GROUP = "review"
REVIEW_FIELDS = ("miou", "mean_score", "classes_present", "iou")
"""Sample fields shown in the expanded ``review`` sidebar group, those the dataset has, in this order."""

_GOLDEN_RATIO = 0.6180339887498949


def class_colors(values: list[int]) -> dict[int, str]:
    """Mask value -> ``#rrggbb``: hues a golden-ratio step apart (any two neighbouring values far apart on
    the colour wheel, for any number of classes), lightness alternating so that hues that come round
    again still differ. A value's colour depends on the value only, so it is the same in every run of a
    vocabulary. FiftyOne's colour pool is not used: it has a dozen colours and would repeat them."""
    colors = {}
    for value in values:
        hue = (value * _GOLDEN_RATIO) % 1.0
        lightness = (0.5, 0.62, 0.4)[value % 3]
        red, green, blue = colorsys.hls_to_rgb(hue, lightness, 0.8)
        colors[value] = f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"
    return colors


def _sidebar_groups(dataset: fo.Dataset) -> list[fo.SidebarGroupDocument]:
    """FiftyOne's default groups for the dataset, with the review fields moved into a first, expanded
    ``review`` group (after ``tags``, which FiftyOne keeps first)."""
    review = [f for f in REVIEW_FIELDS if dataset.has_sample_field(f)]
    groups = fo.DatasetAppConfig.default_sidebar_groups(dataset)
    for group in groups:
        group.paths = [p for p in group.paths if p not in review]
        if group.name == "labels":
            group.expanded = True
    first = 1 if groups and groups[0].name == "tags" else 0
    groups.insert(first, fo.SidebarGroupDocument(name=REVIEW_GROUP, paths=review, expanded=True))
    return groups


def configure_app(dataset: fo.Dataset) -> None:
    """Set and save ``dataset.app_config`` so that the App opens a review dataset ready to review.

    - ``active_fields``: ``predictions`` and ``ground_truth`` (those the dataset has) besides FiftyOne's
      defaults: FiftyOne leaves ``Segmentation`` fields unticked, so no mask would show.
    - ``color_scheme``: colour by value, one colour per mask value (:func:`class_colors`) for every value in
      either field's mask targets; since a class has one value in both fields (``docs/review.md``), it has
      one colour in both.
    - ``sidebar_groups``: ``miou``, ``mean_score``, ``classes_present``, ``iou`` in an expanded ``review``
      group before the labels.
    """
    config = dataset.app_config
    masks = [f for f in (PREDICTIONS, GROUND_TRUTH) if dataset.has_sample_field(f)]
    defaults = fo.DatasetAppConfig.default_active_fields(dataset).paths
    config.active_fields = fo.ActiveFields(paths=[*masks, *(p for p in defaults if p not in masks)])
    values = sorted({int(v) for field in masks for v in (dataset.mask_targets.get(field) or {})} - {0})
    config.color_scheme = fo.ColorScheme(
        color_by="value",
        opacity=0.6,
        default_mask_targets_colors=[{"intTarget": v, "color": c} for v, c in class_colors(values).items()],
    )
    config.sidebar_groups = _sidebar_groups(dataset)
    dataset.save()
