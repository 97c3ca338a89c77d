"""Ray Data's own floor under the labeling job: the job's stage layout (its blocks, tasks, actor pool, bookkeeping
actor and Ray Data's singleton actors, with the resources the job plans for ``--model null``) with no work in any
stage, on a fresh local Ray of the CPUs given; and beside it the least layout with an actor pool. It prints, per run
and layout, seconds from the end of ``ray.init`` to the first record out of the last stage and to the last, and
``ray.init``'s own seconds.

    python benchmarks/ray_data_floor.py --cpus 2 --runs 3
    python benchmarks/ray_data_floor.py --images 5000 --payload 640x480 --cpu

With ``--payload WxH`` the stages carry the job's arrays for images of that size, still doing no work on them: the
decode stage hands each model batch's resized images on as the job's decode stage does (one padded uint8 array per
batch, at SAN's input size), and the model stage a uint8 label map of the original size per image, as the null model
does. With ``--cpu`` each run also gives the CPU seconds that all the processes (the driver, Ray's and Ray Data's)
used from the end of ``ray.init`` to Ray's shutdown after the last record, and per input: what a Ray Data pipeline
moving the job's arrays costs before any of its stages does work.

With one file's worth of inputs (the job's 256 rows per file) the first record is Ray Data's start: the job's first
result comes no sooner, however little its own stages cost. With many inputs the records come nearly together at the
end (nothing holds them up), and the time is Ray Data's cost per block on top of its start. ``null_pipeline.py
--floor`` runs the first beside each job."""

from __future__ import annotations

import argparse
import contextlib
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
from cpu_by_process import ProcessCpu

from pipeline.label.batching import WINDOW_BATCHES, batches_per_block, model_batch_blocks
from pipeline.label.decode import EXPANDED_ROWS
from pipeline.label.job import LabelOptions
from pipeline.label.resources import local_ray_config, plan_resources, start_on_driver_node
from pipeline.ray_internals import start_data_actors
from san.transforms import SAN_EVAL_RESIZE

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
    """The actor pool's stage, doing nothing; with ``label_map`` (``(H, W)``), each model batch of ``batch_size``
    images out as one row per image, each with an uninitialised uint8 label map of that size (as the null model's)."""

    def __init__(self, label_map: tuple[int, int] | None = None, batch_size: int = 1) -> None:
        self.label_map, self.batch_size = label_map, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.label_map is None:
            return batch
        paths = np.repeat(batch["image_path"], self.batch_size)
        return {"image_path": paths, "label_map": [np.empty(self.label_map, np.uint8) for _ in paths]}


def _decoded(batch_size: int, resized: tuple[int, int]) -> Stage:
    """The decode stage's shape with its arrays: each model batch's ``batch_size`` images at the ``resized`` ``(h,
    w)`` size as one uninitialised ``[batch_size, h, w, 3]`` uint8 array (the job's padded stack)."""

    def decode(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        pixels = [np.empty((batch_size, *resized, 3), np.uint8) for _ in batch["image_path"]]
        return {"image_path": batch["image_path"], "pixels": pixels}

    return decode


def _first_of_each_batch(batch_size: int) -> Stage:
    """The grouping stage's shape: one row out per ``batch_size`` rows in (one row per model batch)."""

    def group(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"image_path": batch["image_path"][::batch_size]}

    return group


def _per_image(batch_size: int) -> Stage:
    """The encoding stage's shape: one row out per image of each model batch of ``batch_size`` images."""

    def encode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"image_path": np.repeat(batch["image_path"], batch_size)}

    return encode


