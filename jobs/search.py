"""Find the images of a labeling run that contain a thing, by text, without running the image model.

Examples:
    python jobs/search.py out/labels "forklift"
    python jobs/search.py out/labels "forklift" --top 50 --dataset forklift-hits

The run must have kept its regions (jobs/label.py --keep-regions). Each image scores its best region: the
query's share of SAN's class probabilities over the run's vocabulary, its added names and the query, times the
region's mask quality (mean mask probability over the region's own pixels). Only the text tower runs; the
regions are read file by file. Prints the hits best first (score, the region's box x,y,w,h in pixels of the
image, path); --dataset also saves them as a FiftyOne dataset with each region's mask (open it in the App with
`fiftyone app launch NAME`).
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from pipeline.cli import job_parser, run_job
from pipeline.region_search import search_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser("search.py", __doc__)
    parser.add_argument("output", metavar="RUN", help="the labeling run (its --output, labeled with --keep-regions)")
    parser.add_argument("query", metavar="TEXT", help='what to look for, as a vocabulary name ("forklift")')
    parser.add_argument("--top", type=int, default=20, help="how many images to show (default 20)")
    parser.add_argument("--dataset", help="also save the hits as a FiftyOne dataset of this name, with their regions")
    parser.add_argument("--overwrite", action="store_true", help="replace the --dataset of an earlier search")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    if not args.query.strip():
        parser.error("TEXT is empty")
    return args


def main(args: argparse.Namespace) -> list:
    with tqdm(unit="img", desc="searching", disable=not args.progress, file=sys.stderr) as bar:
        hits = search_run(args.output, args.query, args.top, progress=bar.update)
    print(f"{'rank':>4}  {'score':>6}  {'box (x, y, w, h)':<22}  image")
    for rank, hit in enumerate(hits, start=1):
        box = ", ".join(map(str, hit.box)) if hit.box else "-"
        print(f"{rank:>4}  {hit.score:>6.3f}  {box:<22}  {hit.image_path}")
    if args.dataset:
        from pipeline.review.search_hits import save_search_hits  # FiftyOne only when asked: seconds of import

        name = save_search_hits(args.output, args.query, hits, args.dataset, args.overwrite)
        print(f"saved {len(hits)} hits as FiftyOne dataset {name!r}: fiftyone app launch {name}", file=sys.stderr)
    return hits


if __name__ == "__main__":
    run_job(main, parse_args)
