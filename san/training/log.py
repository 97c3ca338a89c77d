"""What the training loop reports: running loss means and throughput (:class:`LossMeter`), console lines
under the tqdm bar, and ``OUTPUT/metrics.csv`` (:class:`MetricsLog`: weighted loss terms, lr, gradient
norm, images/s, validation metrics)."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from .evaluate import EVAL_KEYS

__all__ = ["METRICS_CSV", "LossMeter", "MetricsLog", "loss_names", "print_eval", "print_losses"]

METRICS_CSV = "metrics.csv"


def loss_names(num_levels: int) -> list[str]:
    """Names of the loss terms for ``num_levels`` deep-supervision levels (last level unsuffixed)."""
    terms = ("loss_ce", "loss_mask", "loss_dice")
    return [f"{t}_{i}" for i in range(num_levels - 1) for t in terms] + list(terms)


class LossMeter:
    """Means of each step's numbers (``loss``, its terms, ``grad_norm``) between two log lines, and the
    throughput since the clock was last restarted."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.seen = 0
        self.started = time.time()
        self.t0 = time.time()

    def add(self, numbers: dict[str, torch.Tensor], step: int) -> None:
        """Add the numbers of ``step`` (one device sync for all of them); raises ``FloatingPointError``
        when the loss is not finite."""
        values = dict(zip(numbers, torch.stack(list(numbers.values())).tolist(), strict=True))
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"loss is {values['loss']} at step {step}: {values}")
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.seen += 1

    def summary(
        self, batch_size: int, world_size: int = 1, device: torch.device | None = None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """``(means, fields)`` of the steps added since the last summary, then starts over: the means (over
        the workers too: a collective when ``world_size > 1``) and the metrics-row fields (rounded means,
        ``images_per_s`` of the global ``batch_size``, ``elapsed_s`` since the meter was made)."""
        means = {k: v / self.seen for k, v in self.sums.items()}
        if world_size > 1:
            packed = torch.tensor([means[k] for k in sorted(means)], device=device, dtype=torch.float64)
            dist.all_reduce(packed)
            means = {k: float(v) / world_size for k, v in zip(sorted(means), packed.tolist(), strict=True)}
        elapsed = time.time() - self.t0
        fields = {
            **{k: round(v, 6) for k, v in means.items()},
            "images_per_s": round(self.seen * batch_size / max(elapsed, 1e-9), 3),
            "elapsed_s": round(time.time() - self.started, 1),
        }
        self.sums, self.seen = {}, 0
        return means, fields

    def restart_clock(self) -> None:
        """Start the throughput clock now (it excludes evaluation and checkpointing)."""
        self.t0 = time.time()


def print_losses(
    bar: tqdm, step: int, steps: int, means: dict[str, float], lr: float, images_per_s: float, terms: Sequence[str]
) -> None:
    """The bar's postfix and a console line: loss, the last level's terms, gradient norm, lr, images/s."""
    bar.set_postfix(loss=f"{means['loss']:.3f}", lr=f"{lr:.2e}")
    tqdm.write(
        f"step {step}/{steps}  loss {means['loss']:.4f}  "
        + "  ".join(f"{k[5:]} {means[k]:.4f}" for k in terms[-3:])
        + f"  grad {means['grad_norm']:.3g}  lr {lr:.3e}  {images_per_s:.1f} img/s"
    )


def print_eval(step: int, metrics: dict[str, float]) -> None:
    """A console line of the validation metrics at ``step``."""
    tqdm.write(f"step {step}: " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))


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
