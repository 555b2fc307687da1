"""Sustained churn from the API: N events/s (a rolling update of a big Deployment), measured.

The fake API (tests/fakeapi.py, its own process) holds issue 11's cluster; once kdns is ready
it rewrites EndpointSlices at ``rate`` per second for ``seconds``: each event moves one
Service's first endpoint to a fresh pod IP, so a new endpoint name (``<dashed-ip>.<svc>``)
must appear in kdns's answers. The fake prints each event (monotonic time stored, name) and
the harness asks kdns for a sample of them (one in ``sample``) until it answers NOERROR:

- event -> answer: from the fake storing the event to kdns answering it over UDP. Every
  sample is asked as soon as the harness reads it and again every 5 ms until it
  answers, all samples at once (the time the fake takes to print the line counts against
  kdns, so the figure is an upper bound);
- lag: the newest event kdns answers, against the newest event stored, sampled each second
  (kdns keeping up means this stays near the event->answer time, not growing);
- RSS each second, to show whether memory stays flat.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message

from kdns.bench import servers, startup
from kdns.bench.servers import Running, Unavailable, free_port

_FAKE = """
import sys, time, threading
sys.path.insert(0, sys.argv[3])
from fakeapi import FakeAPI
from kdns.bench.startup import documents, namespaces, ENDPOINTS_PER_SERVICE
n = int(sys.argv[1])
api = FakeAPI(history=200000, bookmark_interval=1.0).start()
slices = []
for doc in documents(n):
    api.apply(doc)
    if doc["kind"] == "EndpointSlice":
        slices.append(doc)
api.kubeconfig(sys.argv[2])
# The fake holds the whole cluster as ~3M Python objects: a full collection walks them all
# (~1 s, the whole fake stalls and the stream stops). A real API server has no such pause.
import gc
gc.collect()
gc.freeze()
print("ready", flush=True)
rate, seconds = (float(x) for x in sys.stdin.readline().split())
out = sys.stdout
start = time.monotonic()
k = 0
while True:
    now = time.monotonic()
    if now - start >= seconds:
        break
    due = int((now - start) * rate)
    while k < due:
        doc = slices[k % len(slices)]
        ip = 0x0AFC0000 + k                       # 10.252.0.0 onwards: fresh pod IPs
        text = f"{ip >> 24 & 255}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}"
        doc["endpoints"][0]["addresses"] = [text]
        doc["endpoints"][0]["targetRef"]["name"] = f"churn-{k}"
        api.replace(doc)
        svc = doc["metadata"]["labels"]["kubernetes.io/service-name"]
        out.write(f"{time.monotonic():.6f} {text.replace('.', '-')}.{svc}.{doc['metadata']['namespace']}\\n")
        k += 1
    out.flush()
    time.sleep(0.002)
