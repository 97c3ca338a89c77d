"""The benchmark scripts run end to end (tiny model, one repeat) and write their tables; the numbers
themselves are measured by hand and recorded in BENCHMARKS.md, never asserted."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from local_ray import local_ray  # noqa: F401
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=600, check=True
    )


def table_rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_inference_benchmark_appends_a_row_per_configuration(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n")
    args = ("--preset", "san_tiny", "--batches", "2", "--repeats", "1", "--json", str(tmp_path / "rows.json"))
    run_script("inference.py", *args, "--write", str(report))
    assert report.read_text().startswith("# Benchmarks\n"), "the table is appended, not written over"
    rows = table_rows(report)
    assert [row[:4] for row in rows] == [
        ["cpu", "float32", "640x640", "2"],
        ["cpu", "float32", "640x853 (4:3)", "2"],
    ]
    for row in rows:
        assert all(float(value) > 0 for value in row[4:]), row
    written = json.loads((tmp_path / "rows.json").read_text())  # what gpu_checks.sh compares with the pipeline
    assert [(r["device"], r["image"], r["batch"]) for r in written] == [(r[0], r[2], int(r[3])) for r in rows]
    assert [f"{r['images_per_second']:.3f}" for r in written] == [row[4] for row in rows]


def test_gpu_checks_name_the_rate_that_bounds_the_node(tmp_path: Path) -> None:
    """``gpu_checks.sh`` (bash syntax) prints the pipeline's rate on the node's CPUs beside the model's on its GPU,
    and the lower one."""
    assert subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_checks.sh")]).returncode == 0
    run = {"batch": 16, "cpus": 16, "images_per_second": 150.0, "steady_images_per_second": 200.0, "load": 1.0}
    (tmp_path / "null.json").write_text(json.dumps({"runs": [{**run, "cpus": 1}, run]}))
    gpu = {"device": "cuda", "dtype": "bfloat16", "batch": 8, "image": "640x853 (4:3)", "images_per_second": 500.0}
    (tmp_path / "gpu.json").write_text(json.dumps([gpu, {**gpu, "image": "640x640", "images_per_second": 600.0}]))
    lines = run_script("cpu_or_gpu_bound.py", str(tmp_path / "null.json"), str(tmp_path / "gpu.json")).stdout
    assert lines.splitlines() == [
        "pipeline alone (--model null) on 16 CPUs, batch 16: 200.0 img/s after the first result (150.0 img/s whole "
        "job; load average 1.00)",
        "model alone on the GPU (bfloat16, batch 8, 640x853 (4:3)): 500.0 img/s",
        "this node labels at most 200.0 img/s: bound by its CPUs (the pipeline), 2.50x below the other",
    ]


def test_speedups_benchmark_reports_equal_results(tmp_path: Path) -> None:
    report = tmp_path / "speedups.md"
    run_script("speedups.py", "--preset", "san_tiny", "--size", "128", "--repeats", "1", "--write", str(report))
    rows = table_rows(report)
    assert [row[0] for row in rows] == [
        "recognition head, 1 image",
        "text embeddings, 140 prompts",
        "model from a checkpoint file",
    ]
    for row in rows:
        assert float(row[-1]) < 1e-4, f"before and after differ: {row}"


def test_fp32_options_benchmark_compares_the_cpu_kernels(tmp_path: Path) -> None:
    report = tmp_path / "fp32.md"
    variants = ("--variants", "baseline", "pytorch_kernels", "onednn_kernels", "postprocess")
    run_script(
        "fp32_options.py", "--preset", "san_tiny", "--size", "128", "--repeats", "1", *variants, "--write", str(report)
    )
    rows = table_rows(report)
    assert [row[0] for row in rows] == ["baseline", "pytorch_kernels", "onednn_kernels", "postprocess"]
    assert float(rows[1][-1]) < 1e-4, f"PyTorch's kernels and the shipped ones disagree: {rows[1]}"
    assert float(rows[2][-1]) < 1e-4, f"oneDNN's kernels and the shipped ones disagree: {rows[2]}"


def test_postprocess_memory_benchmark_compares_the_methods(tmp_path: Path) -> None:
    report = tmp_path / "memory.md"
    methods = ("--methods", "class_scores", "predict", "worker")
    run_script("postprocess_memory.py", "--classes", "3", "--size", "300", "400", *methods, "--write", str(report))
    rows = table_rows(report)
    assert [row[:2] for row in rows] == [
        ["3", "all class scores"],
        ["3", "best class"],
        ["3", "best class, PNG and segments"],
    ]
    assert all(float(row[3]) > 0 for row in rows)


def test_speed_vs_official_says_how_to_set_up_the_official_side(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SANREF", "SAN_OFFICIAL_PYTHON", "SAN_OFFICIAL_HARNESS")}
    missing = str(tmp_path / "no-such-tree")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "speed_vs_official.py"), "--official-tree", missing],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 2
    assert f"--official-tree / $SANREF: {missing}" in done.stderr, "names what is missing"
    assert "--official-python / $SAN_OFFICIAL_PYTHON: not given" in done.stderr
    assert "fetch github:MendelXu/SAN" in done.stderr and "open_clip_torch==2.16.0" in done.stderr, "says how"


def test_region_search_benchmark_times_a_synthetic_run(tmp_path: Path) -> None:
    report = tmp_path / "search.md"
    run_script("region_search.py", "--images", "300", "--model", "san_tiny", "--write", str(report))
    [row] = table_rows(report)
    assert row[0] == "300" and float(row[2].removesuffix(" s")) > 0, row


def test_finish_scale_measures_each_stage_on_a_generated_run(tmp_path: Path) -> None:
    report = tmp_path / "finish.md"
    work = tmp_path / "work"
    run_script("finish_scale.py", "--sizes", "200", "--work", str(work), "--pool", "8", "--write", str(report))
    rows = table_rows(report)
    assert [row[0] for row in rows] == ["finish"] and rows[0][2] == "200"
    seconds, peak, after_imports = map(float, rows[0][3:])
    assert seconds >= 0 and peak >= after_imports > 0, rows
    (run,) = (path for path in work.glob("*/200") if path.is_dir())
    counts = json.loads((run / "manifest.json").read_text())["counts"]
    assert counts["labeled"] + counts["failed"] == 200 and counts["failed"] > 0, counts
    assert (run / "coco.json").is_file() and (run / "errors.parquet").is_file()


@pytest.mark.slow
def test_finish_scale_times_an_export_of_a_run_with_image_files(tmp_path: Path) -> None:
    """The export stage: the run is generated with image files (hard links to a pool of JPEGs, the run's size),
    and yolo-seg exports every labeled image."""
    report = tmp_path / "export.md"
    work = tmp_path / "work"
    args = ["--sizes", "200", "--work", str(work), "--pool", "8", "--stages", "export", "--write", str(report)]
    run_script("finish_scale.py", *args)
    [row] = table_rows(report)
    assert row[0] == "export" and row[2] == "200" and float(row[3]) > 0 and float(row[4]) >= float(row[5]) > 0, row
    (run,) = (path for path in work.glob("*/200") if path.is_dir())
    images = sorted(run.parent.glob("200-images/0000/*.jpg"))
    assert len(images) == 200 and {image.stat().st_ino for image in images} == {
        image.stat().st_ino for image in run.parent.glob("200-images/.pool/*.jpg")
    }, "hard links to the pool"
    with Image.open(images[0]) as image:
        assert image.size == (640, 480)
    labels = list(run.parent.glob("200-yolo/labels/**/*.txt"))
    assert 190 <= len(labels) < 200 and len(list(run.parent.glob("200-yolo/images/**/*.jpg"))) == len(labels)


@pytest.mark.slow
def test_finish_scale_measures_the_cvat_exports_driver(tmp_path: Path) -> None:
    """The cvat driver stage: its write tasks create empty masks, and the zip holds an entry for each labeled image
    besides the label map and the list of names."""
    report = tmp_path / "cvat.md"
    work = tmp_path / "work"
    args = ["--sizes", "200", "--work", str(work), "--pool", "8", "--stages", "export-driver-cvat"]
    run_script("finish_scale.py", *args, "--write", str(report))
    [row] = table_rows(report)
    assert row[0] == "export-driver-cvat" and row[2] == "200" and float(row[4]) >= float(row[5]) > 0, row
    (run,) = (path for path in work.glob("*/200") if path.is_dir())
    assert not run.parent.joinpath("200-images").exists(), "the cvat export needs no image files"
    with zipfile.ZipFile(run.parent / "200.zip") as archive:
        entries = archive.infolist()
        masks = [entry for entry in entries if entry.filename.startswith("SegmentationClass/")]
        listed = archive.read("ImageSets/Segmentation/default.txt").decode().split()
    assert 190 <= len(masks) < 200 and len(entries) == len(masks) + 2 and len(listed) == len(masks)
    assert {entry.file_size for entry in masks} == {0}


def busy_script(path: Path) -> Path:
    """A script at ``path`` that uses a second of CPU, then waits a second, so that the sampler reads its last CPU
    before it exits, however busy the machine."""
    path.write_text(
        "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end:\n    pass\ntime.sleep(1.0)\n"
    )
    return path


def test_cpu_by_process_counts_each_descendant_under_its_title(tmp_path: Path) -> None:
    """``null_pipeline.py --by-process``'s sampler: the CPU of this process and of a child (titled by its script),
    each in its own row, and the total per image."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from cpu_by_process import ProcessCpu
    finally:
        sys.path.remove(str(BENCHMARKS))
    script = busy_script(tmp_path / "busy.py")
    with ProcessCpu() as cpu:
        subprocess.run([sys.executable, str(script)], check=True)
    child = f"python {tmp_path.name}/busy.py"
    assert 0.8 <= cpu.groups[child][0] <= 1.5 and cpu.groups[child][1] == 1, cpu.groups
    assert cpu.processes == 2 and "driver" in cpu.groups
    rows = cpu.table(images=10)
    assert rows[2].startswith(f"| `{child}` | 1 |"), "the busiest first"
    assert rows[-1].startswith("| all | 2 |")
    assert cpu.after_mark == {}, "never marked"


def test_cpu_by_process_names_a_native_process_by_its_executable_whatever_its_path_or_arguments() -> None:
    """Ray's raylet runs from ``.../python3.11/site-packages/ray/...`` with ``setup_worker.py`` among its arguments:
    it is the raylet, not a Python script (it was once counted as ``python workers/setup_worker.py``)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from cpu_by_process import group_of
    finally:
        sys.path.remove(str(BENCHMARKS))
    raylet = (
        "/v/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/s "
        "--python_worker_command=/v/bin/python /v/lib/python3.11/site-packages/ray/_private/workers/setup_worker.py"
    )
    assert group_of(7, 1, "raylet", raylet) == "raylet"
    monitor = "/v/bin/python3.11 -u /v/lib/python3.11/site-packages/ray/_private/log_monitor.py --session-dir=/tmp/s"
    assert group_of(8, 1, "python3.11", monitor) == "python _private/log_monitor.py"
    assert group_of(9, 1, "ray::IDLE", "ray::IDLE") == "ray::IDLE" and group_of(1, 1, "python", "x") == "driver"


def test_cpu_by_process_counts_the_cpu_after_the_mark_apart(tmp_path: Path) -> None:
    """What ``null_pipeline.py --by-process`` gives as the steady state: a child that ran before the mark has no CPU
    after it, one that ran after has all of its CPU there, and the table adds a column of ms per image after it."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from cpu_by_process import ProcessCpu
    finally:
        sys.path.remove(str(BENCHMARKS))
    with ProcessCpu() as cpu:
        subprocess.run([sys.executable, str(busy_script(tmp_path / "before.py"))], check=True)
        cpu.mark()
        subprocess.run([sys.executable, str(busy_script(tmp_path / "after.py"))], check=True)
    before, after = f"python {tmp_path.name}/before.py", f"python {tmp_path.name}/after.py"
    assert 0.8 <= cpu.groups[before][0] <= 1.5 and 0.8 <= cpu.groups[after][0] <= 1.5, cpu.groups
    assert cpu.after_mark.get(before, 0.0) == 0.0 and 0.8 <= cpu.after_mark[after] <= 1.5, cpu.after_mark
    rows = cpu.table(images=10, loop_ms=100.0, images_after_mark=5)
    assert rows[0] == (
        "| process (title) | processes | CPU s | CPU ms per image | CPU ms per image after the mark | share |"
    )
    cells = {row.split(" | ")[0].strip("| `"): row.split(" | ") for row in rows[2:]}
    assert float(cells[after][4]) == pytest.approx(1000 * cpu.after_mark[after] / 5, abs=0.01)
    assert float(cells[before][4]) == 0.0
    assert "x the loop's" in cells["all"][4]


@pytest.mark.slow
def test_null_pipeline_reports_the_cpu_per_image_after_the_first_result(tmp_path: Path) -> None:
    """``null_pipeline.py --by-process`` end to end on a local Ray: the loop, a null-model job whose first file comes
    before its end (200 images, files of 64), its table beside the loop's and its CPU by process, also after the
    first result (without the batch-fill run, `--mixed-images 0`: the grouping stage's batch fill has its own tests in
    ``tests/test_label_stages.py``)."""
    report = tmp_path / "BENCHMARKS.md"
    args = ["--images", "200", "--mixed-images", "0", "--cpus", "1", "--batch-sizes", "4", "--shard-size", "64"]
    args.append("--by-process")
    run_script("null_pipeline.py", *args, "--write", str(report), "--json", str(tmp_path / "null.json"))
    [summary, *processes] = table_rows(report)
    assert summary[:2] == ["4", "1"] and summary[6].endswith("x"), summary
    found = json.loads((tmp_path / "null.json").read_text())
    (job,) = found["runs"]
    assert job["labeled"] == 200 and job["steady_cpu_ms"] > 0
    assert float(summary[6][:-1]) == pytest.approx(job["steady_cpu_ms"] / found["loop"]["cpu_ms_per_image"], abs=0.01)
    (total,) = (row for row in processes if row[0] == "all")
    assert total[4].startswith(f"{job['steady_cpu_ms']:.2f}"), total


@pytest.mark.slow
def test_startup_timeline_gives_each_phase_of_a_job_run(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    run_script("startup_timeline.py", "--images", "4", "--runs", "1", "--pause", "0", "--write", str(report))
    phases = {row[0]: row[1] for row in table_rows(report)}
    assert list(phases)[:2] == ["imports", "vocabulary checked"] and "command, whole" in phases
    seconds = [float(phases[name]) for name in ("imports", "init_ray done", "model actor ready", "first file")]
    assert seconds == sorted(seconds) and seconds[-1] <= float(phases["command, whole"])


@pytest.mark.usefixtures("local_ray")
def test_ray_data_floor_passes_every_input_through_the_jobs_stage_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray_data_floor.py``'s stages on the suite's Ray, the job's layout and the least, without and with the job's
    arrays (``--payload``): every input reaches the last stage (else it raises), whose first record comes before its
    last; and ``null_pipeline.py --floor``'s ratio from the floor and the job's rates."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from null_pipeline import _floor_cells
    from ray_data_floor import _image_size, floor_seconds

    least = floor_seconds(200, batch_size=4, shard_size=64, least=True)
    assert 0 < least["first_record"] <= least["seconds"]
    floor = floor_seconds(200, batch_size=4, shard_size=64)
    assert 0 < floor["first_record"] <= floor["seconds"]
    assert _image_size("640x480") == (480, 640)
    with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT"):
        _image_size("640")
    for layout in (True, False):
        carried = floor_seconds(200, batch_size=4, shard_size=64, least=layout, payload=_image_size("64x48"))
        assert 0 < carried["first_record"] <= carried["seconds"]
    result = {"floor": {**floor, "load": 1.0}, "steady_images_per_second": 100.0}
    best = 200 / (floor["first_record"] + 2.0) / 50.0
    assert _floor_cells(result, 200, 50.0) == f" {floor['first_record']:.1f} s (load 1.00) | {best:.2f}x |"
