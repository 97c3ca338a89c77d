"""Write the vocabulary and image list of one of SAN's evaluation sets, for jobs/label.py and jobs/evaluate.py.

Examples:
    python jobs/eval_set_inputs.py --list
    python jobs/eval_set_inputs.py ade150 --root /data/datasets --out work/ade150
    python jobs/label.py --vocab work/ade150/vocab.txt --input work/ade150/images.txt --other none \\
        --output work/ade150/labels
    python jobs/evaluate.py --predictions work/ade150/labels --gt ade150:/data/datasets

ROOT is the datasets root holding the prepared dataset folders (ADEChallengeData2016/, ADE20K_2021_17_01/,
pcontext/, pcontext_full/, VOC2012/, coco/), as for SAN's DETECTRON2_DATASETS; the dataset's own folder
works too. OUT/vocab.txt lists the classes in label order, named exactly as SAN names them; OUT/images.txt
the validation images (absolute paths). A split whose size is not the official one gives a warning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import job_parser, run_job
from pipeline.eval_sets import EVAL_SETS, default_root, write_eval_set_inputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser("eval_set_inputs.py", __doc__)
    parser.add_argument("benchmark", nargs="?", choices=list(EVAL_SETS), help="which evaluation set")
    parser.add_argument("--root", help="datasets root (default: $DETECTRON2_DATASETS, else ./datasets)")
    parser.add_argument("--out", help="folder for vocab.txt and images.txt (default: work/BENCHMARK)")
    parser.add_argument("--list", action="store_true", help="print the known evaluation sets and exit")
    args = parser.parse_args(argv)
    if not args.list and not args.benchmark:
        parser.error("a benchmark name is required (or --list)")
    return args


def main(args: argparse.Namespace) -> int:
    if args.list:
        for spec in EVAL_SETS.values():
            print(
                f"{spec.name:13} {spec.title:19} {spec.num_classes:4} classes {spec.expected_count:5} images  "
                f"{spec.folder}/{spec.image_dir}  {spec.folder}/{spec.label_dir}/*{spec.label_ext}  "
                f"ignore {spec.ignore_value}"
            )
        return 0
    root = args.root or default_root()
    out = Path(args.out or Path("work") / args.benchmark)
    written = write_eval_set_inputs(args.benchmark, root, out)
    for message in written.warnings:
        print(f"warning: {message}", file=sys.stderr)
    print(f"{written.num_images} images -> {written.images_path}")
    print(f"{len(EVAL_SETS[args.benchmark].class_names)} classes -> {written.vocab_path}")
    print("next:")
    # --other none: the paper's numbers are the benchmark's classes alone, every pixel labeled
    label = f"python jobs/label.py --vocab {written.vocab_path} --input {written.images_path} --other none"
    print(f"  {label} --output {out}/labels")
    print(f"  python jobs/evaluate.py --predictions {out}/labels --gt {args.benchmark}:{root}")
    return 0


if __name__ == "__main__":
    run_job(main, parse_args)
