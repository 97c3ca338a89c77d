"""The training loop's side of Ray Train: what :func:`san.training.loop.train` does differently inside a worker
started by :func:`san.training.distributed.train_with_ray`. Ray is imported inside these functions only, so that
``san`` stays importable without it."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..modeling.model import SAN
from .state import LAST_STATE, LAST_WEIGHTS, load_resume_state, replace_file

__all__ = ["ray_placement", "ray_prepare_model", "ray_report", "ray_restored_state"]


def ray_placement() -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)`` of this Ray Train worker."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()


def ray_restored_state() -> tuple[SAN, dict[str, Any]] | None:
    """The model and training state of Ray's checkpoint when Ray restarted the workers after a failure,
    else None."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_resume_state(folder)


def ray_prepare_model(model: SAN) -> torch.nn.Module:
    """``model`` (already on its device) wrapped for DDP by ``ray.train.torch.prepare_model``."""
    import ray.train.torch

    # DDP's note that the query embeddings' gradients (slices of a concatenation) are copied into its
    # buckets rather than aliased: harmless, and the model's layout is not this loop's to change.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return ray.train.torch.prepare_model(model, move_to_device=False)


def ray_report(row: dict[str, Any], step: int, folder: Path | None) -> None:
    """``ray.train.report`` (every worker calls it at the same steps); rank 0 attaches its new checkpoint."""
    import ray.train

    metrics = {k: v for k, v in row.items() if isinstance(v, int | float)} | {"step": step}
    if folder is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name in (LAST_STATE, LAST_WEIGHTS):
            replace_file(folder / name, Path(tmp) / name)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
