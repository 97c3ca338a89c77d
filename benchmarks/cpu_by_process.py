"""CPU seconds of a process and of every process under it (a local Ray's GCS, raylet and workers), by role.

Linux only: it reads ``/proc/<pid>/stat`` (user + system time) of the watched process and its descendants every
:data:`INTERVAL` seconds, in a process of its own (so that the sampling costs the watched processes nothing), and
adds each process's CPU time since the previous sample to the group of its title at that moment: Ray names its
workers by what they run (``ray::IDLE``, ``ray::MapBatches(DecodeStage)``, ``ray::_MapWorker.submit``...), and
a worker that runs several stages in turn is counted under each. A process that exits between two samples loses
its last interval (at most :data:`INTERVAL` of CPU); one that starts and exits between two samples is missed.

    with ProcessCpu() as cpu:   # watches this process and its descendants
        ...                     # e.g. start Ray and run a job
        cpu.mark()              # e.g. at the job's first result: the CPU from here on is also kept apart
        ...
    print("\\n".join(cpu.table(images=5000, images_after_mark=4000)))

CPU seconds hardly depend on what else runs on the machine, so the table is a guide also on a shared one.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import tempfile
from pathlib import Path

# Seconds between two samples.
INTERVAL = 0.05
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# The script of a Python helper process (Ray's log monitor, dashboard agent...) in its command line.
_PYTHON_SCRIPT = re.compile(r"([\w.-]+/)?[\w.-]+\.py\b")


def _read_stat(pid: str) -> tuple[int, str, float, str] | None:
    """``(parent pid, comm, CPU seconds, start time)`` of ``pid``, ``None`` when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / _TICKS, fields[19]


def group_of(pid: int, root: int, comm: str, cmdline: str) -> str:
    """The table's group of a process: ``driver`` (the watched one), a Ray worker's title (``ray::...``), the
    script of a Python helper (Ray's log monitor, dashboard agent...), else the executable's name."""
    if pid == root:
        return "driver"
    if cmdline.startswith("ray::"):
        return cmdline.split()[0]
    # The executable's own name: Ray's raylet lives under .../python3.11/site-packages/ and names setup_worker.py
    # among its arguments.
    executable = os.path.basename(cmdline.split(" ")[0])
    script = _PYTHON_SCRIPT.search(cmdline) if comm.startswith("python") or executable.startswith("python") else None
    return f"python {script.group(0)}" if script else comm


def sample(root: int, seen: dict[tuple[str, str], float], groups: dict[str, float], pids: dict[str, set]) -> None:
    """One sample: add the CPU time each descendant of ``root`` (and ``root``) used since it was last seen
    (``seen``, by pid and start time) to ``groups``, and its pid to ``pids`` of its group."""
    stats = {pid: _read_stat(pid) for pid in os.listdir("/proc") if pid.isdigit()}
    parents = {int(pid): stat[0] for pid, stat in stats.items() if stat}
    for pid, stat in stats.items():
        if stat is None or not _descends(int(pid), root, parents) or int(pid) == os.getpid():
            continue
        _, comm, cpu, started = stat
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        group = group_of(int(pid), root, comm, cmdline)
        groups[group] = groups.get(group, 0.0) + cpu - seen.get((pid, started), 0.0)
        seen[(pid, started)] = cpu
        pids.setdefault(group, set()).add(int(pid))


def _descends(pid: int, root: int, parents: dict[int, int]) -> bool:
    while pid > 1:
        if pid == root:
            return True
        pid = parents.get(pid, 1)
    return pid == root


