"""Training SAN: one readable loop (nanoGPT style), on one device or on Ray Train workers.

:func:`train` runs the official recipe as :class:`san.training.config.TrainConfig` configures it: build the
model, AdamW with SAN's parameter groups, checkpoints for ``jobs/label.py --model`` and for an exact
``resume``, periodic validation mIoU, and console/CSV logs. The steps in detail: ``docs/training.md``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import OptionError
from ..modeling.model import SAN
from ..precision import autocast_context, resolve_device, training_autocast_dtype
from .config import TrainConfig
from .data import DataOpener, LabeledImages, StepSampler, TrainSamples, collate, open_folder
from .evaluate import EVAL_KEYS, evaluate
from .init import build_model, unwrap
from .log import METRICS_CSV, LossMeter, MetricsLog, loss_names, print_eval, print_losses
from .losses import SetCriterion, build_criterion, targets_from_labels
from .optim import PolySchedule, build_optimizer
from .ray_worker import ray_placement, ray_prepare_model, ray_report, ray_restored_state
from .state import (
    CHECKPOINT_DIR,
    all_rng_states,
    load_resume_state,
    resume_state,
    save_training_checkpoint,
    set_rng_state,
)

__all__ = ["train"]


def train(cfg: TrainConfig, ray_worker: bool = False, open_data: DataOpener = open_folder) -> dict[str, Any]:
    """Run (or resume) training; returns ``{"step", "checkpoint", "loss", "eval"}`` of the end of the run.

    ``ray_worker``: called inside a Ray Train worker (see :func:`san.training.distributed.train_with_ray`).
    ``open_data``: reads ``cfg.data`` and ``cfg.val_data`` (default: the folder layout of ``docs/training.md``)."""
    run = _setup(cfg, ray_worker, open_data)
    log = _open_run_folder(run)
    bar = tqdm(total=cfg.steps, initial=run.start_step, disable=not (cfg.progress and run.main), dynamic_ncols=True)
    meter = LossMeter()
    result: dict[str, Any] = {"step": run.start_step, "checkpoint": None, "loss": None, "eval": None}

    run.model.train()
    for step in range(run.start_step, run.end_step):
        numbers, lr = _optimisation_step(run, *next(run.batches))
        done = step + 1
        bar.update(1)
        meter.add(numbers, done)
        last = done == run.end_step
        checkpoint_step = done % cfg.checkpoint_every == 0 or last

        row: dict[str, Any] = {}
        if done % cfg.log_every == 0 or last:
            means, fields = meter.summary(cfg.batch_size, run.world_size, run.device)
            row = {"step": done, "lr": lr, **fields}
            result["loss"] = means["loss"]
            if run.main:
                print_losses(bar, done, cfg.steps, means, lr, row["images_per_s"], run.terms)
        if run.val_set is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            result["eval"] = _evaluate(run, done)
            row = {"step": done, **row, **{f"val_{k}": v for k, v in result["eval"].items()}}
        if row and log is not None:
            log.write(row)

        checkpoint = None  # the folder rank 0 has just saved to
        if checkpoint_step:
            weights = _save_checkpoint(run, done)
            if weights is not None:
                result["checkpoint"], checkpoint = str(weights), weights.parent
        if ray_worker and (row or checkpoint_step):
            ray_report(row, done, checkpoint)
        result["step"] = done
        if row:
            meter.restart_clock()  # throughput excludes evaluation and checkpointing
    bar.close()
    return result


# ----------------------------------------------------------------------------------------------------------
# setup


@dataclass
class _Run:
    """What the loop works with on this worker (see :func:`_setup`)."""

    cfg: TrainConfig
    rank: int
    world_size: int
    device: torch.device
    amp_dtype: torch.dtype | None  # None: float32
    classes: list[str]  # the training classes
    val_set: LabeledImages | None
    model: torch.nn.Module  # what the loop calls: the SAN, DDP-wrapped on Ray workers
    net: SAN  # the SAN itself
    criterion: SetCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    params: list[torch.nn.Parameter]  # the optimised parameters (gradient clipping)
    start_step: int  # 0, or the step of the checkpoint resumed from
    batches: Iterator[tuple[list[torch.Tensor], torch.Tensor]]  # this worker's share, from start_step on

    @property
    def main(self) -> bool:
        """Rank 0: the worker that writes the run's files and the console lines."""
        return self.rank == 0

    @property
    def end_step(self) -> int:
        """The step this run stops after (``stop_at``; the schedule still spans ``steps``)."""
        return min(self.cfg.steps, self.cfg.stop_at) if self.cfg.stop_at is not None else self.cfg.steps

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.cfg.output) / CHECKPOINT_DIR

    @property
    def terms(self) -> list[str]:
        """The names of the weighted loss terms."""
        return loss_names(len(self.net.config.side_adapter.deep_supervision))


