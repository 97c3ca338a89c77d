"""One labeling job per output folder: a second one is refused naming the holder's host and PID, a holder
that died does not keep the folder locked, and the lock goes on every way out of the job."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.output_lock import LOCK_NAME, OutputBusyError, exclusive_output

HOLD = (
    "import sys, time; from pathlib import Path; from pipeline.output_lock import exclusive_output\n"
    "with exclusive_output(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)\n"
)


def hold_in_another_process(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_job_is_refused_naming_the_holder_until_the_holder_is_gone(tmp_path: Path) -> None:
    holder = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(OutputBusyError) as refused, exclusive_output(tmp_path):
            pytest.fail("the folder was taken twice")
        assert str(refused.value).startswith(
            f"{tmp_path} is being written by another labeling job (PID {holder.pid} on host {socket.gethostname()}"
        )
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: no release
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists(), "a killed holder leaves its lock file"
    with exclusive_output(tmp_path):  # and it is taken over: its process is gone
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_released_when_the_job_fails(tmp_path: Path) -> None:
    for stop in (RuntimeError("crash"), KeyboardInterrupt()):
        with pytest.raises(type(stop)), exclusive_output(tmp_path):
            raise stop
        assert not (tmp_path / LOCK_NAME).exists()
        with exclusive_output(tmp_path):
            pass


def test_a_lock_file_that_cannot_be_written_is_one_line_naming_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at start: the lock file is the job's first write."""
    import errno

    import filelock

    from san.errors import UserError

    def no_space(self, fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filelock.MarkerSoftFileLock, "_write_lock_info", no_space)
    with pytest.raises(UserError) as refused, exclusive_output(tmp_path):
        pytest.fail("the lock was taken")
    assert str(refused.value) == (
        f"cannot write the lock file {tmp_path / LOCK_NAME} (No space left on device); free space in {tmp_path} "
        "(or make it writable) and rerun the same command, or choose another output"
    )
    assert not (tmp_path / LOCK_NAME).exists()
