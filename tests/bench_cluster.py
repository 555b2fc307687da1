"""Benchmark (not a test): how long from a watch event arriving to the sink having applied it.

    python tests/bench_cluster.py [--services 10000] [--events 200]

The API side is tests/fakeapi.py on loopback; the sink is kdns.snapshot.Store, the serving
side's own Sink, so "applied" means a new Snapshot is published and the next query sees the
change. Two numbers per event:

- received -> applied: from the moment the event's line was read off the watch stream
  (ClusterSource.stats.last_event_received) to Sink.apply returning: JSON decode, strip,
  store, snapshot update. This is kdns's own cost, the number the issue's target is about.
- written -> applied: from the fake API storing the change to Sink.apply returning; adds the
  fake server's fan-out and loopback HTTP, an upper bound on what a client would notice.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fakeapi import FakeAPI, endpointslice, service  # noqa: E402


class TimingSink:
    """Wraps a real Sink; times each apply against the source's last-received stamp."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.source = None
        self.cond = threading.Condition()
        self.applied: list[tuple[str, float, float]] = []   # (name, received->applied, done at)
        self.synced = False

    def reset(self, cluster, synced=True) -> None:
        self.inner.reset(cluster, synced)
        with self.cond:
            self.synced = synced
            self.cond.notify_all()

    def set_synced(self, synced) -> None:
        self.inner.set_synced(synced)

    def apply(self, op, obj) -> None:
        self.inner.apply(op, obj)
        done = time.perf_counter()
        received = self.source.stats.last_event_received
        with self.cond:
            self.applied.append((obj.name, done - received, done))
            self.cond.notify_all()


def _percentiles(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"p50_ms": round(q[49], 3), "p90_ms": round(q[89], 3), "p99_ms": round(q[98], 3),
            "max_ms": round(ms[-1], 3)}


def measure_event_latency(services: int = 10000, events: int = 200, sink=None,
                          timeout: float = 600.0) -> dict:
    """Sync ``services`` Services (each with one EndpointSlice) into ``sink`` (default: a
    kdns.snapshot.Store), then change one Service ``events`` times, one at a time, and report
    latency percentiles. Bounded: every wait gives up after ``timeout`` seconds."""
    from kdns.sources.cluster import ClusterSource
    if sink is None:
        from kdns.config import Config
        from kdns.snapshot import Store
        sink = Store(Config())
    timing = TimingSink(sink)
    with FakeAPI(history=max(1000, events * 2)) as api, tempfile.TemporaryDirectory() as tmp:
        for i in range(services):
            ns = f"ns{i % 50}"
            api.create(service(ns, f"svc{i}", f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"))
            api.create(endpointslice(ns, f"svc{i}-a", f"svc{i}", [f"10.244.{(i // 256) % 256}.{i % 256}"]))
        src = ClusterSource(timing, kubeconfig=api.kubeconfig(Path(tmp) / "kubeconfig"))
        timing.source = src
        t0 = time.perf_counter()
        src.start()
        try:
            with timing.cond:
                if not timing.cond.wait_for(lambda: timing.synced, timeout):
                    raise TimeoutError("the source never synced")
            sync_s = time.perf_counter() - t0
            written: list[float] = []
            for n in range(events):
                i = (n * 7919) % services
                ns = f"ns{i % 50}"
                doc = service(ns, f"svc{i}", f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}",
                              ports=[{"name": "http", "port": 1000 + n, "protocol": "TCP"}])
                start = time.perf_counter()
                api.replace(doc)
                with timing.cond:
                    if not timing.cond.wait_for(lambda: len(timing.applied) > n, timeout):
                        raise TimeoutError(f"event {n} was never applied")
                    written.append(timing.applied[n][2] - start)
            received = [a[1] for a in timing.applied[:events]]
        finally:
            src.stop()
    return {"services": services, "events": events, "initial_sync_s": round(sync_s, 3),
            "received_to_applied": _percentiles(received), "written_to_applied": _percentiles(written)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--events", type=int, default=200)
    args = p.parse_args()
    result = measure_event_latency(args.services, args.events)
    for k, v in result.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
