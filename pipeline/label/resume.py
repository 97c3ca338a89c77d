"""Resume inside the pipeline: listed inputs whose image is already labeled are dropped in Ray tasks, against
the sorted ``image_id`` s of the output (:meth:`pipeline.outputs.RunOutput.labeled_ids`, 8 bytes per image,
one shared read-only array), and a small actor counts what was listed and skipped for the manifest.

Chosen over Ray's ``ray.data.checkpoint.CheckpointConfig`` (Ray 2.60, beta), which filters the same way
(a sorted NumPy array of ids) but only at a Ray datasource read and only with a Ray ``write_*`` sink at the
end: this job lists its own inputs (list files, folders, containers) and writes each file atomically itself,
and its output folder is already the record of what is done, so a second record would have to be kept in
step with it. Measured on the same stages (`benchmarks/resume_checkpoint.py`, BENCHMARKS.md): resuming 1,000
of 2,000 images took 17.1 s here against 23.6 s with ``CheckpointConfig``, whose resumed run hung on a 2-CPU
Ray (its checkpoint-reading task waits for a CPU the pipeline's stages hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from .inputs import image_id
from .resources import start_on_driver_node


class ListingTally:
    """Inputs listed and skipped (already labeled) so far, reported by the resume filter's tasks."""

    def __init__(self) -> None:
        self.listed = self.skipped = 0

    def add(self, listed: int, skipped: int) -> None:
        self.listed += listed
        self.skipped += skipped

    def counts(self) -> tuple[int, int]:
        return self.listed, self.skipped


def start_tally() -> ray.actor.ActorHandle:
    """The run's :class:`ListingTally` actor (on the driver's node, no CPU reserved; it lives as long as the
    driver)."""
    return start_on_driver_node(ListingTally)


@dataclass
class SkipLabeled:
    """CPU stage: input rows (``image_path``, ...) less those whose ``image_id`` is in ``done``.

    ``done`` is a Ray object: the sorted ``image_id`` s of the images already labeled."""

    done: ray.ObjectRef
    tally: ray.actor.ActorHandle

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        count = len(batch["image_path"])
        ids = np.fromiter((image_id(str(p)) for p in batch["image_path"]), dtype=np.int64, count=count)
        done = ray.get(self.done)
        found = np.zeros(count, dtype=bool)
        if len(done):
            at = np.minimum(np.searchsorted(done, ids), len(done) - 1)
            found = done[at] == ids
        ray.get(self.tally.add.remote(count, int(found.sum())))  # counted before the rows go on
        return {name: np.asarray(column)[~found] for name, column in batch.items()}