def watch(root: int, out: Path) -> None:
    """Sample ``root`` and its descendants until stdin closes, then write ``{"groups": {group: [CPU seconds,
    processes]}, "processes": processes seen, "after_mark": {group: CPU seconds since the mark}}`` to ``out``
    (``after_mark`` empty when stdin never said ``m``). The CPU time that processes already had at the first
    sample is not counted."""
    seen: dict[tuple[str, str], float] = {}
    groups: dict[str, float] = {}
    pids: dict[str, set] = {}
    marked: dict[str, float] | None = None  # the groups' CPU at the mark
    sample(root, seen, groups, pids)
    groups = dict.fromkeys(groups, 0.0)  # the start: only what is used from now on counts
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], INTERVAL)
        sample(root, seen, groups, pids)
        if ready:
            said = sys.stdin.buffer.read1(1)
            if not said:
                break
            marked = dict(groups) if marked is None else marked
    by_group = {group: [seconds, len(pids[group])] for group, seconds in groups.items()}
    after = {group: seconds - marked.get(group, 0.0) for group, seconds in groups.items()} if marked else {}
    out.write_text(json.dumps({"groups": by_group, "processes": len(seen), "after_mark": after}))


class ProcessCpu:
    """Context manager: CPU seconds by group (:func:`group_of`) of this process and its descendants while it is
    open, sampled by a child process (:func:`watch`)."""

    def __enter__(self) -> ProcessCpu:
        self._out = Path(tempfile.mkstemp(suffix=".json")[1])
        self._watcher = subprocess.Popen(
            [sys.executable, __file__, str(os.getpid()), str(self._out)], stdin=subprocess.PIPE
        )
        self.groups: dict[str, tuple[float, int]] = {}
        self.after_mark: dict[str, float] = {}
        self.processes = 0
        return self

    def mark(self) -> None:
        """From now on, also count each group's CPU apart (:attr:`after_mark`); only the first mark counts."""
        self._watcher.stdin.write(b"m")  # type: ignore[union-attr]
        self._watcher.stdin.flush()  # type: ignore[union-attr]

    def ms_per_image_after_mark(self, images: int, group: str | None = None) -> float:
        """CPU ms per image of ``group`` (all groups: ``None``) after :meth:`mark`, over ``images`` done since."""
        cpu = sum(self.after_mark.values()) if group is None else self.after_mark.get(group, 0.0)
        return 1000 * cpu / max(images, 1)

    def __exit__(self, *exc: object) -> None:
        self._watcher.stdin.close()  # type: ignore[union-attr]
        self._watcher.wait(timeout=60)
        found = json.loads(self._out.read_text())
        self.groups = {group: (cpu, count) for group, (cpu, count) in found["groups"].items()}
        self.after_mark = found["after_mark"]
        self.processes = found["processes"]
        self._out.unlink()

    def table(self, images: int, loop_ms: float | None = None, images_after_mark: int | None = None) -> list[str]:
        """Markdown rows: each group's processes (a worker that ran several stages counts in each), CPU seconds, ms
        per image and share of the total, busiest first, and the total (beside ``loop_ms``, the plain loop's CPU ms
        per image, when given). With ``images_after_mark`` (the images done after :meth:`mark`), also each group's
        CPU ms per image after the mark: a job's steady state, without its start-up."""
        rows = sorted(self.groups.items(), key=lambda item: -item[1][0])
        total = sum(cpu for cpu, _ in self.groups.values())
        steady = images_after_mark is not None and bool(self.after_mark)

        def after(group: str | None) -> str:
            if not steady:
                return ""
            ms = self.ms_per_image_after_mark(images_after_mark or 0, group)
            ratio = f" ({ms / loop_ms:.2f}x the loop's)" if group is None and loop_ms else ""
            return f" {ms:.2f}{ratio} |"

        head = " CPU ms per image after the mark |" if steady else ""
        lines = [
            f"| process (title) | processes | CPU s | CPU ms per image |{head} share |",
            "| --- | --- | --- | --- |" + (" --- |" if steady else "") + " --- |",
        ]
        lines += [
            f"| `{group}` | {count} | {cpu:.2f} | {1000 * cpu / images:.2f} |{after(group)} "
            f"{cpu / max(total, 1e-9):.1%} |"
            for group, (cpu, count) in rows
            if cpu >= 0.005
        ]
        ratio = f" ({1000 * total / images / loop_ms:.2f}x the loop's)" if loop_ms else ""
        whole = f"{1000 * total / images:.2f}{ratio}"
        lines.append(f"| all | {self.processes} | {total:.2f} | {whole} |{after(None)} 100% |")
        return lines


if __name__ == "__main__":
    watch(int(sys.argv[1]), Path(sys.argv[2]))