def _setup(cfg: TrainConfig, ray_worker: bool, open_data: DataOpener) -> _Run:
    """This worker's placement, data, model (resumed or new) and optimiser, and its batches from the
    resumed step on. The global RNGs are seeded (and restored) here, in the order resuming relies on."""
    rank, world_size, device = _placement(cfg, ray_worker)
    if cfg.batch_size % world_size:
        raise OptionError(f"`batch_size` {cfg.batch_size} is not divisible by the {world_size} workers")
    amp_dtype = training_autocast_dtype(cfg.dtype, device)
    train_set = open_data(cfg.data, "data", cfg.ignore_index)
    val_set = open_data(cfg.val_data, "val_data", cfg.ignore_index) if cfg.val_data else None
    restored = ray_restored_state() if ray_worker else None  # Ray restarted the workers after a failure
    state = restored[1] if restored is not None else resume_state(cfg, train_set.classes)
    _check_samples([train_set, val_set], rank, world_size)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = restored[0] if restored is not None else _initial_model(cfg, state, main=rank == 0)
    model.to(device)
    with torch.no_grad():  # cache the text embeddings once, in float32, outside autocast and inference mode
        model.text_classifier.class_embeddings(train_set.classes)
        if val_set is not None:
            model.text_classifier.class_embeddings(val_set.classes)

    criterion = build_criterion(
        cfg.class_weight, cfg.mask_weight, cfg.dice_weight, cfg.no_object_weight, cfg.num_points
    )
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, PolySchedule(cfg.steps, cfg.poly_power))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # Each worker's own RNG stream (point sampling in the loss) continues from here, or from the checkpoint.
    torch.manual_seed(cfg.seed + 1_000_003 * (rank + 1))
    start_step = 0
    if state is not None:
        start_step = _restore(state, optimizer, scheduler, scaler, rank, world_size)
    wrapped = ray_prepare_model(model) if ray_worker else model

    loader = _loader(cfg, train_set, start_step, rank, world_size, device)
    return _Run(
        cfg=cfg,
        rank=rank,
        world_size=world_size,
        device=device,
        amp_dtype=amp_dtype,
        classes=train_set.classes,
        val_set=val_set,
        model=wrapped,
        net=unwrap(wrapped),
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        params=params,
        start_step=start_step,
        batches=iter(loader),
    )


