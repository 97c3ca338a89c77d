"""Driver peak memory and wall time of the steps after labeling, on synthetic runs of given sizes
(``benchmarks/synthetic_run.py``), with this checkout's code or another's (``--repo``, e.g. a worktree of the
commit before a change):

    git worktree add ../before 40b5a48
    python benchmarks/finish_scale.py --sizes 10000 100000 1000000 --work /data/finish-bench \\
        --repo . --repo ../before --write BENCHMARKS.md

For each repository and size, a run is generated once by that repository's own writer (``WORK/<commit>/<size>``,
reused when it is there and complete: delete it to generate again); then each stage runs in a new Python process
with that repository first on ``PYTHONPATH``, which reports the stage's wall time and the process's peak RSS
(``getrusage``: the whole process, imports included; the RSS after the imports is shown beside it). Stages run
in the order given, on the same run, so a stage may use what an earlier one wrote.

Stages are entries of :data:`STAGES`: a line for the table, a function of the run's folder, which runs in the
child process, and the modules it imports (imported before the measurement starts): ``finish`` (the default),
``evaluate`` (its ground truth is generated with the run), ``export`` (yolo-seg into ``WORK/<commit>/<size>-yolo``,
removed before each measurement; the run is generated with image files, hard links to a pool of JPEGs, so the
export copies about 10 KB per image), ``export-driver`` (the same export's driver, with write tasks that count their
rows instead of writing: its memory at a million images without hours of copying), ``export-driver-cvat`` (the cvat
export's driver, with write tasks that create an empty mask file per image, so that the zip of every entry is still
written; into ``WORK/<commit>/<size>.zip``) and ``select`` (a review of 1,000 images).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _report import emit

HERE = Path(__file__).resolve().parent
GENERATOR = HERE / "synthetic_run.py"


@dataclass(frozen=True)
class Stage:
    """A step measured on a synthetic run: ``run(folder)`` in the child process, with the measured code, after
    ``modules`` are imported (neither their time nor their memory is the stage's)."""

    about: str
    run: Callable[[Path], None]
    modules: tuple[str, ...]
    before: Callable[[Path], None] | None = None  # run before the measurement starts
    images: bool = False  # the run needs image files (``--image-files``): an export that copies them


def finish(run: Path) -> None:
    """The labeling job's last step, as ``pipeline.label.job`` calls it: ``RunOutput.finalize`` with the run's
    vocabulary and manifest (default COCO: one ``coco.json``)."""
    from pipeline.outputs import RunOutput

    output = RunOutput(run)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    output.finalize(output.read_vocabulary(RuntimeError), {**manifest, "status": "complete"})


def _ground_truth(run: Path) -> Path:
    """The synthetic ground truth generated beside a run (``--gt RUN-gt``)."""
    return run.parent / f"{run.name}-gt"


def _image_files(run: Path) -> Path:
    """The image files generated beside a run for an export (``--image-files RUN-images``)."""
    return run.parent / f"{run.name}-images"


def evaluate(run: Path) -> None:
    """``jobs/evaluate.py``'s work against the run's synthetic ground truth (Ray tasks on a local Ray of this
    machine's CPUs where the measured code evaluates in Ray: its start is part of the stage)."""
    import inspect

    from pipeline.evaluate import evaluate_run

    quiet = {"progress": False} if "progress" in inspect.signature(evaluate_run).parameters else {}
    evaluate_run(run, str(_ground_truth(run)), metrics_path=run.parent / f"{run.name}-metrics.json", **quiet)


def _export_folder(run: Path) -> Path:
    return run.parent / f"{run.name}-yolo"


def _remove_export(run: Path) -> None:
    shutil.rmtree(_export_folder(run), ignore_errors=True)


def export(run: Path) -> None:
    """``jobs/export.py RUN --format yolo-seg --output RUN-yolo``: Ray tasks write each image and its label file
    (a local Ray of this machine's CPUs: its start is part of the stage)."""
    from pipeline.exports.run import FormatOptions, export_format

    export_format(run, FormatOptions(format="yolo-seg", output=str(_export_folder(run))))


class _CountingPieces:
    """In place of yolo-seg's piece writer (``pipeline.exports.yolo_seg._YoloPieces``, same arguments): a write task
    reads its piece's rows and locates their images, as the export's do, and counts them instead of writing. Defined
    in the child's ``__main__``, so Ray sends it to the tasks by value."""

    def __init__(self, folder: str, tolerance: float) -> None:
        del folder, tolerance

    def write(self, part: int, items: Iterator[Any]) -> dict[str, int]:
        return {"images": sum(1 for _ in items), "polygons": 0}


def export_driver(run: Path) -> None:
    """``export`` with its driver's every step for real (the run's source, Ray's start, the survey and plan, the
    images located, the write tasks dispatched and summed) but tasks that count their rows instead of writing
    (:class:`_CountingPieces`): the driver's memory at sizes whose full export would take hours."""
    from pipeline.exports import yolo_seg

    yolo_seg._YoloPieces = _CountingPieces
    export(run)


def _cvat_zip(run: Path) -> Path:
    return run.parent / f"{run.name}.zip"


def _remove_cvat_zip(run: Path) -> None:
    _cvat_zip(run).unlink(missing_ok=True)


class _EmptyMasks:
    """In place of cvat's piece writer (``pipeline.exports.cvat._CvatPieces``, same arguments): a write task reads
    its piece's rows, as the export's do, and creates an empty file for each mask, then writes its list of names as
    the export's do. Defined in the child's ``__main__``, so Ray sends it to the tasks by value."""

    def __init__(self, parts: str, colours: Any) -> None:
        self.parts = parts

    def write(self, part: int, items: Iterator[Any]) -> dict[str, int]:
        from pipeline.exports import cvat

        names = []
        for item in items:
            mask = Path(self.parts, "SegmentationClass", f"{item.name}.png")
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.touch()
            names.append(item.name)
        listing = cvat._listing(Path(self.parts), part)
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
        return {"images": len(names)}


def export_driver_cvat(run: Path) -> None:
    """``jobs/export.py RUN --format cvat --output RUN.zip`` with its driver's every step for real (the survey and
    plan, the write tasks dispatched and summed, the zip of every entry written one at a time) but write tasks
    that create empty mask files (:class:`_EmptyMasks`)."""
    from pipeline.exports import cvat
    from pipeline.exports.run import FormatOptions, export_format

    cvat._CvatPieces = _EmptyMasks
    export_format(run, FormatOptions(format="cvat", output=str(_cvat_zip(run))))


def select(run: Path) -> None:
    """``jobs/review.py RUN --select random:1000``: 1,000 images chosen from the run and loaded into FiftyOne (a
    database of its own in a temporary folder, started within the stage)."""
    from pipeline.review.dataset import load_run
    from pipeline.review.selection import parse_select

    load_run(run, name=f"bench-{run.name}", overwrite=True, select=[parse_select("random:1000")])


STAGES: dict[str, Stage] = {
    "finish": Stage(
        "RunOutput.finalize: coco.json, errors.parquet, manifest.json", finish, ("pipeline.outputs", "pyarrow.dataset")
    ),
    "evaluate": Stage(
        "pipeline.evaluate.evaluate_run against the synthetic ground truth (metrics.json)",
        evaluate,
        ("pipeline.evaluate",),
    ),
    "export": Stage(
        "jobs/export.py --format yolo-seg: images, label files and data.yaml",
        export,
        ("pipeline.exports.run", "pipeline.exports.yolo_seg"),
        before=_remove_export,
        images=True,
    ),
    "export-driver": Stage(
        "jobs/export.py --format yolo-seg's driver, with write tasks that count their rows instead of writing",
        export_driver,
        ("pipeline.exports.run", "pipeline.exports.yolo_seg"),
        before=_remove_export,
        images=True,
    ),
    "export-driver-cvat": Stage(
        "jobs/export.py --format cvat's driver, with write tasks that create empty mask files instead of drawing them",
        export_driver_cvat,
        ("pipeline.exports.run", "pipeline.exports.cvat"),
        before=_remove_cvat_zip,
    ),
    "select": Stage(
        "jobs/review.py --select random:1000: the choice and its FiftyOne load",
        select,
        ("pipeline.review.dataset", "pipeline.review.selection"),
    ),
}


def _child(stage: str, run: Path) -> None:
    """In the child process: run ``stage`` on ``run`` and print one JSON line of measurements."""
    import pipeline

    for module in STAGES[stage].modules:
        importlib.import_module(module)
    if STAGES[stage].before is not None:
        STAGES[stage].before(run)
    after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    STAGES[stage].run(run)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {"seconds": seconds, "peak_mb": peak / 1024, "imports_mb": after_imports / 1024, "code": pipeline.__file__}
        )
    )


