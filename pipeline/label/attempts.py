"""The run's record of model attempts per image: an image that kills its worker process every time ends as
an error row after :data:`MAX_ATTEMPTS` deaths instead of being retried forever (docs/labeling.md)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import ray

# Worker deaths while labeling one image after which it becomes an error row, with this reason.
MAX_ATTEMPTS = 3
GAVE_UP = f"the worker process died {MAX_ATTEMPTS} times while labeling this image (a crash or out of memory)"


# Counted here rather than bounded with Ray's knobs: Ray Data retries a dead actor's batch without limit, and
# the Ray 2.60 keywords that would bound it (max_restarts/max_task_retries) are deprecated. An actor, unlike a
# file in the driver's output folder, is reachable from the workers of every node.
class AttemptLedger:
    """Per image path: the model attempts that began and never finished (a worker died during them).

    Only images with such attempts are kept, so the ledger stays small however long the run is.
    """

    def __init__(self) -> None:
        self._unfinished: dict[str, int] = {}
        self._models_ready = 0

    def model_ready(self) -> None:
        """A model actor has loaded its model (:mod:`pipeline.label.actor_start` waits for the first)."""
        self._models_ready += 1

    def models_ready(self) -> int:
        """How many model actors have loaded their model so far."""
        return self._models_ready

    def unfinished(self, paths: Sequence[str]) -> list[int]:
        """How many earlier attempts at each path never finished."""
        return [self._unfinished.get(path, 0) for path in paths]

    def begin_unless_died(self, paths: Sequence[str]) -> list[int]:
        """:meth:`unfinished` of ``paths``, and when all are 0, an attempt at all of them begun (one call for both:
        the model stage asks this once per batch)."""
        counts = self.unfinished(paths)
        if not any(counts):
            self.begin(paths)
        return counts

    def begin(self, paths: Sequence[str]) -> None:
        for path in paths:
            self._unfinished[path] = self._unfinished.get(path, 0) + 1

    def end(self, paths: Sequence[str]) -> None:
        for path in paths:
            left = self._unfinished.get(path, 0) - 1
            if left > 0:
                self._unfinished[path] = left
            else:
                self._unfinished.pop(path, None)


class Attempts:
    """The predict stage's side of the ledger: blocking calls, so an attempt is recorded before it starts."""

    def __init__(self, ledger: ray.actor.ActorHandle):
        self.ledger = ledger

    @contextmanager
    def batch(self, paths: Sequence[str]) -> Iterator[list[int]]:
        """Around a batch's attempt: yields the unfinished earlier attempts at each of ``paths``; when they are all
        0, an attempt at the whole batch is recorded around the block (as :meth:`attempt`), else none is."""
        counts = ray.get(self.ledger.begin_unless_died.remote(list(paths)))
        try:
            yield counts
        finally:
            if not any(counts):
                ray.get(self.ledger.end.remote(list(paths)))

    @contextmanager
    def attempt(self, paths: Sequence[str]) -> Iterator[None]:
        """Record an attempt at ``paths`` around the block; it stays unfinished only if the process dies in it."""
        ray.get(self.ledger.begin.remote(list(paths)))
        try:
            yield
        finally:
            ray.get(self.ledger.end.remote(list(paths)))
