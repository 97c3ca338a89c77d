"""Resume inside the pipeline: listed inputs whose image is already labeled, from the same file, are dropped in
Ray tasks, against the sorted ``image_id`` s of the output and their fingerprints
(:meth:`pipeline.outputs.RunOutput.labeled_ids`, 16 bytes per image, shared read-only arrays), and a small actor
counts what was listed, skipped and changed for the manifest.

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

from ..output_shards import fingerprint_key
from .inputs import image_fingerprint, image_id
from .resources import start_on_driver_node

# Paths of changed images reported in manifest.json.
MAX_REPORTED_CHANGES = 100


class ListingTally:
    """Inputs listed, skipped (already labeled) and changed (labeled, but their file changed since: labeled
    again) so far, reported by the resume filter's tasks, with the first changed paths."""

    def __init__(self) -> None:
        self.listed = self.skipped = self.changed = 0
        self.changed_paths: list[str] = []

    def add(self, listed: int, skipped: int, changed: list[str] | None = None) -> None:
        self.listed += listed
        self.skipped += skipped
        self.changed += len(changed or [])
        self.changed_paths += (changed or [])[: MAX_REPORTED_CHANGES - len(self.changed_paths)]

    def counts(self) -> tuple[int, int]:
        return self.listed, self.skipped

    def changes(self) -> tuple[int, list[str]]:
        """How many labeled images changed, and up to :data:`MAX_REPORTED_CHANGES` of their paths."""
        return self.changed, self.changed_paths


def start_tally(book: type[ListingTally] = ListingTally) -> ray.actor.ActorHandle:
    """The run's :class:`ListingTally` actor, of class ``book`` (a subclass may keep more of the run's books: the
    labeling job's ``RunBook``), on the driver's node, no CPU reserved; it lives as long as the driver."""
    return start_on_driver_node(book)


def labeled_before(
    paths: list[str], fingerprints: list[str], done: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """For each input (``paths`` and their fingerprints), whether it is labeled already, from the same file, and
    whether it was labeled from another one (its file changed since: label it again). ``done``: the sorted ids
    and fingerprint keys of :meth:`~pipeline.outputs.RunOutput.labeled_ids`."""
    done_ids, done_keys = done
    ids = np.fromiter((image_id(p) for p in paths), dtype=np.int64, count=len(paths))
    first, last = np.searchsorted(done_ids, ids, side="left"), np.searchsorted(done_ids, ids, side="right")
    found, changed = np.zeros(len(paths), dtype=bool), np.zeros(len(paths), dtype=bool)
    for i in np.flatnonzero(last > first):
        keys, key = done_keys[first[i] : last[i]], fingerprint_key(fingerprints[i])
        found[i] = key == 0 or bool(np.any((keys == 0) | (keys == key)))  # 0: not recorded, taken as the same
        changed[i] = not found[i]
    return found, changed


@dataclass
class SkipLabeled:
    """CPU stage: input rows (``image_path``, ``data``, ``error``) less those already labeled from the same file,
    each with its ``fingerprint`` (:func:`~pipeline.label.inputs.image_fingerprint`) added.

    ``done`` is a Ray object: :meth:`~pipeline.outputs.RunOutput.labeled_ids`, the sorted ``image_id`` s of the
    images already labeled and the fingerprint key of each. An input is skipped when its id is there with its
    fingerprint, or with none recorded (files labeled by older versions, remote files); with other fingerprints
    only, its file changed since it was labeled: it goes on, to be labeled again."""

    done: ray.ObjectRef
    tally: ray.actor.ActorHandle

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        paths = [str(p) for p in batch["image_path"]]
        datas = batch["data"] if "data" in batch else [b""] * len(paths)
        fingerprints = [
            "" if error else image_fingerprint(path, bytes(data))
            for path, data, error in zip(paths, datas, batch["error"], strict=True)
        ]
        found, changed = labeled_before(paths, fingerprints, ray.get(self.done))
        changed_paths = [path for path, change in zip(paths, changed, strict=True) if change]
        ray.get(self.tally.add.remote(len(paths), int(found.sum()), changed_paths))  # counted before the rows go on
        rows = {name: np.asarray(column)[~found] for name, column in batch.items()}
        rows["fingerprint"] = np.asarray(fingerprints, dtype=object)[~found]
        return rows
