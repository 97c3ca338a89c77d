"""End to end: the labeling job (and the evaluation job after it) through `ray job submit` on a local cluster, bad
inputs, resume.

Uses the smoke-test model (tiny SAN, random weights, seed 0): the labels are meaningless but
deterministic, so the pipeline's output can be compared with a direct call to the model.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from label_inputs import VOCABULARY, write_bad_inputs, write_good_images
from local_ray import local_ray  # noqa: F401
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from reference_evaluate import reference_evaluate

import pipeline.label.batching
import san
from pipeline.cli import flag
from pipeline.dataclass_args import add_dataclass_arguments, dataclass_from_args
from pipeline.disk_space import OutputFullError
from pipeline.exports.run import FormatOptions, export_format
from pipeline.label.actor_start import ModelActorsNotStarted
from pipeline.label.attempts import GAVE_UP, MAX_ATTEMPTS
from pipeline.label.decode import DecodeStage
from pipeline.label.images import read_image_file
from pipeline.label.inputs import image_id
from pipeline.label.job import LabelOptions, run_label_job
from pipeline.label.model_stage import ModelStage
from pipeline.label.write import WriteStage
from pipeline.output_lock import LOCK_NAME
from pipeline.outputs import RunOutput
from pipeline.segments import decode_label_map_png
from pipeline.vocabulary import parse_vocabulary
from san.errors import OptionError
from san.predictor import Predictor
from san.settings import PredictionSettings
from san.transforms import SAN_EVAL_RESIZE, ResizeShortestEdge

ROOT = Path(__file__).resolve().parents[1]
# The jobs that these tests start as processes start their own local Ray.
LOCAL_RAY = {**os.environ, "RAY_ADDRESS": "local"}
# The smoke-test model's input size in these tests: at SAN's 640 its inference took about 7 s of each job's 25 (what
# they test does not depend on the size; tests/test_label_sizes.py and the parity tests cover the sizes).
SHORT_SIDE = 320
pytestmark = pytest.mark.slow


def ray_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    ray = str(Path(sys.executable).with_name("ray"))
    return subprocess.run([ray, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster from `ray start --head` (as the README starts one), on free ports.

    `--block` keeps the cluster tied to one process group, so the test stops only its own cluster
    (`ray stop` would stop every Ray on the machine).
    """
    # As after `source .venv/bin/activate`: the job's `python` is the project's interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": path}
    env.pop("RAY_ADDRESS", None)
    dashboard = f"http://127.0.0.1:{free_port()}"
    gcs_port = free_port()
    ports = [
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "node-manager-port",
        "object-manager-port",
        "ray-client-server-port",
    ]
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard.rsplit(':', 1)[1]}",
            "--disable-usage-stats",
            f"--port={gcs_port}",
            *(f"--{flag}={free_port()}" for flag in ports),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Ready means a job can be submitted: the dashboard answers *and* its job agent has registered,
        # which can take a minute or more after `ray start` on a loaded 2-CPU machine.
        deadline = time.time() + 300
        while True:
            probe = ray_cli("job", "submit", "--address", dashboard, "--no-wait", "--", "true", env=env, timeout=120)
            if probe.returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            assert time.time() < deadline, f"the cluster accepted no job within 300 s: {probe.stderr[-2000:]}"
            time.sleep(2)
        yield {**env, "DASHBOARD": dashboard, "GCS": f"127.0.0.1:{gcs_port}"}
    finally:
        # Killed outright: a graceful stop outlasted 10 s on a 2-CPU machine, and a test cluster has nothing to save.
        # The cluster's processes, its workers included, are all in that group: none is left after the kill (measured).
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        # `ray start` records its cluster for later `ray.init()` calls; a stale record makes them hang.
        record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if record.exists() and record.read_text().strip().endswith(f":{gcs_port}"):
            record.unlink()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("inputs")
    good = write_good_images(folder / "images")
    bad = write_bad_inputs(folder / "images" / "bad")
    vocab = folder / "vocab.txt"
    vocab.write_text(VOCABULARY)
    return {"folder": folder / "images", "good": good, "bad": bad, "vocab": vocab}


def label_command(inputs: dict, output: Path, *extra: str, source: Path | None = None) -> list[str]:
    """``python jobs/label.py`` on the fixture's folder (or on ``source``) with the smoke-test model."""
    return [
        "python",
        "jobs/label.py",
        "--smoke-test",
        "--vocab",
        str(inputs["vocab"]),
        "--input",
        str(source or inputs["folder"]),
        "--output",
        str(output),
        "--no-progress",
        "--short-side",
        str(SHORT_SIDE),
        *extra,
    ]