out.write("done\\n")
out.flush()
sys.stdin.read()
api.stop()
"""


def measure(services: int, tmp: Path, *, rate: float = 1000.0, seconds: float = 30.0,
            sample: int = 10, timeout: float = 10.0) -> dict:
    fake = servers.REPO / "tests" / "fakeapi.py"
    if not fake.is_file():
        raise Unavailable(f"{fake} not found (the churn report needs a checkout)")
    kubeconfig = tmp / f"kubeconfig-churn-{services}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(servers.REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", _FAKE, str(services), str(kubeconfig), str(fake.parent)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    out: dict = {"services": services, "rate": rate, "seconds": seconds}
    try:
        if proc.stdout.readline().strip() != "ready":
            raise Unavailable("the fake API did not start")
        port = free_port()
        spec = servers.kdns(None, port, startup.probe(services), None, name=f"kdns-churn-{services}",
                            extra=["--kubeconfig", str(kubeconfig)], ready_timeout=300)
        with Running(spec, tmp) as run:
            time.sleep(1.0)
            out["rss_ready_mb"] = round(run.rss_kb() / 1024, 1)
            events: "queue.Queue[tuple[float, str] | None]" = queue.Queue()

            def read() -> None:
                for line in proc.stdout:
                    if line.startswith("done"):
                        break
                    t, name = line.split()
                    events.put((float(t), name))
                events.put(None)

            reader = threading.Thread(target=read, daemon=True)
            proc.stdin.write(f"{rate} {seconds}\n")
            proc.stdin.flush()
            started = time.monotonic()
            reader.start()
            latencies, lags, rss, stored = [], [], [], 0
            unanswered = 0
            newest_stored = 0.0
            next_tick = started + 1.0
            # Every sample is asked at once and again each POLL until it answers, all on one
            # socket: asking them one after another made each wait behind the ones before it,
            # and the queue of samples (not kdns) made the tail.
            pending: dict[int, _Sample] = {}
            next_id = 0
            done = False
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect(("127.0.0.1", port))
                sock.setblocking(False)
                seen = 0
                while not done or pending:
                    while True:
                        try:
                            item = events.get_nowait()
                        except queue.Empty:
                            break
                        if item is None:
                            done = True
                            break
                        stored += 1
                        newest_stored = item[0]
                        if seen % sample == 0:
                            next_id = (next_id + 1) & 0xFFFF
                            pending[next_id] = _Sample(item[0], _query_wire(
                                f"{item[1]}.svc.{startup.DOMAIN}.", next_id))
                        seen += 1
                    now = time.monotonic()
                    for qid, smp in list(pending.items()):
                        if now > smp.stored + timeout:
                            unanswered += 1
                            del pending[qid]
                        elif now - smp.asked >= POLL:
                            smp.asked = now
                            sock.send(smp.wire)
                    deadline = time.monotonic() + POLL
                    while True:
                        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
                        if not ready:
                            break
                        data = sock.recv(65535)
                        got = time.monotonic()
                        qid = int.from_bytes(data[:2], "big") if len(data) >= 12 else -1
                        smp = pending.get(qid)
                        # NOERROR (rcode 0) with at least one answer record (ANCOUNT > 0)
                        if smp is not None and data[3] & 0x0F == 0 and data[6:8] != b"\0\0":
                            latencies.append(got - smp.stored)
                            del pending[qid]
                            if got >= next_tick:
                                # how far behind the newest stored event kdns's newest answer is
                                lags.append(max(0.0, newest_stored - smp.stored))
                                rss.append(round(run.rss_kb() / 1024, 1))
                                next_tick += 1.0
            if unanswered:
                out["unanswered"] = unanswered
            out["events"] = stored
            out["achieved_rate"] = round(stored / max(1e-9, seconds), 1)
            out["rss_after_mb"] = round(run.rss_kb() / 1024, 1)
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if latencies:
        ms = sorted(v * 1000 for v in latencies)
        q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
        out["event_ms"] = {"p50": round(q[49], 1), "p90": round(q[89], 1), "p99": round(q[98], 1),
                           "max": round(ms[-1], 1), "samples": len(ms)}
    out["lag_ms_max"] = round(max(lags) * 1000, 1) if lags else None
    out["rss_mb_over_time"] = rss
    return out


POLL = 0.005      # seconds between asks of one sample


class _Sample:
    __slots__ = ("stored", "wire", "asked")

    def __init__(self, stored: float, wire: bytes):
        self.stored, self.wire, self.asked = stored, wire, 0.0


def _query_wire(qname: str, qid: int) -> bytes:
    query = dns.message.make_query(qname, "A")
    query.id = qid
    return query.to_wire()


def lines(r: dict) -> str:
    if "error" in r:
        return f"  error: {r['error']}"
    ev = r.get("event_ms") or {}
    return (f"  {r['services']:,} services, asked {r['rate']:g} events/s for {r['seconds']:g} s, stored "
            f"{r.get('events', 0):,} ({r.get('achieved_rate', 0):g}/s)\n"
            f"  event -> answer ms: p50 {ev.get('p50')}, p90 {ev.get('p90')}, p99 {ev.get('p99')}, "
            f"max {ev.get('max')} ({ev.get('samples', 0)} samples, {r.get('unanswered', 0)} unanswered)\n"
            f"  lag (newest stored - newest answered), max: {r.get('lag_ms_max')} ms\n"
            f"  RSS MB: ready {r.get('rss_ready_mb')}, each second {r.get('rss_mb_over_time')}, "
            f"after {r.get('rss_after_mb')}")
