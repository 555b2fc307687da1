"""Server CPU per answered query: /proc/PID/stat utime + stime over one dnsperf run.

dnsperf saturates one of the two cores here, so two servers near that ceiling show the same QPS
while one of them burns twice the CPU for it; CPU microseconds per answered query tell them
apart. The figure counts every thread of the server and of its descendants (dnsmasq forks for
TCP, kdns may start workers), read before and after the run.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _own_ticks(pid: int) -> int:
    # Fields after the ")" that ends comm (which may hold spaces): utime is the 14th field of
    # the line, stime the 15th, i.e. the 12th and 13th after the state.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += _own_ticks(p)
            todo += _children(p)
        except (OSError, ValueError, IndexError):
            continue                      # exited between the listing and the read
    return total / TICK


class Meter:
    """CPU seconds of one process tree between ``start()`` and ``stop()``."""

    def __init__(self, pid: int):
        self.pid = pid
        self.began = 0.0
        self.used = 0.0

    def start(self) -> "Meter":
        self.began = seconds(self.pid)
        return self

    def stop(self) -> float:
        self.used = max(0.0, seconds(self.pid) - self.began)
        return self.used


def us_per_query(cpu_s: float, answered: int) -> float | None:
    """Microseconds of server CPU per answered query (None when nothing was answered). One
    clock tick is 10 ms, so a run must last seconds for this to mean anything: dnsperf's -l
    runs do."""
    if answered <= 0:
        return None
    return cpu_s * 1e6 / answered