def _placement(cfg: TrainConfig, ray_worker: bool) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)`` of this worker (Ray's, or one local process on ``cfg.device``), with
    torch's CPU threads and current CUDA device set."""
    rank, world_size, device = ray_placement() if ray_worker else (0, 1, resolve_device(cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world_size, device


def _check_samples(datasets: list[LabeledImages | None], rank: int, world_size: int) -> None:
    """Check every sample of the datasets once (``LabeledImages.check``; each worker its share), so
    that a bad label stops the run now rather than when a step draws it."""
    for dataset in datasets:
        if dataset is not None:
            if rank == 0:
                print(f"checking the {len(dataset)} samples of {dataset.source}")
            dataset.check(rank, world_size)


def _initial_model(cfg: TrainConfig, state: dict[str, Any] | None, main: bool) -> SAN:
    """The model to train: the checkpoint of ``state`` (``OUTPUT/checkpoints/``, see
    :func:`san.training.state.resume_state`), else a new one (:func:`san.training.init.build_model`)."""
    folder = Path(cfg.output) / CHECKPOINT_DIR
    if state is not None:
        return load_resume_state(folder, state)[0]
    if cfg.resume and main:
        print(f"no checkpoint in {folder}: starting a new run")
    return build_model(cfg)


def _restore(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
    rank: int,
    world_size: int,
) -> int:
    """Load the optimizer, scheduler, scaler and this worker's RNG states of a training checkpoint (RNG
    states only when it has one per worker; the scaler's only when it was enabled, i.e. fp16); returns its
    step."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:  # empty when saved without fp16 (CPU, bf16): a new scaler then
        scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == world_size:
        set_rng_state(state["rng"][rank])
    elif rank == 0:
        print(f"checkpoint has RNG states of {len(state['rng'])} workers, this run has {world_size}: reseeded")
    return int(state["step"])


def _loader(
    cfg: TrainConfig, train_set: LabeledImages, start_step: int, rank: int, world_size: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """This worker's share of each global batch (augmented samples, see ``san.training.data``) from
    ``start_step`` on."""
    batch_size = cfg.batch_size // world_size
    return torch.utils.data.DataLoader(
        TrainSamples(train_set, cfg.augmentation(), cfg.seed),
        batch_size=batch_size,
        sampler=StepSampler(batch_size, start_step, rank, world_size),
        num_workers=cfg.data_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global torch RNG untouched
        persistent_workers=False,
    )


def _open_run_folder(run: _Run) -> MetricsLog | None:
    """On rank 0: ``OUTPUT/config.json`` and the metrics log, without the rows logged after the checkpoint
    resumed from (those steps are redone). None on the other workers."""
    if not run.main:
        return None
    out = Path(run.cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(run.cfg.to_dict(), indent=2) + "\n")
    log = MetricsLog(out / METRICS_CSV, run.terms)
    log.truncate_after(run.start_step)
    return log


# ----------------------------------------------------------------------------------------------------------
# one step, evaluation, checkpoint


def _optimisation_step(
    run: _Run, images: list[torch.Tensor], labels: torch.Tensor
) -> tuple[dict[str, torch.Tensor], float]:
    """One step of the recipe on a batch: forward (autocast), the weighted losses, scaled backward, gradient
    clipping, optimizer and schedule. Returns the step's ``loss``, weighted terms and ``grad_norm`` (tensors,
    not yet synchronised) and the learning rate of the step."""
    cfg = run.cfg
    batch = run.net.normalize_and_pad(images)
    padded = torch.full((labels.shape[0], *batch.shape[-2:]), cfg.ignore_index, dtype=torch.int64)
    padded[:, : labels.shape[1], : labels.shape[2]] = labels
    targets = targets_from_labels(padded.to(run.device, non_blocking=True), cfg.ignore_index)
    with autocast_context(run.device, run.amp_dtype):
        output = run.model(batch, run.classes)
    losses = run.criterion.weighted(run.criterion(output.mask_preds, output.mask_logits, targets))
    loss = sum(losses.values())
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    max_norm = cfg.clip_grad_norm if cfg.clip_grad_norm > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, max_norm)
    lr = run.scheduler.get_last_lr()[0]
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return {"loss": loss, **losses, "grad_norm": grad_norm}, lr


def _evaluate(run: _Run, step: int) -> dict[str, float]:
    """The validation metrics (:data:`san.training.evaluate.EVAL_KEYS`) at ``step``, printed by rank 0 (a collective
    on several workers: each evaluates its share)."""
    cfg = run.cfg
    metrics = evaluate(
        run.net, run.val_set, cfg.eval_short_side, cfg.max_size, cfg.eval_limit, run.amp_dtype, run.rank, run.world_size
    )
    scores = {k: metrics[k] for k in EVAL_KEYS}
    if run.main:
        print_eval(step, scores)
    return scores


def _save_checkpoint(run: _Run, step: int) -> Path | None:
    """Gather every worker's RNG states (a collective), then on rank 0 save the training checkpoint of
    ``step``; returns its ``last.safetensors`` (None on the other workers)."""
    rngs = all_rng_states(run.world_size)
    if not run.main:
        return None
    state = {
        "step": step,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rngs,
        "config": run.cfg.to_dict(),
        "classes": list(run.classes),
    }
    return save_training_checkpoint(run.checkpoint_dir, run.net, state, run.cfg.keep_checkpoints)
