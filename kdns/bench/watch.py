"""The watch source end to end: `kdns serve --kubeconfig` against the in-repo fake API server.

The generated cluster is loaded into tests/fakeapi.py (the fake the tests prove with kubectl:
list, chunked watch, resourceVersion, bookmarks), kdns is started on its kubeconfig, and the
harness reports, for the API source:

- start -> ready: from process start to the first correct answer (list of every Service and
  EndpointSlice, then the snapshot);
- RSS once synced (API mode also carries the kubernetes client);
- event -> answer: for each of ``events`` changes, from the fake API storing it (which is when
  a watcher could first see it) to kdns answering with it over UDP. Half the events create a
  new Service (its A record must appear), half replace a headless Service's EndpointSlice with
  a new address (the A answer must change). kdns is polled back to back with one query per
  ~0.1 ms, so the figure includes the watch stream's delivery, JSON decoding, the Service's
  recompile, the snapshot swap and a packet-cache miss.

The fake API lives in tests/, so this needs a checkout (as the rest of the harness does).
"""

from __future__ import annotations

import importlib.util
import socket
import statistics
import sys
import time
from pathlib import Path

import dns.message

from kdns.bench import cluster as gen, servers
from kdns.bench.report import coredns_mb
from kdns.bench.servers import REPO, Running, Unavailable, free_port

FAKEAPI = REPO / "tests" / "fakeapi.py"


def _fakeapi():
    if not FAKEAPI.is_file():
        raise Unavailable(f"{FAKEAPI} not found (the watch report needs a checkout)")
    spec = importlib.util.spec_from_file_location("kdns_bench_fakeapi", FAKEAPI)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module               # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def measure(services: int, endpoints: int, *, events: int, seed: int, tmp: Path,
            timeout: float = 30.0) -> dict:
    """Start kdns on a fake API holding the generated cluster; time start->ready and events."""
    out = {"services": services, "endpoints": endpoints, "events": events,
           "formula_mb": coredns_mb(services, endpoints)}
    fake = _fakeapi()
    model = gen.generate(services, endpoints, seed=seed)
    headless = [s for s in model.services if s.headless and s.endpoints]
    probe = (next(s for s in model.services if not s.headless).fqdn, "A")
    with fake.FakeAPI(history=max(1000, 4 * events), bookmark_interval=5.0) as api:
        for doc in gen.documents(model):
            api.apply(doc)                      # apply: the fake already has default, kube-system
        port = free_port()
        spec = servers.kdns(None, port, probe, None, name="kdns-api",
                            extra=["--kubeconfig", str(api.kubeconfig(tmp / "kubeconfig"))])
        with Running(spec, tmp) as run:
            out["ready_s"] = run.ready_after
            time.sleep(1.0)                     # let the first snapshot's garbage go
            out["rss_mb"] = run.rss_kb() / 1024
            latencies, kinds = [], {"service": [], "endpoints": []}
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect(("127.0.0.1", port))
                for n in range(events):
                    if n % 2 == 0 or not headless:
                        kind, (qname, change) = "service", _new_service(api, fake, n)
                    else:
                        kind, (qname, change) = "endpoints", _moved_endpoint(api, headless[n % len(headless)], n)
                    took = _until_answered(sock, qname, change, timeout)
                    if took is None:
                        out["error"] = f"event {n} ({kind}, {qname}) not answered within {timeout:g} s"
                        break
                    latencies.append(took)
                    kinds[kind].append(took)
    if latencies:
        out["event_ms"] = percentiles(latencies)
        out["by_kind_p50_ms"] = {k: round(statistics.median(v) * 1000, 2) for k, v in kinds.items() if v}
    return out


def _new_service(api, fake, n: int):
    """A Service that did not exist; the API allocates its clusterIP."""
    name = f"bench-watch-{n}"
    doc = fake.service("default", name, ports=[{"name": "http", "port": 80, "protocol": "TCP"}])
    return f"{name}.default.svc.{gen.DOMAIN}.", lambda: api.create(doc)["spec"]["clusterIP"]


def _moved_endpoint(api, svc: gen.Service, n: int):
    """The Service's first EndpointSlice, replaced by one holding a fresh address."""
    ip = f"10.255.{(n // 250) % 250}.{n % 250 + 1}"     # outside the generator's pod network
    doc = next(gen.slice_docs(svc))
    doc["endpoints"] = [{"addresses": [ip], "conditions": {"ready": True}}]

    def change() -> str:
        api.replace(doc)
        return ip
    return svc.fqdn, change


def _until_answered(sock: socket.socket, qname: str, change, timeout: float) -> float | None:
    """Make the change (it returns the address to wait for), then ask for qname until an A
    answer holds it; the seconds that took."""
    query = dns.message.make_query(qname, "A")
    started = time.perf_counter()
    want = change()
    deadline = started + timeout
    sock.settimeout(0.5)
    while time.perf_counter() < deadline:
        r = ask(sock, query)
        if r is not None and any(want == rd.to_text() for rrset in r.answer for rd in rrset):
            return time.perf_counter() - started
    return None


def ask(sock: socket.socket, query: dns.message.Message) -> dns.message.Message | None:
    """``query`` under a fresh ID on a connected UDP socket: the reply with that ID, or None
    when none comes within the socket's timeout (replies to earlier tries are skipped)."""
    query.id = (query.id + 1) & 0xFFFF
    sock.send(query.to_wire())
    try:
        while True:
            r = dns.message.from_wire(sock.recv(65535))
            if r.id == query.id:
                return r
    except (OSError, dns.exception.DNSException):
        return None


def percentiles(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"p50": round(q[49], 2), "p90": round(q[89], 2), "p99": round(q[98], 2), "max": round(ms[-1], 2)}
