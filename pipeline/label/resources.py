"""Connect to Ray and size the labeling job's resources so that it can neither starve nor hang.

Measured with Ray 2.60: an actor pool that takes every CPU starves the read/decode tasks and the job
hangs with no error, and GPU actors on a cluster without GPUs wait forever. So the pool always
leaves CPU for the decode tasks, and requests that the cluster can never meet fail at once.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from san.errors import UserError

from ..ray_internals import start_data_actors, started_here, starts_local_ray, token_auth_enabled


class ResourceError(UserError):
    """The cluster can never provide what the job asks for."""


@dataclass(frozen=True)
class ResourcePlan:
    """Ray resources of each stage. ``workers`` is the actor pool size ``(min, max)``; ``decode_tasks`` and
    ``encode_tasks``: the most tasks of the decode stage, and of the encode and write stage, that run at once."""

    device: str
    workers: tuple[int, int]
    cpus_per_worker: float
    gpus_per_worker: float
    threads_per_worker: int
    decode_cpus: float
    decode_tasks: int
    encode_tasks: int


# Logical CPUs of a ``--model null`` actor on a CPU cluster (it only hands over a fixed label map).
NULL_MODEL_CPUS = 0.25
# Seconds to wait for the first predictor actors (model load, weights download) before failing.
ACTOR_START_TIMEOUT_S = 900
# Ray's settings (``ray.init``'s ``_system_config``) of a local Ray that this process starts; a cluster keeps its own.
# Ray's raylet kills a task's worker process once it has been idle for 1 s (idle_worker_killing_time_threshold_ms)
# while the node has more worker processes than CPUs (num_workers_soft_limit, by default the CPUs), which a job with
# actors always has: a decode worker that waits over a second for its next batch is killed and the next batch starts
# a new one, each start costing over a second of CPU (measured with benchmarks/null_pipeline.py --by-process, 2000
# images on 1 CPU: 15 worker processes, 7 of them for decode, against 9 and 2 with this setting). A minute outlasts
# any wait between two batches of a running stage, and a worker idle for longer belongs to a stage that has finished:
# killed then, as before; the memory monitor still kills idle workers first when the node runs short of memory.
LOCAL_RAY_CONFIG = {"idle_worker_killing_time_threshold_ms": 60_000}


def init_ray(actor_pool: bool = False) -> None:
    """Join the cluster of a ``ray job submit`` (or ``RAY_ADDRESS``, or one ``ray start`` left running on
    this machine), else start a local Ray, without the dashboard: its web modules cost a local run seconds of its
    start (``ray.init`` waits for them), and nothing of a local run uses them (a cluster keeps its own); and with
    :data:`LOCAL_RAY_CONFIG` (:func:`local_ray_config`).
    ``actor_pool``: the job runs a Ray Data pipeline with an actor pool, whose start-up this call begins
    (:func:`~pipeline.ray_internals.start_data_actors`).

    Raises:
        ResourceError: this process uses token authentication and the cluster does not.
    """
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        # (include_dashboard applies only to a Ray that ray.init starts; a cluster that it joins keeps its own, and
        # ray.init refuses a _system_config there)
        config = {"_system_config": local_ray_config()} if starts_local_ray(address) else {}
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **config)
        if not started_here():  # a Ray started here has this process's authentication
            _check_actors_start()
    if actor_pool:
        start_data_actors()
    _spend_restart_warning()
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # Ray Data warns when a stage gets fewer blocks than its task limit (any run of a few images: the job sizes its
    # stages for every run) and advises an option (override_num_blocks) that the job's user does not have.
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks for ", category=UserWarning)
    context = ray.data.DataContext.get_current()  # (imports Ray Data: a second, while the actors above start)
    context.enable_progress_bars = False  # the job shows its own bar with counts and ETA
    context.print_on_execution_start = False


def local_ray_config() -> dict[str, int]:
    """:data:`LOCAL_RAY_CONFIG` less the settings given in the environment (``RAY_<name>``): Ray lets a
    ``_system_config`` override those, and a user who sets one means it."""
    return {name: value for name, value in LOCAL_RAY_CONFIG.items() if f"RAY_{name}" not in os.environ}


@ray.remote(num_cpus=0)
class _Probe:
    """An actor that does nothing: whether actors can start at all."""

    def ready(self) -> bool:
        return True


def _check_actors_start() -> None:
    """Refuse, saying what to export, a driver with token authentication on a cluster without it: Ray 2.60
    connects it, then cancels every actor before it starts and says only ``ActorDiedError ... cancelled
    before it started running`` (measured). Drivers without tokens are not checked: on a cluster with
    tokens they cannot connect at all, and a Ray this process started (:func:`init_ray`) shares its authentication."""
    if not token_auth_enabled():
        return
    probe = _Probe.remote()
    try:
        ray.get(probe.ready.remote(), timeout=ACTOR_START_TIMEOUT_S)
    except ray.exceptions.ActorDiedError as error:
        if "cancelled before it started running" not in str(error):
            raise
        raise ResourceError(
            "Ray cancels this job's actors before they start: this process uses token authentication "
            f"(RAY_AUTH_MODE=token) and the cluster at {ray.get_runtime_context().gcs_address} does not. "
            "Export RAY_AUTH_MODE=disabled, the setting the cluster was started with, and rerun; or restart the "
            "cluster with RAY_AUTH_MODE=token (README: On a Ray cluster)"
        ) from None
    finally:
        ray.kill(probe)


# Whether this process has spent Ray's restart warning (:func:`_spend_restart_warning`).
_restart_warning_spent = False
# A resource that no node has: the actor asking for it is never scheduled, so no worker process starts for it.
NEVER_SCHEDULED = {"san-labeler-never-scheduled": 1}


@ray.remote(num_cpus=0, max_restarts=1, resources=NEVER_SCHEDULED)
class _Restartable:
    """An actor that Ray may restart, made with an argument in the object store: what Ray warns about."""

    def __init__(self, argument: None) -> None:
        pass


def _spend_restart_warning() -> None:
    """Make Ray print, out of sight, the ``E`` line that every Ray Data actor pool would otherwise print on
    this driver's stderr: ``core_worker.cc ... has constructor arguments in the object store and
    max_restarts > 0`` (a no-op after the first call).

    Ray Data passes each pool actor its own ``DataContext`` and map function as object references and
    restarts dead actors (``max_restarts=-1``); Ray 2.60 logs that pair once per process at the ``ERROR``
    level when the actor is created (ray-project/ray#57733: with any actor ``map_batches``, whatever its
    arguments). Ray Data holds both references for the whole run, so a restarted predictor finds them, and the
    job needs those restarts (``pipeline.label.attempts``): ``max_restarts=0`` would fail the run at the first
    dead worker. So the line is spent here, with stderr on ``/dev/null`` for the one actor creation that prints
    it; Ray's driver log (``python-core-driver-*.log``) still records it. That actor asks for
    :data:`NEVER_SCHEDULED` and is killed at once: it never gets a worker process (one costs about a second of
    CPU, during a start-up bound by the CPUs on a small machine), and its creation is cancelled without a line on
    stderr or in Ray's logs at the error level (measured with Ray 2.60)."""
    global _restart_warning_spent
    if _restart_warning_spent:  # (Ray prints the warning once per process)
        return
    _restart_warning_spent = True
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            actor = _Restartable.remote(ray.put(None))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    ray.kill(actor)


