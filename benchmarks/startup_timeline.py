"""Start-up of the labeling job, phase by phase: from the command to the first predictions file written, for
``jobs/label.py --model null`` on a local Ray that the job starts (``RAY_ADDRESS=local``).

    python benchmarks/startup_timeline.py --images 20 --runs 3 --write BENCHMARKS.md

Each run is a fresh ``python jobs/label.py ...`` process (its interpreter and imports counted), run through this
script's ``--child`` mode, which marks the driver's phases (imports, ``ray.init`` done, the dataset built, the first
record back) and, from Ray's timeline (``ray.timeline()``), when the model actor's constructor ended and each
stage's first task ended; the first file is the oldest modification time in the output's ``predictions`` folder.
Every time is in seconds from the process's start (``psutil``'s create time). The load average is printed with
each run: on a shared machine, rerun it when it is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The phases in the order they happen, as printed.
PHASES = (
    "imports",
    "vocabulary checked",
    "inputs resolved",
    "ray.init returned",
    "init_ray done",
    "dataset built",
    "model actor ready",
    "first listing+group block",
    "first decode block",
    "first model block",
    "first encode+write block",
    "first file",
    "first record at driver",
    "job done",
)
# Ray timeline event names (``ray.timeline()``'s ``cat``/``name``) -> the stage they belong to.
_STAGE_EVENTS = {
    "first listing+group block": ("GroupStage",),
    "first decode block": ("DecodeStage",),
    "first model block": ("ModelStage)).submit",),
    "first encode+write block": ("WriteStage",),
}


def child(job_args: list[str]) -> None:
    """In this process: the label job on ``job_args``, then the phase times as one JSON line on stdout."""
    import psutil

    started = psutil.Process().create_time()
    marks: dict[str, float] = {}
    sys.path.insert(0, str(ROOT / "jobs"))
    import label  # jobs/label.py: the job's own imports

    import pipeline.label.job as job

    marks["imports"] = time.time()

    def after(name: str, function):  # the time ``function`` returned, as phase ``name``
        def wrapped(*args, **kwargs):
            result = function(*args, **kwargs)
            marks.setdefault(name, time.time())
            return result

        return wrapped

    import ray

    job.vocabulary_and_other = after("vocabulary checked", job.vocabulary_and_other)
    job.resolve_inputs = after("inputs resolved", job.resolve_inputs)
    ray.init = after("ray.init returned", ray.init)
    job.init_ray = after("init_ray done", job.init_ray)
    job._build_dataset = after("dataset built", job._build_dataset)
    original_consume = job._consume

    def consume(dataset, tally, options, desc):
        iter_rows = dataset.iter_rows

        def marked_rows():
            for row in iter_rows():
                marks.setdefault("first record at driver", time.time())
                yield row

        dataset.iter_rows = marked_rows
        return original_consume(dataset, tally, options, desc)

    job._consume = consume
    label.main(label.parse_args(job_args))
    marks["job done"] = time.time()
    marks.update(_timeline_marks())
    output = Path(job_args[job_args.index("--output") + 1])
    files = list((output / "predictions").glob("*.parquet"))
    if files:
        marks["first file"] = min(f.stat().st_mtime for f in files)
    print("TIMELINE " + json.dumps({name: round(at - started, 3) for name, at in marks.items()}))


def _timeline_marks() -> dict[str, float]:
    """From Ray's timeline (Chrome trace events, microseconds): the end of the model actor's constructor and of
    each stage's first task."""
    import ray

    marks: dict[str, float] = {}
    for event in ray.timeline():
        name, start, duration = event.get("cat", ""), event.get("ts"), event.get("dur")
        if start is None or duration is None:
            continue
        end = (float(start) + float(duration)) / 1e6
        if "ModelStage" in name and "__init__" in name:
            marks["model actor ready"] = min(marks.get("model actor ready", end), end)
        for phase, keys in _STAGE_EVENTS.items():
            if "__init__" not in name and any(key in name for key in keys):
                marks[phase] = min(marks.get(phase, end), end)
    return marks


def write_jpegs(folder: Path, count: int) -> Path:
    """``count`` distinct 640x480 JPEGs cropped from the sample photos."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted((ROOT / "samples" / "images").iterdir())
    for i in range(count):
        pixels = np.asarray(Image.open(photos[i % len(photos)]).convert("RGB").resize((640, 480))).copy()
        pixels[i % 480, :, i % 3] = 255  # every image distinct
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def one_run(images: Path, output: Path, batch_size: int) -> dict[str, float]:
    """One fresh job process; its phases, and the wall time of the whole command seen from here."""
    job_args = ["--vocab", str(ROOT / "samples" / "vocab.txt"), "--input", str(images), "--output", str(output)]
    job_args += ["--model", "null", "--batch-size", str(batch_size), "--no-progress"]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a Ray of its own, never a cluster that runs on this machine
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.time()
    result = subprocess.run(
        [sys.executable, __file__, "--child", *job_args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    command = time.time() - started
    lines = [line for line in result.stdout.splitlines() if line.startswith("TIMELINE ")]
    if result.returncode or not lines:
        raise RuntimeError(f"the job failed ({result.returncode}):\n{result.stderr[-3000:]}")
    marks = json.loads(lines[-1].removeprefix("TIMELINE "))
    marks["command, whole"] = round(command, 3)
    marks["load"] = round(os.getloadavg()[0], 2)
    return marks


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20, help="640x480 JPEGs to label")
    parser.add_argument("--runs", type=int, default=3, help="fresh job processes, one after the other")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pause", type=float, default=5.0, help="seconds between runs (Ray's processes exit)")
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    from _report import cpu_description, emit

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        images = write_jpegs(Path(tmp) / "images", args.images)
        for run in range(args.runs):
            if run:
                time.sleep(args.pause)
            runs.append(one_run(images, Path(tmp) / f"out-{run}", args.batch_size))
    columns = [*PHASES, "command, whole", "load"]
    lines = [
        f"### Start-up timeline, `jobs/label.py --model null`, {args.images} JPEGs ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`{shlex.join(['python', *sys.argv])}` on {cpu_description()}; seconds from the job process's start "
        "(its interpreter included); load: 1-minute load average after the run.",
        "",
        "| phase | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |",
        "| --- |" + " --- |" * len(runs),
    ]
    for column in columns:
        values = [run.get(column) for run in runs]
        lines.append(f"| {column} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in values) + " |")
    emit(lines, args.write)


if __name__ == "__main__":
    main()