def _one_record(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The writing stage's shape: one small record per file."""
    return {"labeled": np.array([len(batch["image_path"])])}


def floor_seconds(
    images: int,
    batch_size: int = 16,
    shard_size: int = DEFAULT_SHARD_SIZE,
    least: bool = False,
    payload: tuple[int, int] | None = None,
) -> dict[str, float]:
    """On the Ray this process is connected to: seconds from this call to the first record out of the job's stage
    layout with no work in any stage (``first_record``) and to its end (``seconds``), for ``images`` inputs.
    ``least``: the least layout with an actor pool instead (inputs in blocks of one task each -> a task stage -> the
    pool -> a task stage writing one record per file; none of the job's bookkeeping). ``payload``: the ``(H, W)`` of
    the images, whose arrays the stages then carry as the job's do (resized pixels to the model stage, a label map
    of each image out of it)."""
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
    stage = _same if payload is None else _decoded(batch_size, SAN_EVAL_RESIZE.output_size(*payload))
    dataset = dataset.map_batches(stage, batch_size=block, compute=decode, **cpu)
    pool = ray.data.ActorPoolStrategy(min_size=plan.workers[0], max_size=plan.workers[1])
    dataset = dataset.map_batches(
        _ModelStage,
        fn_constructor_kwargs={"label_map": payload, "batch_size": batch_size},
        batch_size=block,
        compute=pool,
        num_cpus=plan.cpus_per_worker,
    )
    encode = ray.data.TaskPoolStrategy(size=plan.encode_tasks)
    per_row = batch_size if payload is None else 1  # a model stage carrying label maps hands on a row per image
    dataset = dataset.map_batches(_per_image(per_row), batch_size=None, compute=encode, **cpu)
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
    images: int,
    cpus: int,
    batch_size: int,
    shard_size: int = DEFAULT_SHARD_SIZE,
    least: bool = False,
    payload: tuple[int, int] | None = None,
    cpu: bool = False,
) -> dict[str, Any]:
    """:func:`floor_seconds` on a fresh local Ray of ``cpus`` CPUs, started as the job starts one; also
    ``ray_init``: that start's seconds, and ``load``: the 1-minute load average at the end. ``cpu`` (Linux): also
    ``cpu_seconds``, the CPU of this process and all its descendants from the end of ``ray.init`` to the end of
    ``ray.shutdown`` after the last record (``cpu_by_process.py``)."""
    with ProcessCpu() if cpu else contextlib.nullcontext() as processes:
        started = time.perf_counter()
        start_local_ray(cpus)
        ray_init = time.perf_counter() - started
        if processes is not None:
            processes.mark()
        try:
            result = floor_seconds(images, batch_size, shard_size, least, payload)
        finally:
            ray.shutdown()
    if processes is not None:
        result["cpu_seconds"] = sum(processes.after_mark.values())
    return {**result, "ray_init": ray_init, "load": os.getloadavg()[0]}


def _image_size(text: str) -> tuple[int, int]:
    """``WxH`` (e.g. ``640x480``) -> ``(H, W)``."""
    try:
        width, height = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected positive sides, got {text!r}")
    return height, width


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
    parser.add_argument(
        "--payload",
        type=_image_size,
        metavar="WxH",
        help="the stages carry the job's arrays for images of this size, e.g. 640x480 (default: no arrays)",
    )
    parser.add_argument(
        "--cpu", action="store_true", help="also the CPU seconds of all processes after ray.init (Linux)"
    )
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    if args.cpu and not Path("/proc/self/stat").exists():
        parser.error("--cpu reads each process's CPU time from /proc, which this system lacks (Linux only)")
    from _report import cpu_description

    command = shlex.join(["python", *sys.argv])
    load_before = os.getloadavg()[0]
    runs = []
    for run in range(1, args.runs + 1):  # the two layouts interleaved, each on a fresh Ray
        for least in (False, True):
            found = fresh_floor(args.images, args.cpus, args.batch_size, args.shard_size, least, args.payload, args.cpu)
            runs.append((run, least, found))
    payload = "no arrays" if args.payload is None else "the job's arrays for {1}x{0} images".format(*args.payload)
    cpu_head = " CPU after `ray.init`, all processes | per input |" if args.cpu else ""

    def cpu_cells(found: dict[str, Any]) -> str:
        if not args.cpu:
            return ""
        return f" {found['cpu_seconds']:.2f} s | {1000 * found['cpu_seconds'] / args.images:.2f} ms |"

    emit(
        [
            f"### Ray Data's floor under the labeling job ({time.strftime('%Y-%m-%d %H:%M')})",
            "",
            f"No work in any stage ({payload}), {args.images} inputs, batch {args.batch_size}, {args.cpus} Ray "
            f"CPUs; CPU: {cpu_description()}, {os.cpu_count()} CPUs; load average before: {load_before:.2f}. Command: "
            f"`{command}`. Layouts: the job's (its stages, blocks, bookkeeping actor and Ray Data's singleton "
            "actors); the least with an actor pool (a task stage, the pool, a task stage writing one record per "
            "file).",
            "",
            "| run | layout | `ray.init` | first record, after `ray.init` | last record, after `ray.init` |"
            f"{cpu_head} load average |",
            "| --- | --- | --- | --- | --- |" + (" --- | --- |" if args.cpu else "") + " --- |",
            *[
                f"| {run} | {'least' if least else 'job'} | {r['ray_init']:.2f} s | {r['first_record']:.2f} s | "
                f"{r['seconds']:.2f} s |{cpu_cells(r)} {r['load']:.2f} |"
                for run, least, r in runs
            ],
            "",
        ],
        args.write,
    )


if __name__ == "__main__":
    main()