def start_on_driver_node(cls: type) -> ray.actor.ActorHandle:
    """A run's small bookkeeping actor (``cls()``, no CPU reserved) on the driver's node: an actor on
    another node would die with that node and fail the run, where the job survives the loss of a worker
    node."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(cls).options(num_cpus=0, scheduling_strategy=here).remote()


def plan_resources(
    workers: tuple[int, int] | None, gpus_per_worker: float | None, smoke_test: bool = False, null_model: bool = False
) -> ResourcePlan:
    """Choose actor-pool size and per-actor resources from what the cluster has.

    GPU cluster: one actor per ``gpus_per_worker`` share of the GPUs (default 1 GPU each), 1 CPU
    each. CPU cluster: actors of 1 CPU each, at most ``CPUs - 1`` of them so decode tasks always have
    a CPU; each actor's torch uses the node's CPUs divided among its actors. ``null_model`` (``--model
    null``, whose actors compute almost nothing): CPU actors of a quarter CPU, the rest left to the stages
    being measured.
    """
    total = ray.cluster_resources()
    cpus = float(total.get("CPU", 0))
    gpus = float(total.get("GPU", 0))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus > 0 and not smoke_test else 0.0
    if gpus_per_worker < 0:
        raise ResourceError(f"`gpus_per_worker` must be >= 0, got {gpus_per_worker}")
    if gpus_per_worker > 0 and gpus == 0:
        raise ResourceError(
            f"`gpus_per_worker` {gpus_per_worker} asks for GPUs but the Ray cluster has none "
            f"(resources: {dict(total)}); use `gpus_per_worker` 0 to label on CPU"
        )
    if gpus_per_worker > max(gpus, 0):
        raise ResourceError(f"`gpus_per_worker` {gpus_per_worker} is more than the cluster's {gpus:g} GPUs")
    if cpus < 1:
        raise ResourceError(f"the Ray cluster has {cpus:g} CPUs; the job needs at least 1")
    on_gpu = gpus_per_worker > 0
    cpus_per_worker = NULL_MODEL_CPUS if null_model and not on_gpu else 1.0 if cpus >= 2 else 0.5
    if on_gpu:
        capacity = int(gpus // gpus_per_worker)
    else:
        capacity = max(1, int((cpus - 1) // cpus_per_worker)) if cpus >= 2 else 1
    if workers is None:
        workers = (1, 1 if null_model else capacity)  # a null actor keeps up with any decode: one is enough
    low, high = workers  # 1 <= low <= high: checked by LabelOptions
    if low > capacity:
        raise ResourceError(
            f"`workers` {low}-{high} needs {low} actors but the cluster fits {capacity} "
            f"({cpus:g} CPUs, {gpus:g} GPUs; decode tasks keep at least one CPU)"
        )
    high = min(high, capacity)
    threads = max(1, int(cpus // high)) if not on_gpu else 1
    # Ray Data gives each stage a budget of about its share of the CPUs; on a small machine a task of half a CPU
    # would leave one decode task running at a time (measured: the whole job's bottleneck on 2 CPUs).
    decode_cpus = 0.25 if cpus < 4 else 1.0
    if not on_gpu and decode_cpus == cpus_per_worker:
        # Ray Data fuses a task stage into the next actor stage when their resources are equal, and the decode
        # would then run in the model's actors (measured with Ray 2.60 on 1 CPU): keep them apart.
        decode_cpus *= 0.8
    # Each task running at once is a Ray worker process of its own, and fractional CPUs let Ray run many: 8 decode
    # tasks of a quarter CPU on 2 CPUs, each worker process costing its start and an idle loop (measured with
    # benchmarks/null_pipeline.py --by-process). A task stage keeps at most one task per CPU busy; encoding costs
    # about a quarter of decoding.
    decode_tasks = max(1, round(cpus))
    encode_tasks = max(1, round(cpus) // 4)
    return ResourcePlan(
        device="cuda" if on_gpu else "cpu",
        workers=(low, high),
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        threads_per_worker=threads,
        decode_cpus=decode_cpus,
        decode_tasks=decode_tasks,
        encode_tasks=encode_tasks,
    )
