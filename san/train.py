"""Training SAN: one readable loop (nanoGPT style), on one device or on Ray Train workers.

:func:`train` runs the official recipe (see ``san.losses``, ``san.optim``, ``san.augment``):

1. the model: CLIP weights only (``init="clip"``, ``build_san(cfg, pretrained_clip=True)``), the released
   weights (``"official"``), a checkpoint file (a path), or random weights (``"random"``, smoke tests);
   CLIP is frozen by the model itself except its visual positional embedding; the text classifier is
   frozen (only its background embedding trains) and the training classes' text embeddings are computed
   once and cached;
2. AdamW with SAN's parameter groups, poly learning rate, full-model gradient clipping at 0.01,
   autocast (bf16, or fp16 with a gradient scaler) on GPU only;
3. every ``checkpoint_every`` steps ``OUTPUT/checkpoints/``: ``last.safetensors`` (``san.save_checkpoint``:
   config + weights, what ``jobs/label.py --model`` loads) and ``last.pt`` (optimizer, scheduler, scaler,
   step, python/numpy/torch RNG states of every worker, the training config) for ``resume``;
4. every ``eval_every`` steps: mIoU on the validation folder (``model.predict_scores`` argmax, images
   resized to a short side of ``eval_short_side`` like SAN's test mapper, scores mapped back to the label's
   size), with ``san.metrics``;
5. console lines, a tqdm bar and ``OUTPUT/metrics.csv`` (weighted loss terms, lr, gradient norm, images/s).

Resuming continues exactly: data order and augmentation depend only on ``(seed, step)`` (see
``san.data``) and the RNG states are restored, so on CPU N steps in one go equal N/2 + resume + N/2.
:func:`train_with_ray` runs the same loop on ``num_workers`` Ray Train workers (DDP through
``ray.train.torch.prepare_model``; the global batch is split between them), reporting metrics and
checkpoints through ``ray.train.report``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .augment import TrainAugmentation
from .checkpoint import OFFICIAL_RELEASES, load_checkpoint, load_model, load_official, resolve_official_weights
from .checkpoint import save_checkpoint as save_model
from .config import get_preset
from .data import SegmentationFolder, StepSampler, TrainSamples, collate
from .losses import build_criterion, targets_from_labels
from .metrics import ConfusionMatrix, compute_metrics
from .model import SAN, build_san
from .optim import PolySchedule, build_optimizer
from .transforms import resize_shortest_edge

__all__ = ["TrainConfig", "build_model", "evaluate", "load_resume_state", "train", "train_with_ray"]

CHECKPOINT_DIR = "checkpoints"
LAST_WEIGHTS = "last.safetensors"
LAST_STATE = "last.pt"
METRICS_CSV = "metrics.csv"
EVAL_KEYS = ("mIoU", "fwIoU", "mACC", "pACC")


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are SAN's recipe (COCO-Stuff, 60k steps, batch 32)."""

    data: str  # training folder (images/ + labels/ + classes.txt, see san.data)
    output: str  # run folder: checkpoints/, metrics.csv, config.json
    val_data: str | None = None  # validation folder (same layout); None: no evaluation
    preset: str = "san_vit_b_16"
    init: str = "clip"  # clip | official | random | path of a .safetensors / official .pth checkpoint
    clip_weights: str | None = None  # CLIP weights file replacing the preset's pretrained tag (init=clip)
    steps: int = 60_000
    batch_size: int = 32  # global: split between workers
    lr: float = 1e-4
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    clip_grad_norm: float = 0.01  # full-model L2 clipping; <= 0 disables
    crop_size: int = 640
    short_edge_lengths: tuple[int, ...] | None = None  # None: 0.5..1.5 x crop_size (SAN: 320..960 for 640)
    max_size: int = 2560
    single_category_max_area: float = 1.0
    color_aug: bool = True
    ignore_index: int = 255
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    dtype: str = "auto"  # auto (bf16/fp16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda[:i] (ignored on Ray workers)
    checkpoint_every: int = 5000
    eval_every: int = 5000
    eval_short_side: int = 640  # 0: evaluate at the original size
    eval_limit: int | None = None  # evaluate on at most this many validation images
    log_every: int = 20
    seed: int = 0
    data_workers: int = 4  # DataLoader processes per training worker
    threads: int | None = None  # torch CPU threads (None: torch's default)
    resume: bool = False  # continue from OUTPUT/checkpoints/last.pt when it exists
    stop_at: int | None = None  # stop (with a checkpoint) after this step; the schedule still spans `steps`
    keep_checkpoints: bool = False  # also keep checkpoints/step_XXXXXXX.safetensors of every save
    progress: bool = True

    def __post_init__(self) -> None:
        if self.short_edge_lengths is not None:
            self.short_edge_lengths = tuple(int(s) for s in self.short_edge_lengths)
        for name in ("steps", "batch_size", "crop_size", "checkpoint_every", "eval_every", "log_every", "num_points"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)

    def augmentation(self) -> TrainAugmentation:
        edges = self.short_edge_lengths or tuple(int(x * 0.1 * self.crop_size) for x in range(5, 16))
        return TrainAugmentation(
            short_edge_lengths=edges,
            max_size=self.max_size,
            crop_size=(self.crop_size, self.crop_size),
            single_category_max_area=self.single_category_max_area,
            color_aug=self.color_aug,
            ignore=self.ignore_index,
        )


