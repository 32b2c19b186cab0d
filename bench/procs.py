"""CPU time and memory of the processes under test, read from /proc.

CPU is `utime + stime` from /proc/<pid>/stat (clock ticks, usually 10 ms) summed over a process and
its descendants; `/proc/<pid>/task/*/schedstat` (nanoseconds, every thread) is kept beside it because
ticks are coarse when a phase uses little CPU. Peak memory is `VmHWM` from /proc/<pid>/status.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """Every descendant of pid (Linux only), found through /proc/<pid>/task/*/children."""
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                kids = [int(x) for x in task.read_text().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def sched_seconds(pid: int) -> float:
    """Run time of every thread of pid from schedstat (ns resolution), in seconds."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Proc:
    """A named process under test (its descendants are counted with it)."""

    name: str
    pid: int
    with_children: bool = True

    def pids(self) -> list[int]:
        return [self.pid, *children_of(self.pid)] if self.with_children else [self.pid]

    def cpu(self) -> tuple[float, float]:
        pids = self.pids()
        return sum(cpu_seconds(p) for p in pids), sum(sched_seconds(p) for p in pids)

    def peak_rss_mb(self) -> float:
        return sum(status_kb(p, "VmHWM") for p in self.pids()) / 1024

    def rss_mb(self) -> float:
        return sum(status_kb(p, "VmRSS") for p in self.pids()) / 1024


class CpuMeter:
    """CPU used by a set of processes between `start()` and `stop()`."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs
        self._before: dict[str, tuple[float, float]] = {}

    def start(self) -> None:
        self._before = {p.name: p.cpu() for p in self.procs}

    def stop(self) -> dict[str, dict[str, float]]:
        out = {}
        for p in self.procs:
            stat, sched = p.cpu()
            stat0, sched0 = self._before.get(p.name, (stat, sched))
            out[p.name] = {"stat_s": round(stat - stat0, 4), "sched_s": round(sched - sched0, 6)}
        return out
