"""The options of ``jobs/train.py`` beside :class:`san.training.config.TrainConfig`'s: how the job runs
the training (Ray Train workers, the smoke test), none of which the run's config records."""

from __future__ import annotations

from dataclasses import dataclass, field

from san.errors import OptionError


@dataclass(kw_only=True)
class RunOptions:
    """How ``jobs/train.py`` runs the training (its parser adds these fields to TrainConfig's)."""

    workers: int = field(
        default=1,
        metadata={
            "help": "training workers; more than 1 runs on Ray Train (DDP, one GPU each when the cluster has GPUs)"
        },
    )
    ray: bool = field(default=False, metadata={"help": "use Ray Train even with --workers 1"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs Ray reserves for each worker"})
    smoke_test: bool = field(
        default=False,
        metadata={
            "help": "the san_tiny model with random weights, on a few generated images, a few steps on CPU: checks "
            "the whole flow and writes a checkpoint jobs/label.py can load (its labels are meaningless)"
        },
    )

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise OptionError(f"`workers` must be >= 1, got {self.workers}")
