"""Starting Ray and sizing the labeling job's resources: a local Ray without the dashboard, never starve the decode
tasks, fail fast on impossible requests."""

from __future__ import annotations

import pytest
import ray
from local_ray import local_ray  # noqa: F401

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


def test_task_stages_run_at_most_one_task_per_cpu_at_once(cluster) -> None:
    """Fractional CPUs would let Ray run many decode tasks at once, each in a worker process of its own (8 of a
    quarter CPU on 2 CPUs, each costing its start and an idle loop): the plan bounds them."""
    cluster(CPU=2)
    plan = plan_resources(None, None, null_model=True)
    assert (plan.decode_tasks, plan.encode_tasks) == (2, 1)
    cluster(CPU=16, GPU=1)
    plan = plan_resources(None, None)
    assert (plan.decode_tasks, plan.encode_tasks) == (16, 4)


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


def test_init_ray_starts_no_dashboard_and_probes_only_a_cluster_it_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray that ``init_ray`` starts has no dashboard (its web modules cost seconds of every local run's start) and
    shares this process's authentication, so only a joined cluster gets the actor probe."""
    from pipeline.label import resources

    calls: list[dict] = []
    probed: list[bool] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(resources, "_check_actors_start", lambda: probed.append(True))
    monkeypatch.setattr(resources, "_spend_restart_warning", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for started_here in (True, False):
        monkeypatch.setattr(resources, "started_here", lambda started_here=started_here: started_here)
        resources.init_ray()
    assert [call["include_dashboard"] for call in calls] == [False, False]
    assert probed == [True], "the joined cluster only"


@pytest.mark.parametrize(
    ("address", "starts"), [("local", True), ("127.0.0.1:6379", False), ("ray://127.0.0.1:10001", False)]
)
def test_init_ray_sets_rays_worker_settings_only_on_a_ray_it_starts(
    monkeypatch: pytest.MonkeyPatch, address: str, starts: bool
) -> None:
    """A Ray that ``init_ray`` starts keeps idle task workers for a minute (Ray kills them after a second, and each
    batch of a decode stage that waited longer started a new worker process); a cluster that it joins (``ray job
    submit``, ``RAY_ADDRESS``, a ``ray start`` of this machine) keeps its own settings: ``ray.init`` refuses a
    ``_system_config`` there."""
    from pipeline.label import resources

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(resources, "started_here", lambda: starts)
    monkeypatch.setattr(resources, "_check_actors_start", lambda: None)
    monkeypatch.setattr(resources, "_spend_restart_warning", lambda: None)
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.delenv("RAY_idle_worker_killing_time_threshold_ms", raising=False)
    resources.init_ray()
    [call] = calls
    assert call["address"] == address
    if starts:
        assert call["_system_config"] == {"idle_worker_killing_time_threshold_ms": 60_000}
    else:
        assert "_system_config" not in call


def test_a_setting_in_the_environment_wins_over_the_local_rays_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray lets a ``_system_config`` override its ``RAY_<name>`` environment variables: a user's stays in force."""
    from pipeline.label.resources import local_ray_config

    monkeypatch.setenv("RAY_idle_worker_killing_time_threshold_ms", "5000")
    assert "idle_worker_killing_time_threshold_ms" not in local_ray_config()


@pytest.mark.usefixtures("local_ray")
def test_the_local_ray_that_init_ray_started_has_its_settings() -> None:
    """Read back from the running Ray (the suite's, started by ``init_ray``): the setting reached Ray's processes."""
    running = ray._private.state.state.get_system_config()
    assert running.get("idle_worker_killing_time_threshold_ms") == 60_000


def test_a_job_with_an_actor_pool_starts_ray_datas_actors_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up: Ray Data launches no task before its autoscaling coordinator answers, so a job with an actor pool
    creates Ray Data's actors as soon as Ray is up (their worker processes then start beside the job's own); the
    restart warning is spent after them, and evaluation and exports (no actor pool) create none."""
    from pipeline.label import resources

    events: list[str] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(resources, "start_data_actors", lambda: events.append("data actors"))
    monkeypatch.setattr(resources, "_spend_restart_warning", lambda: events.append("warning spent"))
    context = ray.data.DataContext()
    monkeypatch.setattr(ray.data.DataContext, "get_current", lambda: events.append("ray.data") or context)
    resources.init_ray(actor_pool=True)
    assert events == ["data actors", "warning spent", "ray.data"]
    events.clear()
    resources.init_ray()
    assert events == ["warning spent", "ray.data"], "evaluation and exports run no actor pool"


@pytest.mark.usefixtures("local_ray")
def test_the_restart_warnings_actor_asks_for_a_resource_no_node_has_and_is_gone_at_once() -> None:
    """The actor that spends Ray's restart warning asks for a resource that no node has (so no worker process starts
    for it, a second of CPU in a start-up bound by the CPUs) and is killed at once: its handle answers that it died."""
    from pipeline.label import resources

    assert not set(resources.NEVER_SCHEDULED) & set(ray.cluster_resources())
    actor = resources._Restartable.remote(ray.put(None))
    ray.kill(actor)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.__ray_ready__.remote(), timeout=60)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_local_ray_runs_no_dashboard_modules() -> None:
    import psutil

    from pipeline.ray_internals import started_here

    assert started_here()
    commands = []
    for process in psutil.Process().children(recursive=True):
        try:
            commands.append(" ".join(process.cmdline()))
        except psutil.Error:
            continue
    assert any("gcs_server" in command for command in commands), "this process's own Ray"
    assert not [command for command in commands if "ray-dashboard-" in command], "the dashboard's web modules"
