"""One labeling job at a time per output folder: two jobs on one ``--output`` would both label every image.

The lock is filelock's ``MarkerSoftFileLock``: a file in the folder that records the holder's PID, host and
process start. A holder that died without releasing it (SIGKILL, out of memory) does not keep the folder
locked: on the same host the next job sees that the process is gone and takes the lock over.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from san.errors import UserError

LOCK_NAME = ".labeling.lock"


class OutputBusyError(UserError):
    """Another job holds the output folder; the message names its host and PID."""


class OutputLockError(UserError):
    """The output folder's lock file cannot be written (a full disk, no permission); the message says why."""


@contextmanager
def exclusive_output(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; released (its file removed) on every way out of it.

    Raises:
        OutputLockError: the lock file cannot be written (a full disk, no permission).
        OutputBusyError: a live job holds it (one on another host cannot be probed: its lock is kept
            until that job ends, or until someone who knows it is gone deletes the lock file).
    """
    lock = filelock.MarkerSoftFileLock(folder / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise OutputBusyError(_busy_message(folder, lock.owner)) from None
    except OSError as error:  # e.g. a full disk: the lock file cannot be written
        raise OutputLockError(
            f"cannot write the lock file {folder / LOCK_NAME} ({os.strerror(error.errno)}); free space in "
            f"{folder} (or make it writable) and rerun the same command, or choose another `output`"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _busy_message(folder: Path, owner: filelock.OwnerRecord | None) -> str:
    holder = f"PID {owner.pid} on host {owner.hostname}" if owner else "its lock file names no holder yet"
    return (
        f"{folder} is being written by another labeling job ({holder}); wait for it to end or choose another "
        f"`output` (a job on another host that is gone keeps its lock: then delete {folder / LOCK_NAME})"
    )
