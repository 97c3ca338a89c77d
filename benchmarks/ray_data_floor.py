"""Ray Data's own floor under the labeling job: the job's stage layout (its blocks, tasks, actor pool, bookkeeping
actor and Ray Data's singleton actors, with the resources the job plans for ``--model null``) with no work in any
stage, on a fresh local Ray of the CPUs given; and beside it the least layout with an actor pool. It prints, per run
and layout, seconds from the end of ``ray.init`` to the first record out of the last stage and to the last, and
``ray.init``'s own seconds.

    python benchmarks/ray_data_floor.py --cpus 2 --runs 3

With one file's worth of inputs (the job's 256 rows per file) the first record is Ray Data's start: the job's first
result comes no sooner, however little its own stages cost. With many inputs the records come nearly together at the
end (nothing holds them up), and the time is Ray Data's cost per block on top of its start. ``null_pipeline.py
--floor`` runs the first beside each job."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
from _report import emit

from pipeline.label.batching import WINDOW_BATCHES, batches_per_block, model_batch_blocks
from pipeline.label.decode import EXPANDED_ROWS
from pipeline.label.job import LabelOptions
from pipeline.label.resources import local_ray_config, plan_resources, start_on_driver_node
from pipeline.ray_internals import start_data_actors

DEFAULT_SHARD_SIZE = LabelOptions.shard_size
Stage = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # a map_batches function
if __name__ != "__main__":  # imported (null_pipeline.py, the tests): Ray's workers cannot import benchmarks/ modules
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class _Book:
    """The run's bookkeeping actor (the job's ``RunBook``), idle."""

    def ping(self) -> bool:
        return True


def _same(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stage that does nothing."""
    return batch


class _ModelStage:
    """The actor pool's stage, doing nothing."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch


def _first_of_each_batch(batch_size: int) -> Stage:
    """The grouping stage's shape: one row out per ``batch_size`` rows in (one row per model batch)."""

    def group(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"image_path": batch["image_path"][::batch_size]}

    return group


def _per_image(batch_size: int) -> Stage:
    """The encoding stage's shape: one row out per image of each model batch."""

    def encode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"image_path": np.repeat(batch["image_path"], batch_size)}

    return encode


