"""Run dnsperf, bounded in time, and read its statistics.

dnsperf prints QPS, loss and average latency; it has no percentiles, so the p99 comes from a
run with ``-v`` (one line per answer, with its latency) written to a file. ``-v`` costs dnsperf
CPU on a machine where the client already takes one of the two cores, so the throughput figure
always comes from a run without it and the latency run is a second, shorter one.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


class DnsperfError(Exception):
    pass


@dataclass
class Result:
    qps: float = 0.0
    sent: int = 0
    completed: int = 0
    lost_pct: float = 0.0
    avg_ms: float = 0.0
    p99_ms: float | None = None
    rcodes: dict[str, int] = field(default_factory=dict)


_NUM = r"([0-9.]+)"
_PATTERNS = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost_pct": re.compile(r"Queries lost:\s+\d+ \(" + _NUM + r"%\)"),
    "qps": re.compile(r"Queries per second:\s+" + _NUM),
    "avg": re.compile(r"Average Latency \(s\):\s+" + _NUM),
}
_RCODES = re.compile(r"Response codes:\s+(.*)")


def binary() -> str:
    path = shutil.which("dnsperf")
    if not path:
        raise DnsperfError("dnsperf is not installed (Debian: apt-get install dnsperf)")
    return path


def parse(text: str) -> Result:
    r = Result()
    for key, rx in _PATTERNS.items():
        m = rx.search(text)
        if not m:
            if key in ("qps", "sent"):
                raise DnsperfError(f"dnsperf printed no {key!r}: {text.strip()[-300:]}")
            continue
        value = float(m.group(1))
        if key == "avg":
            r.avg_ms = value * 1000
        elif key in ("sent", "completed"):
            setattr(r, key, int(value))
        else:
            setattr(r, key, value)
    m = _RCODES.search(text)
    if m:
        for part in m.group(1).split(", "):
            bits = part.split()
            if len(bits) >= 2 and bits[1].isdigit():
                r.rcodes[bits[0]] = int(bits[1])
    return r


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = max(0, math.ceil(pct / 100 * len(values)) - 1)     # nearest rank
    return values[min(k, len(values) - 1)]


def run(port: int, datafile: Path, duration: float, *, clients: int = 1, outstanding: int = 100,
        qps_limit: int = 0, verbose_to: Path | None = None) -> Result:
    """One bounded run: -l caps the time, -t caps how long a lost query is waited for."""
    argv = [binary(), "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile),
            "-l", f"{duration:g}", "-t", "1", "-c", str(clients), "-q", str(outstanding)]
    if qps_limit:
        argv += ["-Q", str(qps_limit)]
    if verbose_to is not None:
        argv.append("-v")
    timeout = duration + 30
    if verbose_to is not None:
        with verbose_to.open("wb") as out:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, timeout=timeout)
        text = verbose_to.read_text(errors="replace")
    else:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout)
        text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise DnsperfError(f"dnsperf exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    result = parse(text)
    if verbose_to is not None:
        latencies = []
        for line in text.splitlines():
            if line.startswith("> "):                   # "> NOERROR name TYPE 0.000123"
                try:
                    latencies.append(float(line.rsplit(" ", 1)[1]))
                except (ValueError, IndexError):
                    pass
        p99 = percentile(latencies, 99)
        result.p99_ms = None if p99 is None else p99 * 1000
        verbose_to.unlink()
    return result
