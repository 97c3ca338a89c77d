"""Label a folder (or bucket, list, Parquet, WebDataset) of images with the classes in a vocabulary file.

Examples:
    python jobs/label.py --vocab samples/vocab.txt --input samples/images --output out/labels
    python jobs/label.py --vocab samples/vocab.txt --output out/smoke --smoke-test
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/label.py --vocab samples/vocab.txt --input /data/images --output /data/labels

Rerunning the same command on the same --output resumes: labeled images are skipped, inputs that
failed are tried again. Ctrl-C keeps what is finished.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working dir

from pipeline.cli import job_parser, run_job, weights_hint  # noqa: E402
from pipeline.label.job import USER_ERRORS, LabelOptions, run_label_job  # noqa: E402
from san.modeling.text_classifier import TEMPLATE_SETS  # noqa: E402
from san.predictor import DTYPES  # noqa: E402


def _workers(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser("label.py", __doc__)
    parser.add_argument(
        "--vocab", required=True, help="UTF-8 file, one class per line; '#' comments; synonyms as 'name: syn, syn'"
    )
    parser.add_argument(
        "--input",
        help="a directory (recursive), a glob, a text file of paths, a Parquet file/folder with a path or "
        "image-bytes column, or WebDataset .tar shards; local or any pyarrow filesystem URI (s3://, gs://). "
        "Optional with --smoke-test (then a few generated images)",
    )
    parser.add_argument(
        "--output", required=True, help="output directory (Parquet shards, coco.json, errors, manifest)"
    )
    parser.add_argument(
        "--model",
        default="san_vit_b_16",
        help="a released preset (san_vit_b_16, san_vit_l_14; cached download from Hugging Face, or $SAN_WEIGHTS), "
        "this project's .safetensors checkpoint, an official .pth checkpoint with --config, or random:<preset> "
        "(random weights, for benchmarks) (default: %(default)s)",
    )
    parser.add_argument(
        "--config", help="config of an official .pth checkpoint: a preset name or the official YAML/JSON"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call in each worker (default: 4)")
    parser.add_argument(
        "--workers",
        type=_workers,
        help="predictor actor pool size, N or MIN-MAX (default: 1 to as many as the cluster fits)",
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        help="GPUs per predictor actor, fractions allowed (default: 1 when the cluster has GPUs, else 0)",
    )
    parser.add_argument("--short-side", type=int, default=640, help="resize the short side to this (default: 640)")
    parser.add_argument("--max-size", type=int, default=2560, help="cap on the resized long side (default: 2560)")
    parser.add_argument(
        "--templates", choices=sorted(TEMPLATE_SETS), help="prompt templates (default: the model's, vild)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="fp32, or bf16/fp16 autocast on GPU (default: fp32)"
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=0.0,
        help="pixels whose best class score is below this become 255 (unlabeled) and join no segment "
        "(default: 0, label everything)",
    )
    parser.add_argument("--limit", type=int, help="label at most this many new images")
    parser.add_argument("--shard-size", type=int, default=256, help="rows per Parquet file written (default: 256)")
    parser.add_argument("--bytes-column", help="Parquet column with the encoded image bytes (default: auto-detect)")
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="a tiny random model on CPU (labels are meaningless): see the whole flow in a minute",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    options = LabelOptions(
        vocab=args.vocab,
        output=args.output,
        input=args.input,
        model=args.model,
        config=args.config,
        batch_size=args.batch_size,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        short_side=args.short_side,
        max_size=args.max_size,
        templates=args.templates,
        dtype=args.dtype,
        min_score=args.min_score,
        limit=args.limit,
        bytes_column=args.bytes_column,
        shard_size=args.shard_size,
        smoke_test=args.smoke_test,
        progress=not args.no_progress,
    )
    manifest = run_label_job(options)
    print(json.dumps({"output": args.output, **manifest["counts"]}, indent=2))
    return manifest


if __name__ == "__main__":
    run_job(
        main,
        parse_args,
        USER_ERRORS,
        weights_hint,
        resume_hint="the images labeled so far are saved: rerun the same command to label the rest",
    )
