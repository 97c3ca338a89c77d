"""The labeling job on a simulated cluster of three 1-CPU nodes (``ray.cluster_utils.Cluster``): its actors and
tasks spread over the nodes, and a worker node removed mid-run costs no image and duplicates none; the run is then
exported (yolo-seg) and evaluated against ground truth in Ray tasks on the nodes left.

The null model (``--model null``) keeps it fast: what is tested is the pipeline, not SAN.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from local_ray import own_ray
from PIL import Image
from ray.cluster_utils import Cluster

import pipeline.label.job
from pipeline.evaluate import evaluate_run
from pipeline.exports.run import FormatOptions, export_format
from pipeline.label.decode import DecodeStage
from pipeline.label.job import LabelOptions, run_label_job
from pipeline.label.model_stage import ModelStage
from pipeline.label.resources import init_ray
from pipeline.output_shards import ANNOTATIONS_COLUMN
from pipeline.outputs import RunOutput
from pipeline.ray_internals import started_here

pytestmark = pytest.mark.slow
IMAGES = 24


class NodeRecordingModelStage(ModelStage):
    """A predict stage that records the node of each actor and, after its first batch, waits until the test has
    removed a node (its ``removed`` file): the job cannot end before a node is lost, however busy the machine."""

    folder = ""  # set by the test before the run; the class travels to the workers by value

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        (Path(self.folder) / f"actor-{ray.get_runtime_context().get_node_id()}").touch()
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        deadline = time.time() + 300
        while self.calls > 1 and not (Path(self.folder) / "removed").exists() and time.time() < deadline:
            time.sleep(0.05)
        return super().__call__(batch)


class NodeRecordingDecode(DecodeStage):
    """The decode stage, recording the node of each task."""

    folder = ""

    def __call__(self, batch):
        (Path(self.folder) / f"task-{ray.get_runtime_context().get_node_id()}").touch()
        return super().__call__(batch)


@pytest.fixture
def cluster():
    """Three nodes of 1 CPU each, the driver connected to the head."""
    # A dead node is noticed after 3 missed health checks of 0.5 s (Ray's default: 5 of 3 s).
    checks = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    own_ray()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": checks})
    workers = [nodes.add_node(num_cpus=1) for _ in range(2)]
    nodes.wait_for_nodes()
    with pytest.MonkeyPatch.context() as patch:  # joined as a job joins a cluster (no _system_config: Ray refuses it)
        patch.setenv("RAY_ADDRESS", nodes.address)
        init_ray()
    yield nodes, workers
    ray.shutdown()
    nodes.shutdown()


def test_the_job_spreads_over_nodes_and_survives_losing_one(cluster, tmp_path: Path, monkeypatch) -> None:
    from ray import cloudpickle

    nodes, workers = cluster
    assert not started_here(), "a joined cluster: the job checks that its actors can start"
    images, seen = tmp_path / "images", tmp_path / "nodes"
    images.mkdir()
    seen.mkdir()
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        size = [(48, 64), (64, 48), (40, 72), (56, 56)][i % 4]
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
    (tmp_path / "vocab.txt").write_text("cat\ndog\nsky\n")
    monkeypatch.setattr(NodeRecordingModelStage, "folder", str(seen))
    monkeypatch.setattr(NodeRecordingDecode, "folder", str(seen))
    monkeypatch.setattr(pipeline.label.job, "ModelStage", NodeRecordingModelStage)
    monkeypatch.setattr(pipeline.label.job, "DecodeStage", NodeRecordingDecode)
    # One model batch per block: 12 actor calls, so that an actor's second call waits for the node loss.
    monkeypatch.setattr(pipeline.label.batching, "BLOCK_IMAGES", 2)
    # Two actors of 0.4 CPU: the job keeps a CPU for its tasks once a node is gone (and unlike 0.5, the
    # decode tasks' share, Ray does not fuse the decode stage into the actors).
    plan = pipeline.label.job.plan_resources
    monkeypatch.setattr(
        pipeline.label.job,
        "plan_resources",
        lambda *args, **kwargs: replace(plan(*args, **kwargs), workers=(2, 2), cpus_per_worker=0.4),
    )
    output = tmp_path / "labels"
    removed: list[str] = []

    def remove_a_worker_node_with_an_actor() -> None:
        """Once the first file is written, kill a worker node that runs a predict actor (within 5 minutes: a busy
        machine starts a 3-node job slowly); then, or on giving up, let the actors left go on."""
        deadline = time.time() + 300
        try:
            while time.time() < deadline and not removed:
                written = list((output / "predictions").glob("part-*.parquet")) if output.exists() else []
                actors = {p.name.removeprefix("actor-") for p in seen.glob("actor-*")}
                victim = next((w for w in workers if w.node_id in actors), None)
                if written and victim is not None:
                    nodes.remove_node(victim, allow_graceful=False)
                    removed.append(victim.node_id)
                time.sleep(0.05)
        finally:
            (seen / "removed").touch()

    remover = threading.Thread(target=remove_a_worker_node_with_an_actor, daemon=True)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
    try:
        remover.start()
        options = LabelOptions(
            vocab=str(tmp_path / "vocab.txt"),
            input=str(images),
            output=str(output),
            model="null",
            batch_size=2,
            shard_size=2,
            progress=False,
        )
        manifest = run_label_job(options)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        remover.join()

    actor_nodes = {p.name.removeprefix("actor-") for p in seen.glob("actor-*")}
    task_nodes = {p.name.removeprefix("task-") for p in seen.glob("task-*")}
    assert len(actor_nodes) >= 2 and len(task_nodes | actor_nodes) >= 2, (actor_nodes, task_nodes)
    assert removed, "a worker node was removed while the job ran"
    expected = sorted(str(p) for p in images.iterdir())
    raw = pq.read_table(output / "predictions", columns=["image_path"]).column(0).to_pylist()
    assert sorted(raw) == expected, "every image written exactly once, none lost, none twice"
    stored = pq.read_table(output / "predictions", columns=[ANNOTATIONS_COLUMN]).column(0)
    assert stored.null_count == 0, "the write tasks on every node stored the COCO text the finish stitches"
    coco = json.loads((output / "coco.json").read_text())
    assert sorted(image["file_name"] for image in coco["images"]) == expected
    assert manifest["counts"]["labeled"] == IMAGES and manifest["counts"]["duplicates"] == 0
    assert RunOutput(output).read_errors().num_rows == 0
    # The run exported on what is left of the cluster, in Ray tasks (pipeline.exports.parallel).
    written = export_format(output, FormatOptions(format="yolo-seg", output=str(tmp_path / "yolo")))
    assert written["images"] == IMAGES
    labels = sorted(p.stem for p in (tmp_path / "yolo" / "labels").glob("*.txt"))
    assert labels == sorted(Path(p).stem for p in expected)
    # Evaluated there too, in Ray tasks: the confusion matrix of the single-process code.
    from reference_evaluate import reference_evaluate

    gt = tmp_path / "gt"
    gt.mkdir()
    for path in expected:
        height, width = np.asarray(Image.open(path)).shape[:2]
        Image.fromarray(rng.integers(0, 3, (height, width), dtype=np.uint8)).save(gt / Path(path).name)
    metrics = evaluate_run(output, str(gt), metrics_path=tmp_path / "metrics.json", progress=False)
    reference = reference_evaluate(output, str(gt), None, "detectron2", tmp_path / "reference.json")
    assert metrics["num_images"] == IMAGES
    np.testing.assert_array_equal(metrics["confusion_matrix"], reference["confusion_matrix"])


@pytest.fixture
def one_cpu_node():
    """A local Ray of a single node with 1 CPU."""
    own_ray()
    ray.init(address="local", num_cpus=1, logging_level="ERROR")
    yield
    ray.shutdown()


def test_the_job_finishes_on_a_node_of_one_cpu(one_cpu_node, tmp_path: Path) -> None:
    """With the model actor on half of the only CPU, every other stage fits in the other half (a task asking for
    a whole CPU would never start: the job hung there before)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        Image.fromarray(np.full((48, 64 if i % 2 else 40, 3), i, dtype=np.uint8)).save(images / f"{i:03d}.png")
    (tmp_path / "vocab.txt").write_text("cat\ndog\n")
    options = LabelOptions(
        vocab=str(tmp_path / "vocab.txt"),
        input=str(images),
        output=str(tmp_path / "labels"),
        model="null",
        batch_size=4,
        progress=False,
    )
    manifests: list[dict] = []
    runner = threading.Thread(target=lambda: manifests.append(run_label_job(options)), daemon=True)
    runner.start()
    runner.join(timeout=180)
    assert manifests, "the job on a 1-CPU node did not finish within 180 s"
    assert manifests[0]["counts"]["labeled"] == 12
