"""The private Ray names this project uses (pipeline/ray_internals.py) exist in the installed Ray, and a Ray
release that moves one fails with a message naming it, not an AttributeError deep in a job. (Datasets are only
built, never run: no Ray starts.)"""

from __future__ import annotations

import sys

import pytest
import ray

from pipeline.ray_internals import RayInternalsError, set_stage_resources, token_auth_enabled


def test_stage_resources_land_on_the_last_operator() -> None:
    dataset = ray.data.range(2).repartition(target_num_rows_per_block=1)
    shaped = set_stage_resources(dataset, {"num_cpus": 0.25})
    assert shaped._logical_plan.dag.ray_remote_args == {"num_cpus": 0.25}


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
