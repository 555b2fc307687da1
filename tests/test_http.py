"""--http (/health, /ready, /metrics) and the SIGTERM lameduck, against a real kdns process."""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.error
import urllib.request

import dns.message
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Kdns, wait_for
from kdns import http, metrics
from kdns.config import Config
from kdns.objects import Cluster
from kdns.snapshot import build

# Every kdns_ family /metrics must show, with its type (the names are documented in docs/ops.md).
FAMILIES = {
    "kdns_dns_requests": "counter",
    "kdns_dns_responses": "counter",
    "kdns_dns_request_duration_seconds": "histogram",
    "kdns_cache_hits": "counter",
    "kdns_cache_misses": "counter",
    "kdns_cache_entries": "gauge",
    "kdns_dns_dropped": "counter",
    "kdns_dns_answer_duration_seconds": "histogram",
    "kdns_snapshot_version": "gauge",
    "kdns_synced": "gauge",
    "kdns_ready": "gauge",
    "kdns_services": "gauge",
    "kdns_build_info": "gauge",
    "kdns_watch_events": "counter",
    "kdns_relists": "counter",
    "kdns_watch_errors": "counter",
    "kdns_forward_requests": "counter",
    "kdns_forward_responses": "counter",
    "kdns_forward_request_duration_seconds": "histogram",
    "kdns_forward_healthcheck_failures": "counter",
    "kdns_forward_shed": "counter",
    "kdns_forward_refused": "counter",
    "kdns_forward_stale_answers": "counter",
    "kdns_forward_inflight": "gauge",
    "kdns_forward_upstream_healthy": "gauge",
}

WEB = "webapp.default.svc.cluster.local."


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


def http_port(server: Kdns) -> int:
    m = re.search(r"http on 127\.0\.0\.1:(\d+)", server.log())
    assert m, server.log()
    return int(m.group(1))


