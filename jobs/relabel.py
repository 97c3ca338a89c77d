"""Label a run's images again with a new vocabulary from the regions it kept (jobs/label.py --keep-regions), without
the images or the image model.

Examples:
    python jobs/label.py --vocab vocab.txt --input /data/images --output out/labels --keep-regions fp32
    python jobs/relabel.py out/labels --vocab vocab_v2.txt --output out/labels_v2
    python jobs/relabel.py out/labels --vocab vocab_v2.txt --output out/labels_v3 --other none --min-score 0.3
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/relabel.py /data/labels --vocab vocab_v2.txt --output /data/labels_v2

The new run folder holds what jobs/label.py writes (predictions/, coco.json, errors.parquet, manifest.json naming
the source run), and reviews, scores and exports like any run. --other, --min-score and --templates default to the
source run's; per-class minimum scores come from the new vocabulary ('name @ 0.4'). With fp32 regions the label
maps and segments are identical to a fresh jobs/label.py run with the new vocabulary and the same options on the
same machine; with fp16 regions nearly so. Only the text tower runs, once; the per-image work (class logits,
post-processing, PNG/RLE encoding, writing) runs in Ray tasks on CPUs. Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json

from pipeline.cli import job_parser, run_job, weights_hint
from pipeline.dataclass_args import add_dataclass_arguments, dataclass_from_args
from pipeline.relabel.job import run_relabel_job
from pipeline.relabel.options import RelabelOptions


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("relabel.py", __doc__)
    parser.add_argument("run", metavar="RUN", help="the folder of a finished jobs/label.py --keep-regions run")
    add_dataclass_arguments(parser, RelabelOptions)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    manifest = run_relabel_job(dataclass_from_args(RelabelOptions, args, run=args.run))
    print(json.dumps({"output": args.output, **manifest["counts"]}, indent=2))
    return manifest


if __name__ == "__main__":
    run_job(
        main,
        parse_args,
        weights_hint,
        resume_hint="the images relabeled so far are saved: rerun the same command to relabel the rest",
    )
