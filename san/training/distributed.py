"""Training on Ray Train: :func:`train_with_ray` runs :func:`san.training.loop.train` on ``num_workers`` workers
(DDP through ``ray.train.torch.prepare_model``; the global batch is split between them), which report
metrics and checkpoints through ``ray.train.report`` (see ``san.training.ray_worker``). Ray is imported inside
the functions only, so that ``san`` stays importable without it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import TrainConfig, with_absolute_paths
from .data import DataOpener, open_folder
from .loop import train
from .state import resume_state

__all__ = ["train_with_ray"]


def _ray_loop(config: dict[str, Any]) -> None:
    train(TrainConfig.from_dict(config["train"]), ray_worker=True, open_data=config["open_data"])


def train_with_ray(
    cfg: TrainConfig,
    num_workers: int,
    use_gpu: bool | None = None,
    cpus_per_worker: float = 1.0,
    open_data: DataOpener = open_folder,
):
    """Run :func:`san.training.loop.train` on ``num_workers`` Ray Train workers (joins the running Ray, or starts a
    local one).

    ``use_gpu`` None: GPUs when the cluster has any (one per worker). ``open_data`` (a module-level function,
    which Ray sends to the workers by name) reads the data, as for :func:`san.training.loop.train`. Returns
    Ray's ``Result``; the run's own files go to ``cfg.output`` as in a single-process run, Ray's copies of the
    checkpoints to ``cfg.output/ray``. The run folder is checked here first
    (:func:`san.training.state.resume_state`), so that a new run into a used folder or a resume with other
    settings fails before Ray starts, with its own error.
    """
    resume_state(cfg)  # the workers check again, with the class names; the driver may not see the data
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        # A Ray started here runs no dashboard (its web modules cost seconds of ray.init, and nothing here uses them);
        # include_dashboard applies only to a Ray that ray.init starts: a cluster that it joins keeps its own.
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0 and cfg.device != "cpu"
    train_cfg = with_absolute_paths(cfg)  # the workers' working folder is not the driver's
    output = Path(train_cfg.output)
    trainer = TorchTrainer(
        _ray_loop,
        train_loop_config={"train": train_cfg.to_dict(), "open_data": open_data},
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name="train", storage_path=str(output / "ray"), checkpoint_config=CheckpointConfig(num_to_keep=2)
        ),
    )
    return trainer.fit()