def start_gated_job(
    inputs: dict, tmp_path: Path, *extra: str, progress: bool = False, **popen: Any
) -> tuple[subprocess.Popen, list[str]]:
    """The job on every fixture input and, last, ``tmp_path / "held.png"``, writing to ``tmp_path / "labels"``
    through ``tests/gated_label_job.py``: it labels the others but cannot finish while ``tmp_path / "gate"``
    (created here) exists. Started in its own process group, stderr piped; returns the process and its
    command (a rerun without the gate labels the rest). ``progress``: show the progress bar on stderr."""
    held, gate = tmp_path / "held.png", tmp_path / "gate"
    Image.fromarray(read_image_file(inputs["good"][0])).save(held)
    gate.touch()
    listing = tmp_path / "inputs.txt"
    bad = (inputs["folder"] / "bad" / name for name in inputs["bad"])
    listing.write_text("".join(f"{path}\n" for path in [*inputs["good"], *bad, held]))
    script = ROOT / "tests" / "gated_label_job.py"
    job = label_command(inputs, tmp_path / "labels", *extra, source=listing)[2:]
    if progress:
        job.remove("--no-progress")
    command = [sys.executable, str(script), str(held), str(gate), *job]
    pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    process = subprocess.Popen(command, cwd=ROOT, env=LOCAL_RAY, start_new_session=True, **pipes, **popen)
    return process, command


def wait_for_first_shard(process: subprocess.Popen, output: Path) -> None:
    deadline = time.time() + 300
    while not list((output / "predictions").glob("part-*.parquet")):
        assert process.poll() is None, f"the job ended before its first shard: {process.stderr.read()[-3000:]!r}"
        assert time.time() < deadline, "no shard written within 300 s"
        time.sleep(0.05)


def default_sigint() -> None:
    """In the job's process, before it starts: Ctrl-C stops it, as in a terminal, even where this test runs
    with SIGINT ignored (a shell starts background commands so, and children inherit it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(process: subprocess.Popen) -> None:
    """Kill a job's process group if it still runs (a test that failed half way), and close its stderr pipe."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if process.stderr is not None:
        process.stderr.close()


def smoke_options(inputs: dict, output: Path, source: Path | None = None, **extra: Any) -> LabelOptions:
    """The options of :func:`label_command` (with ``extra`` added or replacing them), for ``run_label_job`` in this
    process, on the suite's Ray: a job process would start a Ray of its own, seconds of the suite."""
    given = {"vocab": str(inputs["vocab"]), "input": str(source or inputs["folder"]), "output": str(output)}
    return LabelOptions(**{**given, "smoke_test": True, "short_side": SHORT_SIDE, "progress": False, **extra})


def options_of(command: list[str]) -> LabelOptions:
    """The options of a job that :func:`start_gated_job` started (its ``command``), parsed as ``jobs/label.py``
    parses them, without the progress bar: to resume its run in this process, on the suite's Ray."""
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, LabelOptions)
    return dataclass_from_args(LabelOptions, parser.parse_args(command[4:]), progress=False)


def read_outputs(output: Path) -> tuple[list[dict], dict, list[dict]]:
    predictions = pq.read_table(output / "predictions").to_pylist()
    coco = json.loads((output / "coco.json").read_text())
    errors = pq.read_table(output / "errors.parquet").to_pylist()
    return predictions, coco, errors


@pytest.mark.usefixtures("local_ray")
def test_one_job_per_output_and_resume_after_kill(inputs: dict, tmp_path: Path) -> None:
    output, gate = tmp_path / "labels", tmp_path / "gate"
    process, command = start_gated_job(inputs, tmp_path, "--shard-size", "1", "--batch-size", "1")
    try:
        wait_for_first_shard(process, output)  # the job cannot finish (the held image): it holds the output
        second = subprocess.run(command, cwd=ROOT, env=LOCAL_RAY, capture_output=True, text=True, timeout=600)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"error: {output} is being written by another labeling job (PID {process.pid} on host " in second.stderr
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        stop(process)
        gate.unlink()
    partial = pq.read_table(output / "predictions").num_rows
    assert partial > 0, "the kill landed after the first shard"

    # The killed job's lock is left behind, and taken over: its process is gone.
    resumed = run_label_job(options_of(command))
    assert resumed["status"] == "complete"
    predictions, coco, errors = read_outputs(output)
    labeled = sorted([*map(str, inputs["good"]), str(tmp_path / "held.png")])
    assert sorted(row["image_path"] for row in predictions) == labeled
    assert sorted(image["file_name"] for image in coco["images"]) == labeled
    assert len(errors) == len(inputs["bad"])
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] >= partial
    assert not (output / LOCK_NAME).exists(), "the lock is released when the job ends"


