"""Train SAN on a folder of images and label maps (images/ + labels/ + classes.txt; see docs/training.md).

Examples:
    python jobs/train.py --data /data/mine --val-data /data/mine_val --output out/run1
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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working dir

from pipeline.cli import job_parser, run_job, weights_hint  # noqa: E402
from san.config import PRESETS  # noqa: E402
from san.errors import CheckpointError, WeightsUnavailableError  # noqa: E402

USER_ERRORS = (FileNotFoundError, ValueError, KeyError, WeightsUnavailableError, CheckpointError)
SMOKE = {"steps": 4, "batch_size": 2, "crop_size": 96, "images": 8, "val_images": 4, "size": 96}


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("train.py", __doc__)
    parser.add_argument(
        "--data",
        help="training folder: images/, labels/ (PNG, pixel = class index, 255 = ignore) and classes.txt "
        "(one class name per line); required unless --smoke-test",
    )
    parser.add_argument("--val-data", help="validation folder of the same layout, evaluated every --eval-every steps")
    parser.add_argument(
        "--output",
        required=True,
        help="run folder: checkpoints/, metrics.csv, config.json; one that holds a run needs --resume",
    )
    parser.add_argument(
        "--init",
        default="clip",
        help="where the weights start: 'clip' (CLIP weights of the preset's pretrained tag or --clip-weights; "
        "new side adapter), 'official' (the released SAN weights of --preset, to fine-tune), 'random' "
        "(no weights at all, for tests), or a checkpoint file (this project's .safetensors, or an official .pth "
        "with --preset as its config) (default: %(default)s)",
    )
    parser.add_argument("--clip-weights", help="CLIP weights file (open_clip or OpenAI state dict) for --init clip")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="san_vit_b_16",
        help="model architecture; a .safetensors --init carries its own (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, help="optimisation steps in the whole run (default: 60000)")
    parser.add_argument(
        "--batch-size", type=int, help="images per step, all workers together (default: 32; must divide by --workers)"
    )
    parser.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: %(default)s)")
    parser.add_argument("--crop-size", type=int, help="square training crop; short sides 0.5-1.5x it (default: 640)")
    parser.add_argument("--checkpoint-every", type=int, default=5000, help="steps between checkpoints (default: 5000)")
    parser.add_argument("--eval-every", type=int, default=5000, help="steps between evaluations (default: 5000)")
    parser.add_argument(
        "--eval-short-side",
        type=int,
        default=640,
        help="resize validation images to this short side, as SAN's test mapper (0: original size) (default: 640)",
    )
    parser.add_argument("--eval-limit", type=int, help="evaluate on at most this many validation images")
    parser.add_argument("--log-every", type=int, default=20, help="steps between log lines (default: 20)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT/checkpoints/last.pt (weights, optimizer, schedule, step, RNG states); "
        "starts a new run when there is none. The options that define the run (data, model, --init, recipe, "
        "--seed) must be the checkpoint's; --stop-at, the intervals, --device, --dtype, --val-data and the "
        "evaluation and loader options may change",
    )
    parser.add_argument(
        "--stop-at", type=int, help="stop with a checkpoint after this step (the schedule still spans --steps)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="training workers; more than 1 runs on Ray Train (DDP, one GPU each when the cluster has GPUs) "
        "(default: 1)",
    )
    parser.add_argument("--ray", action="store_true", help="use Ray Train even with --workers 1")
    parser.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves for each worker (default: 1)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (GPU when there is one), cpu or cuda[:i] (default: %(default)s)"
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 autocast on GPUs that support it, else fp16 with a gradient scaler; always fp32 on CPU "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--num-points", type=int, default=12544, help="points per mask for matching and mask losses (default: 12544)"
    )
    parser.add_argument(
        "--single-category-max-area",
        type=float,
        default=1.0,
        help="redraw a crop (up to 10 times) while one class covers this share of it; 1 = off (default: 1.0)",
    )
    parser.add_argument("--no-color-aug", action="store_true", help="no SSD colour jitter")
    parser.add_argument("--data-workers", type=int, default=4, help="data loading processes per worker (default: 4)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per worker (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data order, augmentation and init (default: 0)")
    parser.add_argument(
        "--keep-checkpoints", action="store_true", help="keep checkpoints/step_N.safetensors of every save"
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="the san_tiny model with random weights, on a few generated images, a few steps on CPU: checks the "
        "whole flow and writes a checkpoint jobs/label.py can load (its labels are meaningless)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.smoke_test and not args.data:
        parser.error("--data is required (or --smoke-test)")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    return args


def build_config(args: argparse.Namespace):
    """The :class:`san.training.config.TrainConfig` of the command line (generating the smoke-test data if asked)."""
    from san.training.config import TrainConfig
    from san.training.data import write_synthetic_dataset

    options = dict(
        data=args.data,
        val_data=args.val_data,
        output=args.output,
        preset=args.preset,
        init=args.init,
        clip_weights=args.clip_weights,
        lr=args.lr,
        weight_decay=args.weight_decay,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        eval_short_side=args.eval_short_side,
        eval_limit=args.eval_limit,
        log_every=args.log_every,
        resume=args.resume,
        stop_at=args.stop_at,
        device=args.device,
        dtype=args.dtype,
        num_points=args.num_points,
        single_category_max_area=args.single_category_max_area,
        color_aug=not args.no_color_aug,
        data_workers=args.data_workers,
        threads=args.threads,
        seed=args.seed,
        keep_checkpoints=args.keep_checkpoints,
        progress=not args.no_progress,
    )
    if args.smoke_test:
        root = Path(args.output) / "smoke_data"
        if not (root / "train" / "classes.txt").is_file():
            write_synthetic_dataset(root / "train", SMOKE["images"], SMOKE["size"], seed=0)
            write_synthetic_dataset(root / "val", SMOKE["val_images"], SMOKE["size"], seed=1)
        steps = _given(args.steps, SMOKE["steps"])
        options.update(
            data=str(root / "train"),
            val_data=str(root / "val"),
            preset="san_tiny",
            init="random" if args.init == "clip" else args.init,
            device="cpu",
            data_workers=0,
            eval_short_side=0,
            checkpoint_every=min(args.checkpoint_every, steps),
            eval_every=min(args.eval_every, steps),
            log_every=min(args.log_every, steps),
        )
        batch = _given(args.batch_size, SMOKE["batch_size"] * args.workers)
        crop = _given(args.crop_size, SMOKE["crop_size"])
    else:
        steps = _given(args.steps, 60_000)
        batch = _given(args.batch_size, 32)
        crop = _given(args.crop_size, 640)
    return TrainConfig(steps=steps, batch_size=batch, crop_size=crop, **options)


def _given(value: int | None, default: int) -> int:
    """An option's value, or ``default`` when it was not given (0 is a value: TrainConfig refuses it)."""
    return default if value is None else value


def main(args: argparse.Namespace) -> dict:
    from san.training.distributed import train_with_ray
    from san.training.loop import train

    cfg = build_config(args)
    if args.workers > 1 or args.ray:
        if cfg.device == "cpu" and cfg.threads is None:
            cfg.threads = max(1, int(args.cpus_per_worker))
        result = train_with_ray(
            cfg,
            args.workers,
            use_gpu=False if cfg.device == "cpu" else None,
            cpus_per_worker=args.cpus_per_worker,
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
        summary = {"output": cfg.output, **train(cfg)}
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    run_job(
        main,
        parse_args,
        USER_ERRORS,
        weights_hint,
        resume_hint="rerun the same command with --resume to continue from the last checkpoint",
    )
