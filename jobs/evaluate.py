"""Score a labeling run's label maps against ground truth (mIoU, fwIoU, mACC, pACC, per-class IoU and ACC).

Examples:
    python jobs/evaluate.py --predictions out/labels --gt /data/ade/annotations --gt-classes ade150.txt
    python jobs/evaluate.py --predictions out/labels --gt /data/coco/stuff_val2017.json --protocol mmseg
    python jobs/evaluate.py --predictions out/labels --gt corrected/masks --gt-classes corrected/classes.txt \
        --sample-estimate
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/evaluate.py --predictions /shared/labels --gt /shared/gt

Images are matched by file name without extension; classes by name or synonym (case-insensitive). Ray tasks score
the prediction files (on the cluster of a `ray job submit`, or of RAY_ADDRESS, else a local Ray). The metrics go
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
    parser.add_argument(
        "--sample-estimate",
        action="store_true",
        help="the ground truth is a random sample of the run's images (e.g. labels corrected in review): also "
        "estimate the whole run's mIoU and pACC, each with a 95%% confidence interval (bootstrap over images)",
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed (default: 0)")
    return parser.parse_args(argv)


def format_sample_estimate(estimate: dict) -> str:
    """One line per metric: the estimate and its interval, from ``metrics.json``'s ``sample_estimate``."""
    share = f"{estimate['sample_images']:,} of the run's {estimate['run_images']:,} images"
    lines = [
        f"sample estimate from {share} ({estimate['confidence']:.0%} confidence, bootstrap over images, "
        f"{estimate['resamples']} resamples, seed {estimate['seed']}):"
    ]
    for name in ("mIoU", "pACC"):
        value = estimate[name]
        lines.append(f"  {name:<5} {value['estimate']:6.2f}   [{value['low']:6.2f}, {value['high']:6.2f}]")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    result = evaluate_run(
        args.predictions,
        args.gt,
        gt_classes=args.gt_classes,
        protocol=args.protocol,
        ignore_index=args.ignore_index,
        metrics_path=args.metrics,
        sample_estimate=args.sample_estimate,
        resamples=args.resamples,
        seed=args.seed,
    )
    print(f"{result['num_images']} images, protocol {result['protocol']}, ground truth: {result['ground_truth']}")
    print(format_table(result))
    if "sample_estimate" in result:
        print()
        print(format_sample_estimate(result["sample_estimate"]))
    elif result["matching"]["predictions_without_ground_truth"]:
        print(
            "note: the ground truth covers only part of the run; if it is a random sample, --sample-estimate "
            "gives confidence intervals for the whole run",
            file=sys.stderr,
        )
    print(f"metrics written to {result['metrics_path']}", file=sys.stderr)
    return result


if __name__ == "__main__":
    run_job(main, parse_args)
