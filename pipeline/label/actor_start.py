"""The labeling job's guard against model actors that never start, without holding up the rest of the pipeline.

Ray Data can guard by itself (``DataContext.wait_for_min_actors_s``): ``ActorPoolMapOperator.start`` then waits for
the pool's actors before the executor runs any task, so the listing, grouping and decoding of the first images wait
for the model to load (1.2-1.4 s of a null-model job's start on 2 CPUs, more for a real model; BENCHMARKS.md, session
11). Here the actors start while the other stages run, and a thread of the driver fails the job in its main thread
when no model actor is ready within the time allowed: each :class:`~pipeline.label.model_stage.ModelStage` tells the
run's ledger once it is ready (:meth:`~pipeline.label.attempts.AttemptLedger.model_ready`).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import ray

from .resources import ResourceError

# Seconds between two questions to the ledger while no model actor is ready.
WATCH_INTERVAL_S = 2.0
# The signal by which the watching thread interrupts the main thread (its handler is restored afterwards).
_INTERRUPT = signal.SIGUSR1


class ModelActorsNotStarted(ResourceError):
    """No model actor became ready in the time allowed."""


@contextmanager
def model_actors_start_within(ledger: ray.actor.ActorHandle, timeout_s: float, asks: str) -> Iterator[None]:
    """Within the block, Ray Data starts the model actors without waiting for them, and
    :class:`ModelActorsNotStarted` is raised in the main thread if none is ready after ``timeout_s`` (``asks``: what
    each actor asks for, for the message). Outside the main thread, where Python cannot install a signal handler,
    Ray Data's own wait guards instead."""
    context = ray.data.DataContext.get_current()
    if threading.current_thread() is not threading.main_thread():
        context.wait_for_min_actors_s = timeout_s
        yield
        return
    context.wait_for_min_actors_s = -1  # Ray Data's default: the actors start while the other stages run
    finished, late = threading.Event(), threading.Event()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if late.is_set() and not finished.is_set():
            raise ModelActorsNotStarted(
                f"no model worker started within {timeout_s:.0f} s: each asks for {asks}, and the cluster has not "
                "given them (see `ray status` for what its nodes have free)"
            )

    def watch(main: int) -> None:
        deadline = time.monotonic() + timeout_s
        while not finished.wait(WATCH_INTERVAL_S):
            try:
                if ray.get(ledger.models_ready.remote(), timeout=10):
                    return
            except (ray.exceptions.RayError, ConnectionError):  # Ray going down with the job: nothing to guard
                return
            if time.monotonic() >= deadline:
                late.set()
                signal.pthread_kill(main, _INTERRUPT)
                return

    previous = signal.signal(_INTERRUPT, interrupt)
    watcher = threading.Thread(target=watch, args=(threading.get_ident(),), name="model-actor-guard", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        watcher.join()
        signal.signal(_INTERRUPT, previous)