def scrape(port: int) -> dict:
    """{family name: family} from /metrics, parsed by prometheus-client's own parser."""
    code, body, headers = get(port, "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(body)}


def value(families: dict, sample: str, **labels) -> float:
    """One sample's value; 0 when the labelled child does not exist yet (a counter never bumped)."""
    family = sample.removesuffix("_total").removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
    for s in families[family].samples:
        if s.name == sample and s.labels == labels:
            return s.value
    return 0.0


@pytest.fixture(scope="module")
def web():
    server = Kdns("--http", "127.0.0.1:0", "--reload", "0")
    server.http = http_port(server)
    yield server
    server.stop()


def test_health_and_ready_say_ok(web):
    assert get(web.http, "/health")[:2] == (200, "OK")
    assert get(web.http, "/ready")[:2] == (200, "OK")          # manifest mode is always synced
    code, body, headers = get(web.http, "/health", "HEAD")
    assert code == 200 and body == "" and headers["Content-Length"] == "2"
    code, body, _ = get(web.http, "/nope")
    assert code == 404 and "/health" in body


def test_metrics_names_types_and_state(web):
    fams = scrape(web.http)
    missing = {n for n in FAMILIES if n not in fams}
    assert not missing, f"missing metric families: {sorted(missing)}"
    assert {n: fams[n].type for n in FAMILIES} == FAMILIES
    assert value(fams, "kdns_synced") == 1 and value(fams, "kdns_ready") == 1
    assert value(fams, "kdns_services") == 7                    # zones/cluster.yaml
    assert [s.labels["version"] for s in fams["kdns_build_info"].samples] == ["0.1.0"]
    assert "process_cpu_seconds_total" in {s.name for f in fams.values() for s in f.samples}
    # The snapshot version is the SOA serial clients see.
    soa = web.query("cluster.local.", "SOA").answer[0][0]
    assert value(scrape(web.http), "kdns_snapshot_version") == soa.serial


def test_counters_move_with_queries(web):
    before = scrape(web.http)
    # The same question three times: one computed answer, then two packet-cache hits (the key
    # is the query after its ID, and dnspython sends identical bytes apart from the ID).
    for _ in range(3):
        assert web.query(WEB).rcode() == dns.rcode.NOERROR
    assert web.query("nope.default.svc.cluster.local.", tcp=True).rcode() == dns.rcode.NXDOMAIN
    assert web.query("_http._tcp.webapp.default.svc.cluster.local.", "SRV").answer
    assert web.query(WEB, "TYPE65280").rcode() == dns.rcode.NOERROR      # rare types: "other"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x12", ("127.0.0.1", web.port))                       # too short to answer
    assert web.query(WEB).rcode() == dns.rcode.NOERROR                   # and it was handled first
    after = scrape(web.http)

    def delta(sample, **labels):
        return value(after, sample, **labels) - value(before, sample, **labels)

    def requests(**labels):
        fam = after["kdns_dns_requests"].samples
        was = before["kdns_dns_requests"].samples
        return sum(x.value for x in fam if labels.items() <= x.labels.items()) - \
            sum(x.value for x in was if labels.items() <= x.labels.items())

    def responses(**labels):
        fam = after["kdns_dns_responses"].samples
        was = before["kdns_dns_responses"].samples
        return sum(x.value for x in fam if labels.items() <= x.labels.items()) - \
            sum(x.value for x in was if labels.items() <= x.labels.items())

    assert requests(type="A", proto="udp") == 4 and requests(type="A", proto="tcp") == 1
    assert responses(rcode="NXDOMAIN") == 1
    assert requests(type="SRV", proto="udp") == 1
    assert requests(type="other", proto="udp") == 1
    assert responses(rcode="NOERROR", plugin="cache") == 3
    assert requests() == 7 == responses()
    assert delta("kdns_cache_hits_total", server=f"dns://127.0.0.1:{web.port}", type="success", zones=".") == 3
    assert delta("kdns_cache_misses_total", server=f"dns://127.0.0.1:{web.port}", zones=".") == 3
    assert delta("kdns_dns_dropped_total") == 1
    # Timed: every computed answer (3 UDP misses + 1 TCP); hits are not timed.
    assert delta("kdns_dns_answer_duration_seconds_count") == 4
    assert delta("kdns_dns_answer_duration_seconds_bucket", le="+Inf") == 4
    assert value(after, "kdns_cache_entries", type="success", zones=".") >= 2


def test_ready_is_503_with_the_reason_until_synced():
    """The cluster source publishes unsynced snapshots until its first full listing; /ready must
    say so. Served here in-process over a real socket, from a real (unsynced) Snapshot."""
    snap = {"current": build(Cluster(), Config(), synced=False)}
    status = http.Status(lambda: snap["current"])
    web = http.HTTP(("127.0.0.1", 0), status, metrics.REGISTRY)
    _, port = web.start()
    try:
        code, body, _ = get(port, "/ready")
        assert code == 503 and "not synced" in body
        assert get(port, "/health")[:2] == (200, "OK")
        snap["current"] = build(Cluster(), Config(), synced=True)
        assert get(port, "/ready")[:2] == (200, "OK")
        status.lameduck = True
        code, body, _ = get(port, "/ready")
        assert code == 503 and "lameduck" in body
    finally:
        web.close()
    # A source that knows which kinds it still waits for can say so.
    status = http.Status(lambda: build(Cluster(), Config(), synced=False), lambda: "endpointslices")
    assert status.not_ready() == \
        "not synced: waiting for the first full listing of the Kubernetes API (endpointslices)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_lameduck_not_ready_but_answering_then_exit_zero(sig):
    server = Kdns("--http", "127.0.0.1:0", "--lameduck", "3")
    try:
        port = http_port(server)
        assert get(port, "/ready")[0] == 200
        server.proc.send_signal(sig)
        assert wait_for(lambda: get(port, "/ready")[0] == 503), server.log()
        assert "lameduck" in get(port, "/ready")[1]
        assert get(port, "/health")[:2] == (200, "OK")             # not a reason to restart us
        resp = server.query(WEB)
        assert resp.rcode() == dns.rcode.NOERROR and resp.answer[0][0].address == "10.96.45.200"
        assert server.query(WEB, tcp=True).answer[0][0].address == "10.96.45.200"
        assert server.proc.wait(3 + 20) == 0
        assert "lameduck: not ready, still answering for 3s" in server.log()
    finally:
        server.stop()


def test_second_signal_ends_lameduck_at_once():
    server = Kdns("--http", "127.0.0.1:0", "--lameduck", "600")
    try:
        port = http_port(server)
        server.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: get(port, "/ready")[0] == 503), server.log()
        assert server.query(WEB).rcode() == dns.rcode.NOERROR
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0                          # far below the 600 s lameduck
    finally:
        server.stop()