# ----------------------------------------------------------------------------------------------------------
# model, device, precision


def build_model(cfg: TrainConfig) -> SAN:
    """The model to start training from (``cfg.init``; see the module docstring), in train mode."""
    init = cfg.init
    if init == "clip":
        config = get_preset(cfg.preset)
        if cfg.clip_weights:
            config = config.replace(clip=dataclasses.replace(config.clip, pretrained=str(cfg.clip_weights)))
        model = build_san(config, pretrained_clip=True)
    elif init == "random":
        model = build_san(cfg.preset)
    elif init == "official":
        if cfg.preset not in OFFICIAL_RELEASES:
            raise ValueError(f"no released weights for preset {cfg.preset!r}; released: {sorted(OFFICIAL_RELEASES)}")
        model = load_official(resolve_official_weights(cfg.preset), cfg.preset)
    elif Path(init).suffix == ".safetensors":
        model = load_checkpoint(init)
    elif Path(init).suffix in (".pth", ".pt", ".pkl"):
        model = load_model(init, cfg.preset)
    else:
        raise ValueError(f"--init must be clip, official, random or a checkpoint file, got {init!r}")
    return model.train()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32 (always on CPU: the recipe's mixed precision is GPU-only)."""
    if device.type != "cuda" or name == "fp32":
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _unwrap(model: torch.nn.Module) -> SAN:
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------
# RNG state and checkpoints


def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU and CUDA) RNG states, loadable with ``weights_only``."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def _gather(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _replace(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a copy of ``src`` (a hard link when the filesystem allows)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def save_training_checkpoint(folder: Path, model: SAN, state: dict[str, Any], keep: bool = False) -> Path:
    """Write ``step_N.safetensors`` (the model), then ``last.pt`` (``state`` plus the weights' file name),
    then ``last.safetensors``; older step files are removed unless ``keep``. A crash at any point leaves a
    consistent ``last.pt`` -> weights pair. Returns the path of ``last.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"step_{state['step']:07d}.safetensors"
    save_model(model, weights)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{LAST_STATE}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({**state, "weights": weights.name}, tmp)
        os.replace(tmp, folder / LAST_STATE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _replace(weights, folder / LAST_WEIGHTS)
    if not keep:
        for old in folder.glob("step_*.safetensors"):
            if old != weights:
                old.unlink(missing_ok=True)
    return folder / LAST_WEIGHTS


def load_resume_state(folder: str | os.PathLike[str]) -> tuple[SAN, dict[str, Any]]:
    """The model (train mode) and the training state saved in ``folder`` by :func:`save_training_checkpoint`."""
    folder = Path(folder)
    state = torch.load(folder / LAST_STATE, map_location="cpu", weights_only=True)
    weights = folder / state["weights"]
    if not weights.is_file():
        weights = folder / LAST_WEIGHTS
    return load_checkpoint(weights).train(), state


# ----------------------------------------------------------------------------------------------------------
# evaluation and logging


def evaluate(
    model: SAN,
    dataset: SegmentationFolder,
    short_side: int = 640,
    max_size: int = 2560,
    limit: int | None = None,
    dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """Semantic-segmentation metrics (percent, ``san.metrics`` detectron2 protocol) of ``model`` on
    ``dataset`` with its own class names. Each worker takes images ``rank::world_size``; confusion matrices
    are summed over workers."""
    matrix = ConfusionMatrix(len(dataset.classes), ignore_index=dataset.ignore_index)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    device = model.device
    for index in range(rank, count, world_size):
        image, label = dataset[index]
        resized = resize_shortest_edge(image, short_side, max_size) if short_side > 0 else image
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with _autocast(device, dtype):
            scores = model.predict_scores([tensor], dataset.classes, output_sizes=[label.shape])[0]
        matrix.update(scores.argmax(0).cpu().numpy(), label)
    counts = torch.from_numpy(matrix.matrix.copy())
    if world_size > 1:
        counts = counts.to(device)
        dist.all_reduce(counts)
    return compute_metrics(counts.cpu().numpy(), dataset.classes)


def loss_names(num_levels: int) -> list[str]:
    """Names of the loss terms for ``num_levels`` deep-supervision levels (last level unsuffixed)."""
    terms = ("loss_ce", "loss_mask", "loss_dice")
    return [f"{t}_{i}" for i in range(num_levels - 1) for t in terms] + list(terms)


class MetricsLog:
    """Appends rows to ``metrics.csv`` (fixed columns; empty cells where a row has no value)."""

    def __init__(self, path: Path, terms: Sequence[str]):
        self.path = path
        val = [f"val_{k}" for k in EVAL_KEYS]
        self.columns = ["step", "lr", "loss", *terms, "grad_norm", "images_per_s", "elapsed_s", *val]
        if not path.exists() or path.stat().st_size == 0:
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)

    def truncate_after(self, step: int) -> None:
        """Drop the rows of steps after ``step``."""
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        if len(keep) != len(rows):
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerows(keep)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, restval="", extrasaction="ignore").writerow(row)


# ----------------------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, ray_worker: bool = False) -> dict[str, Any]:
    """Run (or resume) training; returns ``{"step", "checkpoint", "loss", "eval"}`` of the end of the run.

    ``ray_worker``: called inside a Ray Train worker (see :func:`train_with_ray`)."""
    # -- where we run
    if ray_worker:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        rank, world_size = context.get_world_rank(), context.get_world_size()
        device = ray.train.torch.get_device()
    else:
        rank, world_size, device = 0, 1, resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.batch_size % world_size:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by the {world_size} workers")
    batch_size = cfg.batch_size // world_size
    amp_dtype = autocast_dtype(cfg.dtype, device)
    out = Path(cfg.output)
    ckpt_dir = out / CHECKPOINT_DIR
    main = rank == 0

    # -- data
    train_set = SegmentationFolder.from_folder(cfg.data, ignore_index=cfg.ignore_index)
    classes = train_set.classes
    val_set = SegmentationFolder.from_folder(cfg.val_data, ignore_index=cfg.ignore_index) if cfg.val_data else None

    # -- model and training state (a checkpoint to resume from, else a new model)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    state: dict[str, Any] | None = None
    ray_checkpoint = ray.train.get_checkpoint() if ray_worker else None
    if ray_checkpoint is not None:  # Ray restarted the workers after a failure
        with ray_checkpoint.as_directory() as folder:
            model, state = load_resume_state(folder)
    elif cfg.resume and (ckpt_dir / LAST_STATE).is_file():
        model, state = load_resume_state(ckpt_dir)
    else:
        if cfg.resume and main:
            print(f"no checkpoint in {ckpt_dir}: starting a new run")
        model = build_model(cfg)
    model.to(device)
    with torch.no_grad():  # cache the text embeddings once, in float32, outside autocast and inference mode
        model.text_classifier.class_embeddings(classes)
        if val_set is not None:
            model.text_classifier.class_embeddings(val_set.classes)

    criterion = build_criterion(
        cfg.class_weight, cfg.mask_weight, cfg.dice_weight, cfg.no_object_weight, cfg.num_points
    )
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, PolySchedule(cfg.steps, cfg.poly_power))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start_step = 0
    # Each worker's own RNG stream (point sampling in the loss) continues from here, or from the checkpoint.
    torch.manual_seed(cfg.seed + 1_000_003 * (rank + 1))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        if len(state["rng"]) == world_size:
            set_rng_state(state["rng"][rank])
        elif main:
            print(f"checkpoint has RNG states of {len(state['rng'])} workers, this run has {world_size}: reseeded")
    if ray_worker:
        # DDP's note that the query embeddings' gradients (slices of a concatenation) are copied into its
        # buckets rather than aliased: harmless, and the model's layout is not this loop's to change.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    net = _unwrap(model)

    loader = torch.utils.data.DataLoader(
        TrainSamples(train_set, cfg.augmentation(), cfg.seed),
        batch_size=batch_size,
        sampler=StepSampler(batch_size, start_step, rank, world_size),
        num_workers=cfg.data_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global torch RNG untouched
        persistent_workers=False,
    )
    batches = iter(loader)

    terms = loss_names(len(net.config.side_adapter.deep_supervision))
    log = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        log = MetricsLog(out / METRICS_CSV, terms)
        log.truncate_after(start_step)  # rows logged after the checkpoint we resume from are redone
    end_step = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (cfg.progress and main), dynamic_ncols=True)
    sums: dict[str, float] = {}
    seen, started, t0 = 0, time.time(), time.time()
    result: dict[str, Any] = {"step": start_step, "checkpoint": None, "loss": None, "eval": None}

    model.train()
    for step in range(start_step, end_step):
        # -- one optimisation step
        images, labels = next(batches)
        batch = net.normalize_and_pad(images)
        padded = torch.full((labels.shape[0], *batch.shape[-2:]), cfg.ignore_index, dtype=torch.int64)
        padded[:, : labels.shape[1], : labels.shape[2]] = labels
        targets = targets_from_labels(padded.to(device, non_blocking=True), cfg.ignore_index)
        with _autocast(device, amp_dtype):
            output = model(batch, classes)
        losses = criterion.weighted(criterion(output.mask_preds, output.mask_logits, targets))
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm if cfg.clip_grad_norm > 0 else math.inf)
        lr = scheduler.get_last_lr()[0]
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        done = step + 1
        bar.update(1)

        # -- bookkeeping (one device sync for all the numbers of the step)
        numbers = torch.stack([loss, *losses.values(), grad_norm]).tolist()
        values = dict(zip(["loss", *losses, "grad_norm"], numbers, strict=True))
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"loss is {values['loss']} at step {done}: {values}")
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        seen += 1
        last = done == end_step
        row: dict[str, Any] = {}
        if done % cfg.log_every == 0 or last:
            means = {k: v / seen for k, v in sums.items()}
            if world_size > 1:
                packed = torch.tensor([means[k] for k in sorted(means)], device=device, dtype=torch.float64)
                dist.all_reduce(packed)
                means = {k: float(v) / world_size for k, v in zip(sorted(means), packed.tolist(), strict=True)}
            elapsed = time.time() - t0
            row = {
                "step": done,
                "lr": lr,
                **{k: round(v, 6) for k, v in means.items()},
                "images_per_s": round(seen * cfg.batch_size / max(elapsed, 1e-9), 3),
                "elapsed_s": round(time.time() - started, 1),
            }
            result["loss"] = means["loss"]
            if main:
                bar.set_postfix(loss=f"{means['loss']:.3f}", lr=f"{lr:.2e}")
                tqdm.write(
                    f"step {done}/{cfg.steps}  loss {means['loss']:.4f}  "
                    + "  ".join(f"{k[5:]} {means[k]:.4f}" for k in terms[-3:])
                    + f"  grad {means['grad_norm']:.3g}  lr {lr:.3e}  {row['images_per_s']:.1f} img/s"
                )
            sums, seen = {}, 0
        if val_set is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            metrics = evaluate(
                net, val_set, cfg.eval_short_side, cfg.max_size, cfg.eval_limit, amp_dtype, rank, world_size
            )
            result["eval"] = {k: metrics[k] for k in EVAL_KEYS}
            row = {"step": done, **row, **{f"val_{k}": v for k, v in result["eval"].items()}}
            if main:
                tqdm.write(f"step {done}: " + "  ".join(f"{k} {v:.2f}" for k, v in result["eval"].items()))
        if row and log is not None:
            log.write(row)

        checkpoint = None
        if done % cfg.checkpoint_every == 0 or last:
            rngs = _gather(rng_state(), world_size)
            if main:
                state = {
                    "step": done,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rngs,
                    "config": cfg.to_dict(),
                    "classes": list(classes),
                }
                result["checkpoint"] = str(save_training_checkpoint(ckpt_dir, net, state, cfg.keep_checkpoints))
                checkpoint = ckpt_dir
        if ray_worker and (row or done % cfg.checkpoint_every == 0 or last):
            _ray_report(row, done, checkpoint)
        result["step"] = done
        if row:
            t0 = time.time()  # throughput excludes evaluation and checkpointing
    bar.close()
    return result


def _ray_report(row: dict[str, Any], step: int, folder: Path | None) -> None:
    """``ray.train.report`` (every worker calls it at the same steps); rank 0 attaches its new checkpoint."""
    import ray.train

    metrics = {k: v for k, v in row.items() if isinstance(v, int | float)} | {"step": step}
    if folder is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name in (LAST_STATE, LAST_WEIGHTS):
            _replace(folder / name, Path(tmp) / name)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _ray_loop(config: dict[str, Any]) -> None:
    train(TrainConfig.from_dict(config["train"]), ray_worker=True)


def train_with_ray(cfg: TrainConfig, num_workers: int, use_gpu: bool | None = None, cpus_per_worker: float = 1.0):
    """Run :func:`train` on ``num_workers`` Ray Train workers (joins the running Ray, or starts a local one).

    ``use_gpu`` None: GPUs when the cluster has any (one per worker). Returns Ray's ``Result``; the run's
    own files go to ``cfg.output`` as in a single-process run, Ray's copies of the checkpoints to
    ``cfg.output/ray``.
    """
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0 and cfg.device != "cpu"
    output = Path(cfg.output).resolve()
    train_cfg = dataclasses.replace(cfg, output=str(output), progress=cfg.progress)
    trainer = TorchTrainer(
        _ray_loop,
        train_loop_config={"train": train_cfg.to_dict()},
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name="train", storage_path=str(output / "ray"), checkpoint_config=CheckpointConfig(num_to_keep=2)
        ),
    )
    return trainer.fit()