@pytest.mark.usefixtures("local_ray")
def test_ctrl_c_keeps_finished_images_and_says_how_to_resume(inputs: dict, tmp_path: Path) -> None:
    output, gate = tmp_path / "labels", tmp_path / "gate"
    # The progress bar tells the test when images are done; a pytest started in the background
    # (`make test &`) ignores SIGINT, and its children would too.
    process, command = start_gated_job(
        inputs, tmp_path, "--batch-size", "2", "--shard-size", "2", progress=True, preexec_fn=default_sigint
    )
    try:
        seen = b""
        # A few images written (the bar counts written files' rows); the held image keeps the job from finishing.
        while not re.search(rb"labeled=([4-9]|\d\d)", seen):
            chunk = process.stderr.read1(4096)
            assert chunk, f"the job ended before labeling 4 images: {seen[-2000:]!r}"
            seen += chunk
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        stderr = (seen + process.stderr.read()).decode(errors="replace")
        assert process.wait(timeout=120) == 130, stderr[-3000:]
    finally:
        stop(process)
        gate.unlink()
    assert "interrupted; the images labeled so far are saved: rerun the same command" in stderr
    assert "Traceback" not in stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["error"].startswith("KeyboardInterrupt")
    saved = pq.read_table(output / "predictions").num_rows
    assert saved >= 4, "every image counted before Ctrl-C was written"

    run_label_job(options_of(command))
    predictions, _, _ = read_outputs(output)
    labeled = sorted([*map(str, inputs["good"]), str(tmp_path / "held.png")])
    assert sorted(row["image_path"] for row in predictions) == labeled
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["skipped"] == saved


def test_sigterm_as_from_ray_job_stop_is_recorded_as_stopped(inputs: dict, tmp_path: Path) -> None:
    output, gate = tmp_path / "labels", tmp_path / "gate"
    process, _ = start_gated_job(inputs, tmp_path, "--shard-size", "1", "--batch-size", "1")
    try:
        wait_for_first_shard(process, output)
        process.send_signal(signal.SIGTERM)  # what `ray job stop` sends the job's driver
        assert process.wait(timeout=120) == 143
        stderr = process.stderr.read().decode(errors="replace")
    finally:
        stop(process)
        gate.unlink()
    assert "stopped by SIGTERM (e.g. ray job stop); the images labeled so far are saved" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["error"].startswith("StopRequested: stopped by SIGTERM")
    assert not (output / LOCK_NAME).exists()


