"""The private Ray names this project uses (pipeline/ray_internals.py) exist in the installed Ray, and a Ray
release that moves one fails with a message naming it, not an AttributeError deep in a job. (Datasets are only
built, never run; building one starts Ray, the suite's local one.)"""

from __future__ import annotations

import sys

import pytest
import ray
from local_ray import local_ray  # noqa: F401

from pipeline.ray_internals import (
    RayInternalsError,
    set_stage_resources,
    start_data_actors,
    started_here,
    starts_local_ray,
    token_auth_enabled,
)


@pytest.mark.usefixtures("local_ray")
def test_stage_resources_land_on_the_last_operator() -> None:
    dataset = ray.data.range(2).repartition(target_num_rows_per_block=1)
    shaped = set_stage_resources(dataset, {"num_cpus": 0.25})
    assert shaped._logical_plan.dag.ray_remote_args == {"num_cpus": 0.25}


@pytest.mark.usefixtures("local_ray")
def test_a_ray_without_the_operator_field_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = ray.data.range(1)
    monkeypatch.setattr(dataset, "_logical_plan", object())
    with pytest.raises(RayInternalsError, match=r"Ray \S+ no longer has Dataset\._logical_plan\.dag\.ray_remote_args"):
        set_stage_resources(dataset, {"num_cpus": 0.25})


def test_token_auth_check_answers() -> None:
    assert isinstance(token_auth_enabled(), bool)


def test_a_ray_without_the_auth_check_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray._private.authentication.authentication_utils", None)
    with pytest.raises(RayInternalsError, match="no longer has ray._private.authentication"):
        token_auth_enabled()


def test_started_here_is_false_before_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """(A local Ray and a joined cluster: test_resources.py and test_cluster.py.)"""
    monkeypatch.setattr(ray._private.worker, "_global_node", None)
    assert started_here() is False


def test_a_ray_without_the_driver_node_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(ray._private.worker, "_global_node")
    with pytest.raises(RayInternalsError, match=r"no longer has ray\._private\.worker\._global_node"):
        started_here()


@pytest.mark.parametrize(
    ("environment", "address", "starts"),
    [
        ("local", None, True),
        ("127.0.0.1:6379", None, False),
        ("ray://127.0.0.1:10001", None, False),
        ("ray://127.0.0.1:10001", "auto", False),
        ("", "local", True),
        ("", "127.0.0.1:6379", False),
    ],
)
def test_starts_local_ray_follows_ray_inits_rule(
    monkeypatch: pytest.MonkeyPatch, environment: str, address: str | None, starts: bool
) -> None:
    """(Without an address, the answer depends on a ``ray start`` on this machine: not tested here.)"""
    monkeypatch.setenv("RAY_ADDRESS", environment)
    assert starts_local_ray(address) is starts


def test_a_ray_without_the_address_rule_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(ray._private.services, "canonicalize_bootstrap_address")
    with pytest.raises(RayInternalsError, match=r"no longer has ray\._private\.services\.canonicalize_bootstrap"):
        starts_local_ray("local")


@pytest.mark.usefixtures("local_ray")
def test_ray_datas_actors_are_the_ones_ray_data_finds_by_name() -> None:
    start_data_actors()
    start_data_actors()  # found again, not made twice
    for name in ("AutoscalingCoordinator", "ActorLocationTracker"):
        assert ray.get_actor(name, namespace=name)
    from ray.data._internal.stats import STATS_ACTOR_NAME, STATS_ACTOR_NAMESPACE

    assert ray.get_actor(STATS_ACTOR_NAME, namespace=STATS_ACTOR_NAMESPACE)


def test_a_ray_without_ray_datas_actor_functions_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray.data._internal.cluster_autoscaler", None)
    with pytest.raises(RayInternalsError, match="no longer has ray.data._internal's get_or_create functions"):
        start_data_actors()
