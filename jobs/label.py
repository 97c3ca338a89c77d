"""Label a folder (or bucket, list, Parquet, WebDataset) of images with the classes in a vocabulary file.

Examples:
    python jobs/label.py --vocab samples/vocab.txt --input samples/images --output out/labels
    python jobs/label.py --vocab samples/vocab.txt --output out/smoke --smoke-test
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/label.py --vocab samples/vocab.txt --input /data/images --output /data/labels

Rerunning the same command on the same --output resumes: labeled images are skipped, inputs that
failed are tried again, and an image whose file changed since it was labeled (size or modification
time; the bytes, for images stored in Parquet or WebDataset) is labeled again, with a warning that
counts them. Ctrl-C keeps what is finished.
"""

from __future__ import annotations

import argparse
import json

from pipeline.cli import job_parser, run_job, weights_hint
from pipeline.dataclass_args import add_dataclass_arguments, dataclass_from_args
from pipeline.label.job import LabelOptions, run_label_job


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("label.py", __doc__)
    add_dataclass_arguments(parser, LabelOptions)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    manifest = run_label_job(dataclass_from_args(LabelOptions, args))
    print(json.dumps({"output": args.output, **manifest["counts"]}, indent=2))
    return manifest


if __name__ == "__main__":
    run_job(
        main,
        parse_args,
        weights_hint,
        resume_hint="the images labeled so far are saved: rerun the same command to label the rest",
    )
