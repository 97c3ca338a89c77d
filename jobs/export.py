"""Export reviewed labels from FiftyOne to COCO JSON (the labeling job's form) and/or label-map PNGs.

Examples:
    python jobs/export.py out/labels --coco out/reviewed.json
    python jobs/export.py san-labels-1a2b3c4d --coco reviewed.json --masks reviewed_masks/

DATASET_OR_OUT is a FiftyOne dataset name or a labeling run's output folder that jobs/review.py loaded.
The current `predictions` masks are exported (edits included); a segment left as the run made it keeps
its score, an edited or added one gets 1.0. Masks: 0-based class index, 255/65535 = unlabeled, plus
classes.txt, so `jobs/evaluate.py --gt DIR --gt-classes DIR/classes.txt` reads the folder; the folder
must be new or empty, and appears only when the whole export succeeded.
"""

from __future__ import annotations

import argparse

from pipeline.cli import job_parser, run_job
from pipeline.review.export import export_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser("export.py", __doc__)
    parser.add_argument("dataset", metavar="DATASET_OR_OUT", help="FiftyOne dataset name or labeling output folder")
    parser.add_argument("--coco", help="where to write the COCO JSON (not the run's own coco.json)")
    parser.add_argument(
        "--masks", help="a new (or empty) folder to write one label-map PNG per image into, plus classes.txt"
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    summary = export_dataset(args.dataset, args.coco, args.masks)
    destinations = " and ".join(str(summary[key]) for key in ("coco", "masks") if summary[key])
    print(
        f"exported {summary['images']} images, {summary['annotations']} annotations from dataset "
        f"{summary['dataset']} ({summary['edited_segments']} edited segments in {summary['edited_images']} images) "
        f"to {destinations}"
    )
    return summary


if __name__ == "__main__":
    run_job(main, parse_args)