def _one_record(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The writing stage's shape: one small record per file."""
    return {"labeled": np.array([len(batch["image_path"])])}


def floor_seconds(
    images: int, batch_size: int = 16, shard_size: int = DEFAULT_SHARD_SIZE, least: bool = False
) -> dict[str, float]:
    """On the Ray this process is connected to: seconds from this call to the first record out of the job's stage
    layout with no work in any stage (``first_record``) and to its end (``seconds``), for ``images`` inputs.
    ``least``: the least layout with an actor pool instead (inputs in blocks of one task each -> a task stage -> the
    pool -> a task stage writing one record per file; none of the job's bookkeeping)."""
    started = time.perf_counter()
    plan = plan_resources(None, None, null_model=True)
    cpu = {"num_cpus": plan.decode_cpus}
    block = batches_per_block(batch_size)
    book = None if least else start_on_driver_node(_Book)
    if least:
        inputs = [{"image_path": f"{i:08d}.jpg"} for i in range(0, images, batch_size)]
        dataset = ray.data.from_items(inputs, override_num_blocks=-(-len(inputs) // block))
    else:
        start_data_actors()
        dataset = _job_inputs(images, batch_size, cpu)
    decode = ray.data.TaskPoolStrategy(size=plan.decode_tasks)
    dataset = dataset.map_batches(_same, batch_size=block, compute=decode, **cpu)
    pool = ray.data.ActorPoolStrategy(min_size=plan.workers[0], max_size=plan.workers[1])
    dataset = dataset.map_batches(_ModelStage, batch_size=block, compute=pool, num_cpus=plan.cpus_per_worker)
    encode = ray.data.TaskPoolStrategy(size=plan.encode_tasks)
    dataset = dataset.map_batches(_per_image(batch_size), batch_size=None, compute=encode, **cpu)
    dataset = dataset.map_batches(_one_record, batch_size=shard_size, compute=encode, **cpu)
    first, labeled = None, 0
    for record in dataset.iter_rows():
        first = first or time.perf_counter()
        labeled += int(record["labeled"])
    if book is not None:
        ray.get(book.ping.remote())
        ray.kill(book)
    if labeled < images:  # (each window's last batch counts as full)
        raise RuntimeError(f"the floor's stages passed {labeled} of {images} inputs on")
    ended = time.perf_counter()
    return {"first_record": (first or ended) - started, "seconds": ended - started}


def _job_inputs(images: int, batch_size: int, cpu: dict[str, float]) -> ray.data.Dataset:
    """The job's stages up to its model batches: listing blocks -> skip -> group (one row per model batch) ->
    blocks of :func:`batches_per_block` rows."""
    rows = [{"image_path": f"{i:08d}.jpg", "data": b"", "error": ""} for i in range(images)]
    dataset = ray.data.from_items(rows, override_num_blocks=-(-images // EXPANDED_ROWS))
    dataset = dataset.map_batches(_same, batch_format="numpy", **cpu)
    dataset = dataset.map_batches(_first_of_each_batch(batch_size), batch_size=batch_size * WINDOW_BATCHES, **cpu)
    return model_batch_blocks(dataset, batch_size, cpu)


def start_local_ray(cpus: int) -> None:
    """A fresh local Ray of ``cpus`` CPUs, as the job starts one (``pipeline.label.resources.init_ray``)."""
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        logging_level="ERROR",
        _system_config=local_ray_config(),
    )


def fresh_floor(
    images: int, cpus: int, batch_size: int, shard_size: int = DEFAULT_SHARD_SIZE, least: bool = False
) -> dict[str, Any]:
    """:func:`floor_seconds` on a fresh local Ray of ``cpus`` CPUs, started as the job starts one; also
    ``ray_init``: that start's seconds, and ``load``: the 1-minute load average at the end."""
    started = time.perf_counter()
    start_local_ray(cpus)
    ray_init = time.perf_counter() - started
    try:
        result = floor_seconds(images, batch_size, shard_size, least)
    finally:
        ray.shutdown()
    return {**result, "ray_init": ray_init, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="inputs passed through the stages (default: one file's worth, whose record is Ray Data's start)",
    )
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="rows per file (the job's)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    from _report import cpu_description

    command = shlex.join(["python", *sys.argv])
    load_before = os.getloadavg()[0]
    runs = []
    for run in range(1, args.runs + 1):  # the two layouts interleaved, each on a fresh Ray
        for least in (False, True):
            runs.append((run, least, fresh_floor(args.images, args.cpus, args.batch_size, args.shard_size, least)))
    emit(
        [
            f"### Ray Data's floor under the labeling job ({time.strftime('%Y-%m-%d %H:%M')})",
            "",
            f"No work in any stage, {args.images} inputs, batch {args.batch_size}, {args.cpus} Ray CPUs; CPU: "
            f"{cpu_description()}, {os.cpu_count()} CPUs; load average before: {load_before:.2f}. Command: "
            f"`{command}`. Layouts: the job's (its stages, blocks, bookkeeping actor and Ray Data's singleton "
            "actors); the least with an actor pool (a task stage, the pool, a task stage writing one record per "
            "file).",
            "",
            "| run | layout | `ray.init` | first record, after `ray.init` | last record, after `ray.init` "
            "| load average |",
            "| --- | --- | --- | --- | --- | --- |",
            *[
                f"| {run} | {'least' if least else 'job'} | {r['ray_init']:.2f} s | {r['first_record']:.2f} s | "
                f"{r['seconds']:.2f} s | {r['load']:.2f} |"
                for run, least, r in runs
            ],
            "",
        ],
        args.write,
    )


if __name__ == "__main__":
    main()
