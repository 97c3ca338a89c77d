"""The single-process evaluation that ``pipeline.evaluate.evaluate_run`` replaced (its code as of 40b5a48), kept
as the reference its Ray tasks must equal: one image at a time, on the run's rows as ``RunOutput`` reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.evaluate import _json_safe, align_classes, warn_class_alignment, warn_matching
from pipeline.ground_truth import open_ground_truth
from pipeline.ground_truth.base import match_predictions
from pipeline.outputs import RunOutput
from pipeline.segments import decode_label_map_png, unlabeled_value
from san.atomic import write_json_atomic
from san.metrics import ConfusionMatrix, compute_metrics


def reference_evaluate(
    output_dir: Path, gt_spec: str, gt_classes: Path | None = None, protocol: str = "detectron2", metrics_path=None
) -> dict[str, Any]:
    """What evaluate_run returned and wrote before it ran in Ray tasks, plus ``confusion_matrix``."""
    output = RunOutput(output_dir)
    vocabulary = output.read_vocabulary(RuntimeError)
    paths = output.read_predictions(["image_path"]).column("image_path").to_pylist()
    gt = open_ground_truth(gt_spec, None if gt_classes is None else str(gt_classes), vocabulary.names, 255)
    alignment = align_classes(vocabulary.names, gt.class_names, vocabulary.synonyms)
    warn_class_alignment(alignment["info"])
    matching = match_predictions(gt, paths)
    warn_matching(matching)
    k = len(gt.class_names)
    matrix = ConfusionMatrix(k, ignore_index=gt.ignore_value)
    num_images = 0
    for row in output.iter_predictions(["image_path", "label_map_png"], 16):
        if row["image_path"] not in matching.matched:
            continue
        label_map = decode_label_map_png(row["label_map_png"])
        truth = gt.read(matching.matched[row["image_path"]])
        predicted = alignment["lookup"][label_map]
        predicted[label_map == unlabeled_value(label_map)] = k
        matrix.update(predicted, truth)
        num_images += 1
    result: dict[str, Any] = dict(compute_metrics(matrix, gt.class_names, protocol))
    target = Path(metrics_path) if metrics_path is not None else output.root / "metrics.json"
    result.update(
        {
            "protocol": protocol,
            "num_images": num_images,
            "pixels": int(matrix.matrix.sum()),
            "predictions": str(output.root),
            "ground_truth": gt.description,
            "ignore_values": gt.raw_ignore,
            "class_alignment": alignment["info"],
            "matching": matching.summary(),
            "metrics_path": str(target),
        }
    )
    write_json_atomic(_json_safe(result), target, indent=2)
    result["confusion_matrix"] = matrix.matrix.copy()
    return result
