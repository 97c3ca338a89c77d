"""A local Ray for the tests of one module whose code joins Ray (``evaluate_run``): started once (each start costs
seconds), never a cluster that happens to run on the machine, shut down after the module."""

from __future__ import annotations

import pytest
import ray

from pipeline.label.resources import init_ray


@pytest.fixture(scope="module")
def local_ray():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ADDRESS", "local")
        init_ray()
    yield
    ray.shutdown()
