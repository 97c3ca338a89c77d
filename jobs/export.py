"""Export labels: reviewed labels from FiftyOne to COCO JSON (the labeling job's form) and/or label-map PNGs,
and a run's or a reviewed dataset's labels to other tools' formats (yolo-seg, cvat, label-studio, hf).

Examples:
    python jobs/export.py out/labels --coco out/reviewed.json
    python jobs/export.py san-labels-1a2b3c4d --coco reviewed.json --masks reviewed_masks/
    python jobs/export.py fiftyone:san-labels-1a2b3c4d --format yolo-seg --output yolo/
    python jobs/export.py out/labels --format cvat --output cvat-masks.zip
    python jobs/export.py out/labels --format label-studio --output ls/ --image-url https://host/images/
    python jobs/export.py out/labels --format hf --output hf-dataset/
    python jobs/export.py run+fiftyone:san-labels-1a2b3c4d --coco all.json  # the whole run, reviewed images as edited

SOURCE for --coco and --masks is a FiftyOne dataset (NAME or fiftyone:NAME) or a labeling run's output
folder that jobs/review.py loaded (then its dataset is exported). The current `predictions` masks are exported
(edits included); a segment left as the run made it keeps its score, an edited or added one gets 1.0. Masks:
0-based class index, 255/65535 = unlabeled, plus classes.txt, so `jobs/evaluate.py --gt DIR --gt-classes
DIR/classes.txt` reads the folder; the folder must be new or empty, and appears only when the whole export
succeeded.

SOURCE for --format is a labeling run's output folder (its labels as the run wrote them) or a reviewed
dataset, fiftyone:NAME (its masks as edited). Each format's layout and its convention for unlabeled
pixels: docs/exports.md. --format is written in Ray tasks, one per prediction file, as jobs/label.py joins Ray
(under `ray job submit`, RAY_ADDRESS, else a local Ray).

A partial dataset (jobs/review.py --select) as fiftyone:NAME is its chosen images alone. For every image of its
run, the chosen ones as reviewed and the others as the run labeled them, give run+fiftyone:NAME (with --coco,
--masks and --format alike). A run's folder whose dataset is partial is refused for --coco and --masks, which
would otherwise leave out the run's other images: give one of the two.
"""

from __future__ import annotations

import argparse

from pipeline.cli import job_parser, run_job
from pipeline.dataclass_args import add_dataclass_arguments, dataclass_from_args
from pipeline.exports.run import FormatOptions, export_format


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser("export.py", __doc__)
    parser.add_argument(
        "dataset", metavar="SOURCE", help="FiftyOne dataset (NAME or fiftyone:NAME) or labeling output folder"
    )
    parser.add_argument("--coco", help="where to write the COCO JSON (not the run's own coco.json)")
    parser.add_argument(
        "--masks", help="a new (or empty) folder to write one label-map PNG per image into, plus classes.txt"
    )
    add_dataclass_arguments(parser, FormatOptions)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    options = dataclass_from_args(FormatOptions, args)
    summary: dict = {}
    if args.coco or args.masks or options.format is None:
        from pipeline.exports.reviewed import export_dataset  # imports FiftyOne

        summary = export_dataset(args.dataset, args.coco, args.masks)
        destinations = " and ".join(str(summary[key]) for key in ("coco", "masks") if summary[key])
        selection = summary["selection"]
        partial = f", a selection of its run's {selection['run_images']} images" if selection else ""
        print(
            f"exported {summary['images']} images, {summary['annotations']} annotations from dataset "
            f"{summary['dataset']} ({summary['edited_segments']} edited segments in {summary['edited_images']} "
            f"images{partial}) to {destinations}"
        )
    if options.format is not None:
        written = export_format(args.dataset, options)
        counts = ", ".join(f"{v} {k}" for k, v in written.items() if isinstance(v, int))
        print(f"exported {options.format} of {written['source']} to {written['output']} ({counts})")
        if "image_root" in written:
            print(f"task image URLs are paths under {written['image_root']}")
        summary = {**summary, options.format: written}
    return summary


if __name__ == "__main__":
    run_job(main, parse_args)
