"""Load a labeling run (and its ground truth) into a FiftyOne dataset for review, optionally opening the App.

Examples:
    python jobs/review.py out/labels
    python jobs/review.py out/labels --gt /data/ade/annotations --gt-classes ade150.txt --launch --port 5151
    python jobs/review.py out/labels --overwrite  # load it again, discarding the review edits of its dataset
    python jobs/review.py out/labels --select least-confident:1000 --select random:500:seed=0 --select per-class:20
    python jobs/review.py out/labels --gt /data/ade/annotations --select lowest-miou:100 --dataset worst-100

--select KIND:N[:seed=S] loads only a chosen subset of the run (a partial dataset), the union of every --select:
  least-confident:N    the N images with the lowest mean score of their segments (the unweighted mean over the
                       image's classes, the `mean_score` field); images without segments are never chosen
  random:N[:seed=S]    N images uniformly at random (default seed 0), the same for the same seed and run
                       whatever its files; random:500:seed=S is part of random:1000:seed=S
  per-class:N[:seed=S] for each vocabulary class, N random images whose predictions hold it
  lowest-miou:N        the N images with the lowest mIoU against --gt (scored in Ray tasks: it reads every
                       label map, as jobs/evaluate.py does); images without ground truth are never chosen
The choice reads only the prediction files' small columns (paths, ids, segment scores and classes), then only
the chosen rows in full. Each sample is tagged with the selections that chose it (e.g. `random:500:seed=0`;
filter by tag in the App) and the dataset's info['selection'] records them and the run's size. A partial
dataset exported or trained on as fiftyone:NAME is its images only; as run+fiftyone:NAME it is the whole run,
its images as reviewed and the others as the run labeled them (jobs/export.py --help, docs/review.md).

The dataset is persistent and named after the output folder (or --dataset). A dataset of that name is
replaced only with --overwrite (it may hold mask edits made in the App; without the flag review.py refuses)
and only when review.py made it: any other dataset is never touched (pick another name with --dataset).
The new dataset is built completely, ground truth included, before the old one is deleted.
Class-name and image-matching problems are warned about on stderr, as by jobs/evaluate.py.
Mask values are category ids (vocabulary index + 1), 0 = unlabeled / ignored. With --gt, per-image
IoU/mIoU are stored and the mIoU is computed twice: by us and from FiftyOne's evaluate_segmentations.
Masks are PNG files in OUT/review-masks/ (referenced by mask_path), unless --masks-in-database.
Saved views: worst_miou, least_confident, class_<name>; --launch prints a link to each.
--launch serves the App on 127.0.0.1; another --address needs --allow-remote, since FiftyOne's App serves
any local file the process can read to whoever reaches it, without authentication.
The App opens with the masks shown (one colour per class in both fields) and miou / mean_score in the
sidebar's review group. Export edits with jobs/export.py.
"""

from __future__ import annotations

import argparse

from pipeline.cli import job_parser, run_job
from pipeline.review.app import check_address, serve_until_interrupted
from pipeline.review.dataset import load_run, selection_info
from pipeline.review.metrics import compare_with_fiftyone
from pipeline.review.selection import parse_select


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser("review.py", __doc__)
    parser.add_argument("output", metavar="OUT", help="the labeling run's --output directory")
    parser.add_argument(
        "--gt",
        help="ground truth: a folder of label images, a COCO .json, or SCHEME:LOCATION (as jobs/evaluate.py)",
    )
    parser.add_argument(
        "--gt-classes",
        help="for a label-image folder: line v names pixel value v; an empty or '#' line is no class (ignored), "
        "but trailing ones are dropped, so a pixel of their value is an error (as jobs/evaluate.py)",
    )
    parser.add_argument("--ignore-index", type=int, default=255, help="ground-truth value to ignore (default 255)")
    parser.add_argument(
        "--select",
        action="append",
        metavar="KIND:N[:seed=S]",
        help="load only these images (repeat it for the union): least-confident:N, random:N[:seed=S], "
        "per-class:N[:seed=S], lowest-miou:N (with --gt); the kinds are described below",
    )
    parser.add_argument("--dataset", help="FiftyOne dataset name (default: derived from OUT)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing dataset of that name made by review.py, with any review edits it holds "
        "(never a dataset review.py did not make)",
    )
    parser.add_argument(
        "--class-views",
        type=int,
        default=100,
        help="saved class_<name> views for at most this many classes, the most often predicted (default 100; "
        "-1 = all; FiftyOne slows down quadratically with the number of saved views)",
    )
    parser.add_argument(
        "--masks-in-database",
        action="store_true",
        help="store the masks in the FiftyOne database instead of as PNG files in OUT/review-masks/ (the "
        "default; the database then holds paths only and stays small for large runs)",
    )
    parser.add_argument(
        "--launch", action="store_true", help="open the App, print links to the saved views, serve until Ctrl-C"
    )
    parser.add_argument("--port", type=int, default=5151, help="App port (default 5151)")
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="App address (default 127.0.0.1); one that is not loopback needs --allow-remote",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --launch listen on an --address other machines reach: FiftyOne's App then serves any local file "
        "this process can read (/media?filepath=...) to anyone who reaches the port, without authentication",
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    select = [parse_select(text) for text in args.select or []]  # before any work: a refusal loads nothing
    if args.launch:
        check_address(args.address, args.allow_remote)
    dataset = load_run(
        args.output,
        args.gt,
        args.gt_classes,
        name=args.dataset,
        ignore_index=args.ignore_index,
        max_class_views=None if args.class_views < 0 else args.class_views,
        overwrite=args.overwrite,
        mask_files=not args.masks_in_database,
        select=select,
    )
    selection = selection_info(dataset)
    chosen = f" of the run's {selection['run_images']}, chosen by {' '.join(selection['select'])}" if selection else ""
    print(f"dataset: {dataset.name} ({len(dataset)} samples{chosen})")
    result: dict = {"dataset": dataset.name, "samples": len(dataset)}
    if args.gt is not None:
        comparison = compare_with_fiftyone(dataset)
        result.update(comparison)
        print(
            f"mIoU: {comparison['ours']:.4f} (FiftyOne evaluate_segmentations: {comparison['fiftyone']:.4f}) "
            f"over {comparison['num_images']} images with ground truth"
        )
    print(f"saved views: {', '.join(dataset.list_saved_views())}")
    if args.launch:
        serve_until_interrupted(dataset, port=args.port, address=args.address, allow_remote=args.allow_remote)
    return result


if __name__ == "__main__":
    run_job(main, parse_args)
