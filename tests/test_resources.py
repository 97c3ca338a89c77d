"""Resource sizing of the labeling job: never starve the decode tasks, fail fast on impossible requests."""

from __future__ import annotations

import pytest
import ray

from pipeline.label.resources import ResourceError, plan_resources


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch):
    def set_resources(**resources: float) -> None:
        monkeypatch.setattr(ray, "cluster_resources", lambda: dict(resources))

    return set_resources


def test_two_cpus_leave_room_for_decoding(cluster) -> None:
    cluster(CPU=2)
    plan = plan_resources(None, None)
    assert plan.device == "cpu" and plan.gpus_per_worker == 0
    assert plan.workers == (1, 1)
    assert plan.cpus_per_worker + plan.decode_cpus <= 2, "an actor plus a decode task must fit"
    assert plan.threads_per_worker == 2


def test_one_cpu_still_runs(cluster) -> None:
    cluster(CPU=1)
    plan = plan_resources(None, None)
    assert plan.workers == (1, 1) and plan.cpus_per_worker + plan.decode_cpus <= 1


def test_null_model_leaves_the_cpus_to_the_stages_it_measures(cluster) -> None:
    cluster(CPU=2)
    plan = plan_resources(None, None, null_model=True)
    assert plan.workers == (1, 1) and plan.cpus_per_worker == 0.25
    assert plan.decode_cpus <= 0.25 and plan.decode_cpus != plan.cpus_per_worker, "never fused into the actor"
    cluster(CPU=8, GPU=1)
    assert plan_resources(None, None, null_model=True).cpus_per_worker == 1.0, "on GPUs, as a model would"


def test_gpu_cluster_defaults_to_one_gpu_per_worker(cluster) -> None:
    cluster(CPU=32, GPU=4)
    plan = plan_resources(None, None)
    assert plan.device == "cuda" and plan.gpus_per_worker == 1 and plan.workers == (1, 4)
    half = plan_resources((2, 8), 0.5)
    assert half.workers == (2, 8) and half.gpus_per_worker == 0.5


def test_smoke_test_stays_on_cpu(cluster) -> None:
    cluster(CPU=8, GPU=1)
    assert plan_resources(None, None, smoke_test=True).device == "cpu"


@pytest.mark.parametrize(
    ("resources", "workers", "gpus", "message"),
    [
        ({"CPU": 8}, None, 1.0, "has none"),
        ({"CPU": 8, "GPU": 1}, None, 2.0, "more than the cluster's 1 GPUs"),
        ({"CPU": 2}, (2, 2), 0.0, "fits 1"),
        ({"CPU": 8, "GPU": 2}, (3, 4), 1.0, "fits 2"),
        ({"CPU": 0}, None, 0.0, "at least 1"),
        ({"CPU": 4}, None, -1.0, ">= 0"),
    ],
)
def test_impossible_requests_fail_at_once(cluster, resources, workers, gpus, message) -> None:
    cluster(**resources)
    with pytest.raises(ResourceError, match=message):
        plan_resources(workers, gpus)
