"""The suite's one local Ray, for the tests whose code joins Ray (``init_ray``: the jobs run in this process,
``evaluate_run``, the exports' and selections' tasks): never a cluster that happens to run on the machine.

Started by the first test module that asks for it and kept for the later ones (each start costs seconds, and a
minute on a loaded machine); shut down when the session ends. A module that needs a Ray of its own
(another size, several nodes) calls :func:`own_ray` first. Modules take it with
``pytest.mark.usefixtures("local_ray")`` (an argument of that name would shadow the import: ruff's F811).
"""

from __future__ import annotations

import pytest
import ray

from pipeline.label.resources import init_ray
from pipeline.ray_internals import started_here


@pytest.fixture(scope="module")
def local_ray(request: pytest.FixtureRequest):
    if ray.is_initialized() and not started_here():  # e.g. Ray Data's own ray.init joined a `ray start` cluster
        ray.shutdown()
    if not ray.is_initialized():
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAY_ADDRESS", "local")
            init_ray()
        request.session.addfinalizer(ray.shutdown)  # at the session's end, inside pytest
    yield


def own_ray() -> None:
    """Shut down the suite's local Ray, if up, before a test starts a Ray of its own (``ray.init`` refuses a second
    one); the next module that asks for ``local_ray`` starts it again."""
    ray.shutdown()
