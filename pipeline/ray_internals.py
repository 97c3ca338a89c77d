"""The five places this project reaches into Ray's private code, because Ray 2.60 has no public way: each in one
function that fails with a message naming the Ray version and this module when a Ray release moves what it
uses (``tests/test_ray_internals.py`` checks each against the installed Ray).

- :func:`set_stage_resources`: ``Dataset.repartition`` takes no resource arguments, and its tasks ask for a whole
  CPU (a 1-CPU node beside a model actor of half a CPU never starts them: the job hangs). Its logical operator's
  ``ray_remote_args`` is set instead, as Ray's own ``__post_init__`` sets it.
- :func:`token_auth_enabled`: Ray's own rule for whether this process uses token authentication (the
  ``RAY_AUTH_MODE`` environment variable, the token file and Ray's config together).
- :func:`started_here`: whether ``ray.init`` started a local Ray in this process or joined a running cluster (with
  ``RAY_ADDRESS`` unset it joins one that ``ray start`` left on this machine, if any).
- :func:`starts_local_ray`: whether ``ray.init`` is about to start a local Ray or join a running cluster, by Ray's own
  rule (``ray.init`` refuses a ``_system_config`` when it joins one, and says which case applied only once it has run).
- :func:`start_data_actors`: Ray Data's own actors (its autoscaling coordinator, stats actor and actor-location
  tracker: named, detached, one per cluster) created now rather than when a dataset first runs. Ray Data's executor
  launches no task before the coordinator answers (its resource budget is empty until then), and on a small machine
  Ray starts worker processes two at a time, so those actors otherwise start last, after the job's own actors.
"""

from __future__ import annotations

import os
from typing import Any

import ray

__all__ = [
    "RayInternalsError",
    "set_stage_resources",
    "start_data_actors",
    "started_here",
    "starts_local_ray",
    "token_auth_enabled",
]


class RayInternalsError(RuntimeError):
    """The installed Ray no longer has a private name this project uses (a bug to fix here, not a user error)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"Ray {ray.__version__} no longer has {what}, which pipeline/ray_internals.py uses (tested with Ray "
            "2.60); install the Ray version pyproject.toml names, or update that module"
        )


def set_stage_resources(dataset: ray.data.Dataset, remote_args: dict[str, Any]) -> ray.data.Dataset:
    """``dataset`` with its last operator's tasks asking for ``remote_args`` (e.g. ``{"num_cpus": 0.5}``)."""
    operator = getattr(getattr(dataset, "_logical_plan", None), "dag", None)
    if operator is None or not hasattr(operator, "ray_remote_args"):
        raise RayInternalsError("Dataset._logical_plan.dag.ray_remote_args")
    # A frozen dataclass field of Ray's logical operator, set the way Ray's own __post_init__ sets its fields.
    object.__setattr__(operator, "ray_remote_args", dict(remote_args))
    return dataset


def token_auth_enabled() -> bool:
    """Whether this process uses Ray's token authentication (``RAY_AUTH_MODE=token``), by Ray's own rule."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:
        raise RayInternalsError("ray._private.authentication.authentication_utils.is_token_auth_enabled") from None
    return bool(is_token_auth_enabled())


def started_here() -> bool:
    """Whether this process's ``ray.init`` started the Ray it is connected to (its head node), rather than joining a
    running cluster: Ray records that on the driver's node object (``head``; ``None`` before ``ray.init``)."""
    if not hasattr(ray._private.worker, "_global_node"):
        raise RayInternalsError("ray._private.worker._global_node")
    node = ray._private.worker._global_node
    if node is None:
        return False
    head = getattr(node, "head", None)
    if not isinstance(head, bool):
        raise RayInternalsError("ray._private.worker._global_node.head")
    return head


def starts_local_ray(address: str | None) -> bool:
    """Whether ``ray.init(address=address)`` would start a local Ray rather than join a running cluster, by the rule
    ``ray.init`` itself applies: ``RAY_ADDRESS`` or ``address`` (``local``: a new Ray), else the cluster that a
    ``ray start`` on this machine recorded, else a new Ray. A ``ray://`` address (Ray Client) always joins.

    Raises:
        ConnectionError: ``address`` (or ``RAY_ADDRESS``) is ``auto`` and no Ray runs on this machine, as
            ``ray.init`` would.
    """
    if os.environ.get("RAY_ADDRESS") and address in (None, "auto"):
        address = os.environ["RAY_ADDRESS"]
    if address is not None and "://" in address:
        return False
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        raise RayInternalsError("ray._private.services.canonicalize_bootstrap_address") from None
    return canonicalize_bootstrap_address(address) is None


def start_data_actors() -> None:
    """Create (or find, on a cluster where a dataset ran before) Ray Data's three singleton actors without waiting for
    them, so that their worker processes start while the driver prepares its run."""
    try:
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator
        from ray.data._internal.execution.node_trackers import get_or_create_actor_location_tracker
        from ray.data._internal.stats import get_or_create_stats_actor
    except ImportError:
        raise RayInternalsError("ray.data._internal's get_or_create functions of its singleton actors") from None
    get_or_create_autoscaling_coordinator()
    get_or_create_stats_actor()
    get_or_create_actor_location_tracker()
