"""SAN's evaluation sets (CVPR 2023, Table 2) in their standard *prepared* (detectron2) layouts.

:data:`EVAL_SETS` holds one :class:`EvalSetSpec` per split (``ade150``, ``ade847``, ``pc59``, ``pc459``,
``voc20``, ``cocostuff171``): where its images and labels lie under a datasets root, how labels are stored,
and its class names (``pipeline/eval_sets/<name>.txt``, exactly as SAN passes them to CLIP). The layouts,
their sources and the pairing rule: ``docs/eval_sets.md``.
"""

from __future__ import annotations

from typing import Any

from .sets import (
    EVAL_SETS,
    EvalSetError,
    EvalSetInputs,
    EvalSetSpec,
    default_root,
    get_eval_set,
    write_eval_set_inputs,
)

__all__ = [
    "EVAL_SETS",
    "EvalSetError",
    "EvalSetGroundTruth",
    "EvalSetInputs",
    "EvalSetSpec",
    "default_root",
    "get_eval_set",
    "open_eval_set_ground_truth",
    "write_eval_set_inputs",
]


def __getattr__(attribute: str) -> Any:
    # The reader imports the ground-truth reader modules (numpy, PIL): load it only when one of its names is asked for.
    if attribute in ("EvalSetGroundTruth", "open_eval_set_ground_truth"):
        from . import reader

        return getattr(reader, attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