def test_http_flag_errors_are_clear():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        server = Kdns("--http", f"127.0.0.1:{taken.getsockname()[1]}", wait=False)
        assert server.proc.wait(30) == 1
        log = server.stop()
        assert "cannot serve http on 127.0.0.1:" in log and "Traceback" not in log
    finally:
        taken.close()
    server = Kdns("--http", "nowhere:80", wait=False)
    assert server.proc.wait(30) == 2
    log = server.stop()
    assert "'nowhere' is not an IP address" in log and "Traceback" not in log
    server = Kdns("--lameduck", "-1", wait=False)
    assert server.proc.wait(30) == 2
    log = server.stop()
    assert "--lameduck: '-1': must be 0-3600 seconds" in log and "Traceback" not in log


def test_packet_cache_stays_within_cache_size():
    server = Kdns("--http", "127.0.0.1:0", "--reload", "0", "--cache-size", "3")
    try:
        port = http_port(server)
        names = ["webapp", "nginx", "myapp", "mysql", "kubernetes"]
        for _ in range(2):
            for name in names:
                resp = server.query(f"{name}.default.svc.cluster.local.")
                assert resp.rcode() == 0 and resp.answer             # still right when evicting
                assert value(scrape(port), "kdns_cache_entries", type="success", zones=".") <= 3
        assert value(scrape(port), "kdns_cache_entries", type="success", zones=".") >= 1
    finally:
        server.stop()


def test_forwards_are_counted_by_upstream_and_result():
    from dnsstub import Stub

    upstream = Stub(["www.example.com. 300 IN A 192.0.2.53"])
    server = Kdns("--http", "127.0.0.1:0", "--reload", "0", "--upstream", f"127.0.0.1:{upstream.port}")
    try:
        port = http_port(server)
        who = f"127.0.0.1:{upstream.port}"
        for _ in range(3):                                    # one upstream exchange, then cached
            assert server.query("www.example.com.").answer[0][0].address == "192.0.2.53"
        assert server.query("nosuch.example.com.").rcode() == 3
        families = scrape(port)
        assert value(families, "kdns_forward_responses_total", to=who, rcode="NOERROR") == 1
        assert value(families, "kdns_forward_responses_total", to=who, rcode="NXDOMAIN") >= 1
        assert value(families, "kdns_forward_requests_total", to=who) == upstream.count(name="www.example.com") + upstream.count(name="nosuch.example.com")
        assert value(families, "kdns_forward_request_duration_seconds_count", to=who) == 2
        assert value(families, "kdns_forward_upstream_healthy", to=who) == 1
        assert value(families, "kdns_forward_inflight", to=who) == 0
    finally:
        server.stop()
        upstream.close()


def test_failed_health_probes_of_a_down_upstream_are_counted():
    """An upstream that never answers: the query times out (SERVFAIL), the upstream is marked
    down, and each failed health probe of it counts in kdns_forward_healthcheck_failures_total
    (CoreDNS forward's coredns_forward_healthcheck_failures_total)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)     # bound, never answers
    silent.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{silent.getsockname()[1]}"
    server = Kdns("--http", "127.0.0.1:0", "--reload", "0", "--upstream", dead)
    try:
        port = http_port(server)
        assert value(scrape(port), "kdns_forward_healthcheck_failures_total", to=dead) == 0
        assert server.query("www.example.com.", timeout=5).rcode() == dns.rcode.SERVFAIL
        assert wait_for(lambda: value(scrape(port), "kdns_forward_healthcheck_failures_total", to=dead) >= 2,
                        20), server.log()
        assert value(scrape(port), "kdns_forward_upstream_healthy", to=dead) == 0
    finally:
        server.stop()
        silent.close()
