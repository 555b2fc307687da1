"""A/B: hot QPS of two kdns builds (or one build with two flag sets), rounds interleaved.

    python -m kdns.bench.ab --base /path/to/other/checkout [--rounds 5] [--duration 5]
    python -m kdns.bench.ab --b-args=--log-queries          # this checkout, with and without a flag

Each round runs A then B (then A, B...) on the same machine minutes apart, so a shared machine's
drift hits both alike; the report gives each side's median and range and the ratio per round.
Every server serves the embedded example cluster on 127.0.0.1 with no upstream; dnsperf asks its
hot names (A, SRV, PTR, negative) for ``--duration`` seconds per run, bounded by -l.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdns.bench import dnsperf

REPO = Path(__file__).resolve().parent.parent.parent

HOT = ["webapp.default.svc.cluster.local A", "nginx.default.svc.cluster.local A",
       "myapp.default.svc.cluster.local A", "kubernetes.default.svc.cluster.local A",
       "_http._tcp.webapp.default.svc.cluster.local SRV", "200.45.96.10.in-addr.arpa PTR",
       "nope.default.svc.cluster.local A", "webapp.default.svc.cluster.local AAAA"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port: int, deadline: float) -> bool:
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06webapp\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                s.sendto(q, ("127.0.0.1", port))
                if s.recv(512)[:2] == q[:2]:
                    return True
            except OSError:
                pass
    return False


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(checkout: Path, extra: list[str], datafile: Path, duration: float, qps: int = 0) -> float:
    """QPS of one run; with ``qps`` (a fixed rate dnsperf keeps up), microseconds of kdns CPU per
    answered query instead, which a shared machine disturbs far less than peak QPS."""
    port = free_port()
    argv = [sys.executable, "-m", "kdns", "serve", "--listen", f"127.0.0.1:{port}", "--resolv-conf", "",
            "--lameduck", "0", "--reload", "0", *extra]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, cwd=checkout, stdout=out, stderr=subprocess.STDOUT)
        try:
            if not ready(port, time.monotonic() + 30):
                out.seek(0)
                raise RuntimeError(f"{checkout} did not answer: {out.read()[-500:]!r}")
            dnsperf.run(port, datafile, 1.0)                       # warm the packet cache
            if not qps:
                return dnsperf.run(port, datafile, duration).qps
            cpu = _cpu_seconds(proc.pid)
            res = dnsperf.run(port, datafile, duration, qps_limit=qps)
            return (_cpu_seconds(proc.pid) - cpu) / max(1, res.completed) * 1e6
        finally:
            stop(proc, 10)


def stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdns.bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, default=REPO, help="checkout A (default: this one)")
    p.add_argument("--a-args", default="", help="extra `kdns serve` flags for A")
    p.add_argument("--b-args", default="", help="extra `kdns serve` flags for B")
    p.add_argument("--b-checkout", type=Path, default=REPO, help="checkout B (default: this one; "
                   "the same as A for a control run that shows the method's own bias)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per dnsperf run")
    p.add_argument("--qps", type=int, default=0,
                   help="send at this fixed rate and report kdns CPU microseconds per query")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        datafile = Path(tmp) / "hot.txt"
        datafile.write_text("\n".join(HOT) + "\n")
        a, b = [], []
        for r in range(args.rounds):
            # ABBA: odd rounds run B first, so a drift within a round favours neither side.
            runs = [(a, args.base, args.a_args), (b, args.b_checkout, args.b_args)]
            for out, checkout, extra in (runs if r % 2 == 0 else runs[::-1]):
                out.append(one_run(checkout, shlex.split(extra), datafile, args.duration, args.qps))
            print(f"round {r + 1}: A {a[-1]:,.2f}  B {b[-1]:,.2f}  B/A {b[-1] / a[-1]:.3f}", flush=True)
    ratios = sorted(y / x for x, y in zip(a, b))
    unit = "us CPU/query" if args.qps else "QPS"
    print(f"A ({args.base} {args.a_args}): median {statistics.median(a):,.2f} {unit} (range {min(a):,.2f}-{max(a):,.2f})")
    print(f"B ({args.b_checkout} {args.b_args}): median {statistics.median(b):,.2f} {unit} (range {min(b):,.2f}-{max(b):,.2f})")
    print(f"B/A per round: median {statistics.median(ratios):.3f} (range {ratios[0]:.3f}-{ratios[-1]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
