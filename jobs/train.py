"""Train SAN on a folder of images and label maps (images/ + labels/ + classes.txt), a labeling run's output
folder, or a FiftyOne dataset made by jobs/review.py (fiftyone:DATASET, masks as edited); see docs/training.md.

Examples:
    python jobs/train.py --data /data/mine --val-data /data/mine_val --output out/run1
    python jobs/train.py --data fiftyone:san-labels-1a2b3c4d --output out/ft --init official --steps 2000
    python jobs/train.py --data /data/mine --output out/ft --init official --steps 5000 --lr 2e-5
    python jobs/train.py --data /data/mine --output out/run1 --resume          # continue a stopped run
    python jobs/train.py --output out/smoke --smoke-test                          # a minute on CPU, no data
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train.py --data /data/coco_stuff --output /shared/run --workers 8

The run folder gets checkpoints/last.safetensors (label with it: jobs/label.py --model
OUTPUT/checkpoints/last.safetensors), checkpoints/last.pt (for --resume), metrics.csv and config.json.
Defaults are SAN's recipe: AdamW lr 1e-4, weight decay 1e-4, poly schedule, gradient clipping 0.01,
640x640 crops, batch 32, 60k steps, mixed precision on GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli import job_parser, run_job, weights_hint
from pipeline.dataclass_args import add_dataclass_arguments, dataclass_from_args
from pipeline.train_options import RunOptions
from pipeline.training_data import open_training_data
from san.training.config import TrainConfig

# The smoke test's data and the defaults of its options (a command may still give them).
SMOKE = {"steps": 4, "batch_size": 2, "crop_size": 96, "images": 8, "val_images": 4, "size": 96}


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("train.py", __doc__)
    add_dataclass_arguments(parser, TrainConfig)
    add_dataclass_arguments(parser, RunOptions)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke_test:  # the smoke test's own defaults, for the options the command does not give
        batch_size = SMOKE["batch_size"] * args.workers
        parser.set_defaults(steps=SMOKE["steps"], batch_size=batch_size, crop_size=SMOKE["crop_size"])
        args = parser.parse_args(argv)
    return args


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of the command line (generating the smoke-test data if asked)."""
    from san.training.synthetic import write_synthetic_dataset

    if not args.smoke_test:
        return dataclass_from_args(TrainConfig, args)
    root = Path(args.output) / "smoke_data"
    if not (root / "train" / "classes.txt").is_file():
        write_synthetic_dataset(root / "train", SMOKE["images"], SMOKE["size"], seed=0)
        write_synthetic_dataset(root / "val", SMOKE["val_images"], SMOKE["size"], seed=1)
    return dataclass_from_args(
        TrainConfig,
        args,
        data=str(root / "train"),
        val_data=str(root / "val"),
        preset="san_tiny",
        init="random" if args.init == "clip" else args.init,
        device="cpu",
        data_workers=0,
        eval_short_side=0,
        checkpoint_every=min(args.checkpoint_every, args.steps),
        eval_every=min(args.eval_every, args.steps),
        log_every=min(args.log_every, args.steps),
    )


def main(args: argparse.Namespace) -> dict:
    from san.training.distributed import train_with_ray
    from san.training.loop import train

    run = dataclass_from_args(RunOptions, args)
    cfg = build_config(args)
    if run.workers > 1 or run.ray:
        if cfg.device == "cpu" and cfg.threads is None:
            cfg.threads = max(1, int(run.cpus_per_worker))
        result = train_with_ray(
            cfg,
            run.workers,
            use_gpu=False if cfg.device == "cpu" else None,
            cpus_per_worker=run.cpus_per_worker,
            open_data=open_training_data,
        )
        if result.error:
            raise result.error
        summary = {
            "output": cfg.output,
            "step": result.metrics.get("step") if result.metrics else None,
            "checkpoint": str(Path(cfg.output) / "checkpoints" / "last.safetensors"),
            "ray_checkpoint": result.checkpoint.path if result.checkpoint else None,
        }
    else:
        summary = {"output": cfg.output, **train(cfg, open_data=open_training_data)}
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    run_job(
        main,
        parse_args,
        weights_hint,
        resume_hint="rerun the same command with --resume to continue from the last checkpoint",
    )
