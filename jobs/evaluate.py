"""Score a labeling run's label maps against ground truth (mIoU, fwIoU, mACC, pACC, per-class IoU and ACC).

Examples:
    python jobs/evaluate.py --predictions out/labels --gt /data/ade/annotations --gt-classes ade150.txt
    python jobs/evaluate.py --predictions out/labels --gt /data/coco/stuff_val2017.json --protocol mmseg

Images are matched by file name without extension; classes by name or synonym (case-insensitive). The metrics go
to OUT/metrics.json (or --metrics) and a table is printed.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import job_parser, run_job
from pipeline.evaluate import evaluate_run
from san.metrics import PROTOCOLS, format_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser("evaluate.py", __doc__)
    parser.add_argument("--predictions", required=True, help="the labeling run's --output directory")
    parser.add_argument(
        "--gt",
        required=True,
        help="ground truth: a folder of label images (.png/.tif, searched recursively; pixel value = class, "
        "255 = ignore), a COCO .json of per-class semantic annotations (classes from its categories; pixels "
        "without annotation are ignored), or SCHEME:LOCATION of another registered reader",
    )
    parser.add_argument(
        "--gt-classes",
        help="for a label-image folder: text file whose line v (0-based) names the class of pixel value v; "
        "an empty or '#' line makes its value no class (its pixels are ignored), except at the end of the file: "
        "trailing empty and '#' lines are dropped, so their values name nothing and a pixel of such a value is an "
        "error (unless it is --ignore-index) (default: the run's vocabulary order)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="detectron2",
        help="detectron2 (default, SAN's published numbers): mIoU averages only classes present in the ground "
        "truth; mmseg: mIoU also counts classes that are predicted but absent from the ground truth, as 0",
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        help="ground-truth pixel value to ignore in label images (default: 255; 65535 when 255 is a class)",
    )
    parser.add_argument("--metrics", help="where to write the metrics JSON (default: PREDICTIONS/metrics.json)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    result = evaluate_run(
        args.predictions,
        args.gt,
        gt_classes=args.gt_classes,
        protocol=args.protocol,
        ignore_index=args.ignore_index,
        metrics_path=args.metrics,
    )
    print(f"{result['num_images']} images, protocol {result['protocol']}, ground truth: {result['ground_truth']}")
    print(format_table(result))
    print(f"metrics written to {result['metrics_path']}", file=sys.stderr)
    return result


if __name__ == "__main__":
    run_job(main, parse_args)