@pytest.mark.usefixtures("local_ray")
def test_failed_inputs_are_retried_and_repeated_paths_reported(
    inputs: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [read_image_file(p) for p in inputs["good"][:2]]
    encoded = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    shards = tmp_path / "shards"
    shards.mkdir()
    for name, data in zip(("train-0.parquet", "val-0.parquet"), encoded, strict=True):  # two images, one path
        pq.write_table(pa.table({"image": [{"bytes": data, "path": "0001.png"}]}), shards / name)
    late = tmp_path / "late.png"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{late}\n")

    def run(source: Path, output: Path, coco: str = "single") -> tuple[str, dict]:
        """The job in this process (``jobs/label.py`` itself runs in the other tests): its stderr and manifest."""
        run_label_job(smoke_options(inputs, output, source, coco=coco))
        return capsys.readouterr().err, json.loads((output / "manifest.json").read_text())

    stderr, manifest = run(shards, tmp_path / "from-parquet", coco="shards")
    assert manifest["input"] == str(shards)  # what reviews and exports list again (pipeline.run_images)
    assert manifest["counts"]["labeled"] == 1 and manifest["counts"]["duplicates"] == 1
    assert manifest["duplicate_paths"] == ["0001.png"]
    assert "1 input rows repeat the image_path" in stderr
    (part,) = (tmp_path / "from-parquet" / "coco").glob("part-*.json")  # --coco shards: one per predictions file
    assert [image["file_name"] for image in COCO(str(part)).dataset["images"]] == ["0001.png"]
    assert not (tmp_path / "from-parquet" / "coco.json").exists()
    # The export writes the labeled row's own bytes: its path "0001.png" names no file.
    export_format(tmp_path / "from-parquet", FormatOptions(format="yolo-seg", output=str(tmp_path / "yolo")))
    (exported,) = (tmp_path / "yolo" / "images").iterdir()
    assert exported.name == "0001.png" and exported.read_bytes() in encoded

    _, manifest = run(listing, tmp_path / "from-list")
    assert manifest["counts"]["failed"] == 1
    Image.fromarray(images[0]).save(late)  # the missing file appears: a rerun labels it
    monkeypatch.setattr("pipeline.label.job.SINGLE_COCO_IMAGES", 0)  # as if the run were too big for one coco.json
    stderr, manifest = run(listing, tmp_path / "from-list")
    assert "pycocotools needs about 3 times its size in memory" in stderr and "--coco shards" in stderr
    assert manifest["counts"]["labeled"] == 1 and manifest["counts"]["failed"] == 0
    assert pq.read_table(tmp_path / "from-list" / "errors.parquet").num_rows == 0


@pytest.mark.usefixtures("local_ray")
def test_fp16_on_cpu_workers_is_refused_before_labeling(inputs: dict, tmp_path: Path) -> None:
    options = LabelOptions(
        vocab=str(inputs["vocab"]), input=str(inputs["folder"]), output=str(tmp_path / "labels"), smoke_test=True
    )
    options.dtype = "fp16"
    with pytest.raises(OptionError, match="^dtype fp16 needs GPU workers") as error:
        run_label_job(options)
    assert error.value.worded(flag).startswith("--dtype fp16 needs GPU workers")
    assert not (tmp_path / "labels" / "predictions").exists()


class _RunsCode:
    """Unpickled, it would create the file ``marker``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_file_that_is_no_san_checkpoint_is_one_line_before_any_worker_starts(inputs: dict, tmp_path: Path) -> None:
    """A malicious pickle (refused unread by ``weights_only``), like a random ``.pt`` or a text file, printed 220
    lines of Ray actor tracebacks: the driver now names it before Ray starts."""
    checkpoint, marker = tmp_path / "model.pth", tmp_path / "ran"
    checkpoint.write_bytes(pickle.dumps({"model": _RunsCode(marker)}))
    job = [word for word in label_command(inputs, tmp_path / "labels")[1:] if word != "--smoke-test"]
    command = [sys.executable, *job, "--model", str(checkpoint), "--config", "san_vit_b_16"]
    result = subprocess.run(command, cwd=ROOT, env=LOCAL_RAY, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        f"error: {checkpoint} is not a readable PyTorch checkpoint (it holds Python objects, not only tensors; they "
        "are refused unread, as loading them could run code); expected an official SAN release checkpoint "
        "{'model': state_dict} (.pth, with its config) or a .safetensors checkpoint written by this project"
    ]
    assert not marker.exists() and not (tmp_path / "labels").exists()


@pytest.mark.usefixtures("local_ray")
def test_a_rerun_with_another_vocabulary_is_refused(inputs: dict, tmp_path: Path) -> None:
    """The run labeled in this process (on the suite's Ray); the command that would continue it with another
    vocabulary is refused before it starts Ray."""
    output = tmp_path / "labels"
    run_label_job(smoke_options(inputs, output, limit=5))
    run = RunOutput(output)
    assert run.read_predictions().num_rows + run.read_errors().num_rows == 5
    other_vocab = tmp_path / "other.txt"
    other_vocab.write_text("dog\n")
    conflict = [sys.executable, *label_command(inputs, output, "--limit", "5", "--vocab", str(other_vocab))[1:]]
    refused = subprocess.run(conflict, cwd=ROOT, env=LOCAL_RAY, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "different vocabulary" in refused.stderr


class CrashOnce(ModelStage):
    """A predictor whose worker process dies on its second batch, once per run (a marker file)."""

    marker = ""  # set by the test before the run; the class travels to the workers by value

    def __call__(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2 and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)  # as on an OOM kill or a lost node
        return super().__call__(batch)


def label_with_stage(
    stage: type,
    inputs: dict,
    output: Path,
    monkeypatch,
    replaces: str = "ModelStage",
    source: Path | None = None,
    **extra,
) -> dict:
    """``run_label_job`` in this process (smoke-test model, batches of 2) on the fixture's folder (or ``source``)
    with ``stage`` as the predictor (or as the stage named ``replaces``)."""
    from ray import cloudpickle  # Ray serialises with its own copy of cloudpickle

    import pipeline.label.job

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
    monkeypatch.setattr(pipeline.label.job, replaces, stage)
    try:
        return run_label_job(smoke_options(inputs, output, source, **{"batch_size": 2, **extra}))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.usefixtures("local_ray")
def test_dead_worker_is_replaced_and_its_batch_retried(inputs: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(CrashOnce, "marker", str(tmp_path / "crashed"))
    monkeypatch.setattr(pipeline.label.batching, "BLOCK_IMAGES", 2)  # a block per batch: the actor gets several
    output = tmp_path / "labels"
    # One actor takes every batch, so it reaches its second whatever the machine's CPUs.
    manifest = label_with_stage(CrashOnce, inputs, output, monkeypatch, workers=(1, 1))
    assert (tmp_path / "crashed").exists(), "a worker died during the run"
    predictions, coco, errors = read_outputs(output)
    good = sorted(str(p) for p in inputs["good"])
    assert sorted(row["image_path"] for row in predictions) == good, "every image exactly once after the restart"
    assert sorted(image["file_name"] for image in coco["images"]) == good
    assert len(errors) == len(inputs["bad"]) and manifest["counts"]["labeled"] == len(good)


class DecodeSeen(DecodeStage):
    """A decode stage that leaves the file ``marker`` once it has decoded a batch."""

    marker = ""

    def __call__(self, batch):
        rows = super().__call__(batch)
        Path(self.marker).touch()
        return rows


class LoadsUntilDecoded(ModelStage):
    """A model that loads until the first batch is decoded (at most 60 s), and says whether it was."""

    marker = ""

    def __init__(self, *args, **kwargs):
        deadline = time.time() + 60
        while not Path(self.marker).exists() and time.time() < deadline:
            time.sleep(0.05)
        Path(f"{self.marker}.seen-while-loading").write_text(str(Path(self.marker).exists()))
        super().__init__(*args, **kwargs)


@pytest.mark.usefixtures("local_ray")
def test_images_are_decoded_while_the_model_loads(inputs: dict, tmp_path: Path, monkeypatch) -> None:
    """Ray Data does not hold the pipeline's tasks until the model actors are up (its wait for them cost a
    null-model job 1.2-1.4 s of its start): the first batch is decoded while the model loads."""
    import pipeline.label.job

    marker = tmp_path / "decoded"
    monkeypatch.setattr(DecodeSeen, "marker", str(marker))
    monkeypatch.setattr(LoadsUntilDecoded, "marker", str(marker))
    monkeypatch.setattr(pipeline.label.job, "DecodeStage", DecodeSeen)
    manifest = label_with_stage(LoadsUntilDecoded, inputs, tmp_path / "labels", monkeypatch)
    assert manifest["status"] == "complete" and manifest["counts"]["labeled"] == len(inputs["good"])
    assert Path(f"{marker}.seen-while-loading").read_text() == "True"


class NeverLoads(ModelStage):
    """A model actor that never becomes ready (as one waiting for resources that never come)."""

    def __init__(self, *args, **kwargs):
        time.sleep(3600)


@pytest.mark.usefixtures("local_ray")
def test_a_model_that_never_starts_fails_the_job_in_the_time_allowed(inputs: dict, tmp_path: Path, monkeypatch) -> None:
    import pipeline.label.actor_start
    import pipeline.label.job

    monkeypatch.setattr(pipeline.label.job, "ACTOR_START_TIMEOUT_S", 3)
    monkeypatch.setattr(pipeline.label.actor_start, "WATCH_INTERVAL_S", 0.2)
    handler = signal.getsignal(signal.SIGUSR1)
    started = time.time()
    with pytest.raises(ModelActorsNotStarted, match=r"^no model worker started within 3 s: each asks for .* CPUs"):
        label_with_stage(NeverLoads, inputs, tmp_path / "labels", monkeypatch)
    assert time.time() - started < 120
    manifest = json.loads((tmp_path / "labels" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"].startswith("ModelActorsNotStarted: no model worker")
    assert signal.getsignal(signal.SIGUSR1) == handler, "the guard's signal handler is removed again"
    deadline = time.time() + 60
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.time() < deadline, "the actor that never loaded still holds its CPUs"
        time.sleep(0.5)


class FailOn(ModelStage):
    """A predictor that fails on one image every time: raises, or kills its worker process."""

    image = ""  # set by the test before the run, like CrashOnce.marker
    deaths = ""  # a folder: one file per worker process killed, or "" to raise instead

    def _label(self, batch, rows):
        if any(str(batch["image_path"][i]) == self.image for i in rows):
            if self.deaths:
                (Path(self.deaths) / str(os.getpid())).touch()
                os._exit(1)  # as a segfault or an out-of-memory kill would
            raise RuntimeError(f"injected fault on {Path(self.image).name}")
        return super()._label(batch, rows)


@pytest.mark.parametrize("fault", ["raises", "kills its worker"])
@pytest.mark.usefixtures("local_ray")
def test_an_image_the_model_fails_on_becomes_an_error_row(
    fault: str, inputs: dict, tmp_path: Path, monkeypatch
) -> None:
    bad = str(inputs["good"][1])
    deaths = tmp_path / "deaths"
    deaths.mkdir()
    monkeypatch.setattr(FailOn, "image", bad)
    monkeypatch.setattr(FailOn, "deaths", str(deaths) if fault == "kills its worker" else "")
    output = tmp_path / "labels"
    manifest = label_with_stage(FailOn, inputs, output, monkeypatch)
    predictions, coco, errors = read_outputs(output)
    others = sorted(str(p) for p in inputs["good"] if str(p) != bad)
    assert sorted(row["image_path"] for row in predictions) == others, "every other image labeled exactly once"
    assert sorted(image["file_name"] for image in coco["images"]) == others
    reasons = {row["image_path"]: row["error"] for row in errors}
    assert len(errors) == len(inputs["bad"]) + 1 and manifest["counts"]["labeled"] == len(others)
    if fault == "raises":
        assert reasons[bad] == "model failed: RuntimeError: injected fault on " + Path(bad).name
        assert not any(deaths.iterdir())
    else:
        assert reasons[bad] == GAVE_UP
        assert len(list(deaths.iterdir())) == MAX_ATTEMPTS, "one worker per attempt, and no attempt more"


def no_space(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDisk(WriteStage):
    """A write stage whose disk is full once it has written 3 prediction files (each leaves a file in the folder
    ``written``)."""

    written = ""  # set by the test before the run, like CrashOnce.marker

    def __call__(self, batch):
        if not disk_full(Path(self.written)):
            record = super().__call__(batch)
            if record.column("labeled")[0].as_py():
                (Path(self.written) / str(uuid.uuid4())).touch()
            return record
        with mock.patch("pipeline.output_shards.write_atomic", no_space):  # in this worker process
            return super().__call__(batch)


def disk_full(written: Path) -> bool:
    return len(list(written.iterdir())) >= 3


@pytest.mark.usefixtures("local_ray")
def test_a_full_disk_a_damaged_file_and_a_changed_image_each_stop_nothing(
    inputs: dict, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    """The disk fills during a run: one line, the manifest failed. Then, with space again, one prediction file is
    damaged and one labeled image replaced by another: the rerun sets the file aside, labels its images and the
    changed one again, and every image appears once."""
    import san.atomic

    source, output, written = tmp_path / "images", tmp_path / "labels", tmp_path / "written"
    shutil.copytree(inputs["folder"], source)
    written.mkdir()
    good = sorted(str(p).replace(str(inputs["folder"]), str(source)) for p in inputs["good"])
    monkeypatch.setattr(FullDisk, "written", str(written))
    write_atomic = san.atomic.write_atomic  # on the driver, the manifest's atomic write fails as well

    def driver_write(*args: Any, **kwargs: Any) -> Any:
        return (no_space if disk_full(written) else write_atomic)(*args, **kwargs)

    monkeypatch.setattr(san.atomic, "write_atomic", driver_write)
    with pytest.raises(OutputFullError) as error:
        label_with_stage(FullDisk, inputs, output, monkeypatch, "WriteStage", source, shard_size=1)
    assert str(error.value) == (
        f"no space left to write to the output folder {output} (No space left on device); the images labeled so far "
        "are saved: free space there and rerun the same command to label the rest"
    )
    assert "Traceback" not in capsys.readouterr().err
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == f"OutputFullError: {error.value}"
    saved = RunOutput(output).read_predictions(["image_path"]).column(0).to_pylist()
    assert saved and len(saved) < len(good)

    monkeypatch.setattr(san.atomic, "write_atomic", write_atomic)  # space again
    shards = {s: pq.read_table(s).column("image_path").to_pylist() for s in (output / "predictions").iterdir()}
    damaged = next(iter(shards))
    damaged.write_bytes(damaged.read_bytes()[:100])
    changed = Path(next(p for p in saved if p not in shards[damaged]))
    Image.fromarray(np.full((33, 47, 3), 200, np.uint8)).save(changed, format=Image.open(changed).format)
    manifest = label_with_stage(WriteStage, inputs, output, monkeypatch, "WriteStage", source)
    stderr = capsys.readouterr().err
    assert f"warning: {damaged} cannot be read (" in stderr and f"set aside as _{damaged.name}.corrupt" in stderr
    assert "warning: 1 images changed since they were labeled (" in stderr and repr(str(changed)) in stderr
    assert (damaged.parent / f"_{damaged.name}.corrupt").exists() and "Traceback" not in stderr
    assert manifest["status"] == "complete" and manifest["generation"] == 2
    assert manifest["set_aside"] == [f"predictions/_{damaged.name}.corrupt"]
    assert manifest["counts"]["changed"] == 1 and manifest["changed_paths"] == [str(changed)]
    assert manifest["counts"]["skipped"] == len(saved) - len(shards[damaged]) - 1
    assert manifest["counts"]["labeled"] == len(good)
    predictions, coco, errors = read_outputs(output)
    assert sorted(row["image_path"] for row in predictions) == good, "every image once in the files"
    assert sorted(image["file_name"] for image in coco["images"]) == good
    [image] = [image for image in coco["images"] if image["file_name"] == str(changed)]
    assert (image["width"], image["height"]) == (47, 33), "the new image's label"
    assert len(errors) == len(inputs["bad"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_job_in_bf16_labels_like_the_cpu_job(inputs: dict, tmp_path: Path) -> None:
    label_maps = {}
    runs = {"cpu": ("--gpus-per-worker", "0"), "gpu": ("--gpus-per-worker", "1", "--dtype", "bf16")}
    for name, extra in runs.items():
        command = [sys.executable, *label_command(inputs, tmp_path / name, *extra)[1:]]
        result = subprocess.run(command, cwd=ROOT, env=LOCAL_RAY, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["resources"]["device"] == ("cuda" if name == "gpu" else "cpu")
        predictions, _, _ = read_outputs(tmp_path / name)
        label_maps[name] = {row["image_path"]: decode_label_map_png(row["label_map_png"]) for row in predictions}
    assert label_maps["gpu"].keys() == label_maps["cpu"].keys() == {str(p) for p in inputs["good"]}
    agreement = np.mean([np.mean(label_maps["gpu"][k] == label_maps["cpu"][k]) for k in label_maps["cpu"]])
    assert agreement >= 0.99, f"bf16 on the GPU agrees with fp32 on the CPU on {agreement:.2%} of the pixels"


@pytest.mark.usefixtures("local_ray")
def test_a_smoke_run_without_input_labels_images_stored_in_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--smoke-test`` alone: its generated images are a Parquet file of image bytes in the output folder (where
    cluster workers read them), named as the run's input; a rerun finds them labeled. The run keeps its books (the
    listing tally, the attempt ledger) in one actor: a worker process fewer at every start."""
    from pipeline.label import attempts, resources, resume

    made: list[str] = []

    def counted(cls: type) -> object:
        made.append(cls.__name__)
        return resources.start_on_driver_node(cls)

    for module in (resume, attempts):  # every module that could start a bookkeeping actor
        monkeypatch.setattr(module, "start_on_driver_node", counted, raising=False)
    (tmp_path / "vocab.txt").write_text("cat\nsky\n")
    options = {"vocab": str(tmp_path / "vocab.txt"), "output": str(tmp_path / "out"), "smoke_test": True}
    options["short_side"] = SHORT_SIDE
    manifest = run_label_job(LabelOptions(**options, progress=False))
    assert manifest["status"] == "complete" and manifest["counts"]["new_labeled"] == 8
    assert made == ["RunBook"]
    assert manifest["input"] == str(tmp_path / "out" / "smoke-inputs.parquet")
    paths = RunOutput(tmp_path / "out").read_predictions(["image_path"]).column(0).to_pylist()
    assert sorted(paths) == [f"smoke_{i:02d}.{'jpg' if i % 2 else 'png'}" for i in range(8)]
    again = run_label_job(LabelOptions(**options, progress=False))
    assert again["counts"]["new_labeled"] == 0 and again["counts"]["skipped"] == 8


# The tests on a `ray start` cluster come last: the module's cluster is stopped after its last user, and would run
# idle beside every later test of the module.
def test_ray_job_submit_end_to_end(ray_cluster: dict, inputs: dict, tmp_path: Path) -> None:
    output = tmp_path / "labels"
    submitted = ray_cli(
        "job",
        "submit",
        "--address",
        ray_cluster["DASHBOARD"],
        "--working-dir",
        ".",
        "--",
        *label_command(inputs, output, "--keep-regions"),
        env=ray_cluster,
        timeout=600,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]

    predictions, coco, errors = read_outputs(output)
    good = sorted(str(p) for p in inputs["good"])
    assert sorted(row["image_path"] for row in predictions) == good, "every good image exactly once"
    assert sorted(image["file_name"] for image in coco["images"]) == good
    assert {e["image_path"].rsplit("/", 1)[1]: e["error"] for e in errors}.keys() == inputs["bad"].keys()
    for error in errors:
        assert inputs["bad"][error["image_path"].rsplit("/", 1)[1]] in error["error"]

    api = COCO(str(output / "coco.json"))
    vocabulary = parse_vocabulary(VOCABULARY)
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == list(vocabulary.names)
    torch.manual_seed(0)
    settings = PredictionSettings(resize=ResizeShortestEdge(SHORT_SIDE, SAN_EVAL_RESIZE.max_size))  # the job's
    predictor = Predictor(san.build_san("san_tiny"), vocabulary.prompts, vocabulary.prompt_to_class, "cpu", settings)
    for row in predictions:
        label_map = decode_label_map_png(row["label_map_png"])
        assert label_map.shape == (row["height"], row["width"])
        assert row["image_id"] == image_id(row["image_path"])
        direct = predictor.predict([read_image_file(row["image_path"])])[0]
        np.testing.assert_array_equal(label_map, direct.label_map, err_msg=row["image_path"])
        annotations = api.loadAnns(api.getAnnIds(imgIds=[row["image_id"]]))
        assert len(annotations) == len(row["segments"]) == len(np.unique(label_map))
        for annotation in annotations:
            class_index = annotation["category_id"] - 1
            np.testing.assert_array_equal(api.annToMask(annotation).astype(bool), label_map == class_index)
            assert annotation["area"] == int((label_map == class_index).sum())
            assert annotation["bbox"] == [float(v) for v in mask_utils.toBbox(annotation["segmentation"])]
            assert annotation["score"] == pytest.approx(direct.scores[label_map == class_index].mean(), rel=1e-5)

    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"]["labeled"] == len(good) and manifest["counts"]["failed"] == len(inputs["bad"])

    # The evaluation job on the same cluster: its Ray tasks give the single-process code's metrics.json.
    gt = tmp_path / "gt"
    gt.mkdir()
    rng = np.random.default_rng(0)
    for row in predictions:
        truth = decode_label_map_png(row["label_map_png"])  # vocabulary order, 255 = ignored
        wrong = rng.random(truth.shape) < 0.3
        truth = np.where(wrong, rng.integers(0, len(vocabulary), truth.shape), truth).astype(np.uint8)
        Image.fromarray(truth).save(gt / f"{Path(row['image_path']).stem}.png")
    command = ["python", "jobs/evaluate.py", "--predictions", str(output), "--gt", str(gt)]
    submit = ["job", "submit", "--address", ray_cluster["DASHBOARD"], "--working-dir", ".", "--", *command]
    evaluated = ray_cli(*submit, env=ray_cluster)
    if "Failed to download runtime_env file package" in evaluated.stdout + evaluated.stderr:  # README: submit again
        evaluated = ray_cli(*submit, env=ray_cluster)
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    assert "mIoU" in evaluated.stdout
    reference_evaluate(output, str(gt), metrics_path=tmp_path / "reference.json")
    written, reference = (json.loads(p.read_text()) for p in (output / "metrics.json", tmp_path / "reference.json"))
    assert written.pop("metrics_path") != reference.pop("metrics_path")
    assert written == reference and written["num_images"] == len(good)

    # The kept regions (fp16, the flag's value when given alone), relabeled by a job submitted the same way.
    regions = pq.read_table(output / "regions", columns=["image_path", "dtype"]).to_pylist()
    assert sorted(row["image_path"] for row in regions) == good and {row["dtype"] for row in regions} == {"fp16"}
    (tmp_path / "new.txt").write_text("dog\ncat: kitten\n")
    relabel = ["python", "jobs/relabel.py", str(output), "--vocab", str(tmp_path / "new.txt"), "--no-progress"]
    submit = ["job", "submit", "--address", ray_cluster["DASHBOARD"], "--working-dir", ".", "--", *relabel]
    submitted = ray_cli(*submit, "--output", str(tmp_path / "relabeled"), env=ray_cluster, timeout=600)
    if "Failed to download runtime_env file package" in submitted.stdout + submitted.stderr:  # README: submit again
        submitted = ray_cli(*submit, "--output", str(tmp_path / "relabeled"), env=ray_cluster, timeout=600)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    predictions, coco, errors = read_outputs(tmp_path / "relabeled")
    assert sorted(row["image_path"] for row in predictions) == good
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]
    assert {e["image_path"].rsplit("/", 1)[1] for e in errors} == inputs["bad"].keys(), "the source run's errors"
    relabeled = json.loads((tmp_path / "relabeled" / "manifest.json").read_text())
    assert relabeled["status"] == "complete" and relabeled["relabeled_from"]["regions"] == "fp16"


def test_a_job_whose_ray_authentication_differs_from_the_cluster_says_what_to_export(
    ray_cluster: dict, inputs: dict, tmp_path: Path
) -> None:
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef" * 4}  # the cluster's is "disabled"
    env = {**ray_cluster, **token, "RAY_ADDRESS": ray_cluster["GCS"]}
    command = [sys.executable, *label_command(inputs, tmp_path / "labels", "--limit", "2")[1:]]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: Ray cancels this job's actors before they start: this process uses token " in result.stderr
    assert "Export RAY_AUTH_MODE=disabled, the setting the cluster was started with" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "labels").exists(), "the output folder the job created is removed again"