def _environment(repo: Path) -> dict[str, str]:
    """``repo`` first on the path; stages that use Ray start a local one (never a cluster running on the machine)."""
    path = os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]).rstrip(":")
    return {**os.environ, "PYTHONPATH": path, "RAY_ADDRESS": "local"}


def _commit(repo: Path) -> str:
    """The repository's short commit, ``+`` when its work tree has changes."""
    git = ["git", "-C", str(repo)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def _generated(repo: Path, run: Path, images: int, generator: list[str]) -> None:
    """Generate ``run`` with ``repo``'s code unless a complete one is there, generated with at least the options
    ``generator`` gives (``--flag value`` pairs)."""
    done = run.parent / f"{run.name}.generated"
    wanted = {"images": images, "generator": generator}
    if done.exists() and run.is_dir():
        made = json.loads(done.read_text())
        pairs = set(zip(made["generator"][::2], made["generator"][1::2], strict=True))
        if made["images"] == images and set(zip(generator[::2], generator[1::2], strict=True)) <= pairs:
            return
    done.unlink(missing_ok=True)
    for folder in (run, _ground_truth(run), _image_files(run), _export_folder(run)):
        shutil.rmtree(folder, ignore_errors=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(GENERATOR), str(run), "--images", str(images), *generator]
    subprocess.run(command, env=_environment(repo), check=True, stdout=subprocess.DEVNULL)
    done.write_text(json.dumps(wanted))


def _measure(repo: Path, stage: str, run: Path) -> dict[str, float | str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", stage, str(run)]
    done = subprocess.run(command, env=_environment(repo), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"stage {stage} failed on {run} with {repo}'s code:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["code"]).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"the child imported {result['code']}, not {repo}'s pipeline")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--stages", nargs="+", default=["finish"], choices=list(STAGES), help="default: finish")
    parser.add_argument("--work", type=Path, required=True, help="folder for the generated runs (reused)")
    parser.add_argument(
        "--repo", type=Path, action="append", help="a checkout whose code is measured (repeatable; default: this one)"
    )
    parser.add_argument("--pool", default="256", help="synthetic_run.py --pool")
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    repos = args.repo or [HERE.parent]
    lines = [
        f"### After labeling, by run size ({datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, `benchmarks/finish_scale.py`)",
        "",
        "| stage | code | images | seconds | driver peak RSS (MB) | RSS after imports (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for repo in repos:
        commit = _commit(repo)
        for images in args.sizes:
            run = args.work / commit / str(images)
            ground_truth = ["--gt", str(_ground_truth(run))] if "evaluate" in args.stages else []
            images_needed = any(STAGES[stage].images for stage in args.stages)
            image_files = ["--image-files", str(_image_files(run))] if images_needed else []
            _generated(repo, run, images, ["--pool", args.pool, *ground_truth, *image_files])
            for stage in args.stages:
                result = _measure(repo, stage, run)
                lines.append(
                    f"| {stage} | {commit} | {images:,} | {result['seconds']:.2f} | {result['peak_mb']:.0f} | "
                    f"{result['imports_mb']:.0f} |"
                )
                print(lines[-1], file=sys.stderr)
    lines += ["", *(f"- `{name}`: {STAGES[name].about}" for name in args.stages)]
    emit(lines, args.write)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:  # a measurement, in its own process (_measure)
        _child(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
