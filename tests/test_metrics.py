"""CoreDNS's metric set under kdns_: a real kdns scraped over HTTP, parsed by prometheus-client's
own text parser, after queries from dnspython whose exact bytes the test knows."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone

import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Kdns, wait_for
from test_http import get, http_port

# CoreDNS's plugin.TimeBuckets and the size buckets of plugin/metrics/vars, as Prometheus prints them.
DURATION_LE = ["0.00025", "0.0005", "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064",
               "0.128", "0.256", "0.512", "1.024", "2.048", "4.096", "8.192", "+Inf"]
SIZE_LE = ["0.0", "100.0", "200.0", "300.0", "400.0", "511.0", "1023.0", "2047.0", "4095.0",
           "8291.0", "16000.0", "32000.0", "48000.0", "64000.0", "+Inf"]
PROGRAMMING_LE = [repr(0.001 * 2 ** i) for i in range(20)] + ["+Inf"]

# family -> (type, label names of its samples, without le)
FAMILIES = {
    "kdns_dns_requests": ("counter", {"server", "zone", "proto", "family", "type"}),
    "kdns_dns_responses": ("counter", {"server", "zone", "rcode", "plugin"}),
    "kdns_dns_request_duration_seconds": ("histogram", {"server", "zone"}),
    "kdns_dns_request_size_bytes": ("histogram", {"server", "zone", "proto"}),
    "kdns_dns_response_size_bytes": ("histogram", {"server", "zone", "proto"}),
    "kdns_cache_entries": ("gauge", {"type", "zones"}),
    "kdns_cache_hits": ("counter", {"server", "type", "zones"}),
    "kdns_cache_misses": ("counter", {"server", "zones"}),
    "kdns_kubernetes_dns_programming_duration_seconds": ("histogram", {"service_kind"}),
    "kdns_build_info": ("gauge", {"version", "revision", "pythonversion"}),
    "kdns_reload_failed": ("counter", set()),
}

WEB = "webapp.default.svc.cluster.local."


def scrape(port: int) -> dict:
    code, body, headers = get(port, "/metrics")
    assert code == 200, body
    return {f.name: f for f in text_string_to_metric_families(body)}


def total(families: dict, family: str, sample: str, /, **labels) -> float:
    """Sum of the samples named ``sample`` whose labels include ``labels``."""
    return sum(s.value for s in families[family].samples
               if s.name == sample and labels.items() <= s.labels.items())


def ask(server: Kdns, host: str, q: dns.message.Message, *, tcp: bool = False) -> tuple[dns.message.Message, int]:
    """Send ``q`` to ``host``; returns the answer and its size on the wire."""
    if tcp:
        resp = dns.query.tcp(q, host, port=server.port, timeout=3)
    else:
        resp = dns.query.udp(q, host, port=server.port, timeout=3)
    return resp, len(resp.to_wire())


def free_on_both() -> int:
    """A port nothing holds for UDP or TCP on 127.0.0.1 and ::1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                for family, kind, host in ((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
                                           (socket.AF_INET6, socket.SOCK_DGRAM, "::1"),
                                           (socket.AF_INET6, socket.SOCK_STREAM, "::1")):
                    with socket.socket(family, kind) as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on both loopback addresses")


@pytest.fixture(scope="module", params=["64", "1"], ids=["recvmmsg", "recvfrom"])
def two(request):
    """kdns on 127.0.0.1 and [::1] at the same port, with an upstream for forwarded names."""
    from dnsstub import Stub

    upstream = Stub(["www.example.com. 300 IN A 192.0.2.53"])
    for attempt in range(5):
        # A port free for UDP and TCP on both addresses; between the probe and kdns's bind a
        # client's ephemeral UDP port may still take it: then try another.
        port = free_on_both()
        try:
            server = Kdns("--http", "127.0.0.1:0", "--reload", "0", "--udp-batch", request.param,
                          "--listen", f"[::1]:{port}", "--upstream", f"127.0.0.1:{upstream.port}",
                          listen=f"127.0.0.1:{port}")
            break
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == 4:
                raise
    server.http = http_port(server)
    yield server
    server.stop()
    upstream.close()


def test_families_labels_and_buckets_are_coredns_s(two):
    fams = scrape(two.http)
    for name, (kind, labels) in FAMILIES.items():
        assert name in fams, f"missing {name}"
        assert fams[name].type == kind, name
        for s in fams[name].samples:
            assert set(s.labels) - {"le"} == labels, (name, s)
    v4 = f"dns://127.0.0.1:{two.port}"
    les = [s.labels["le"] for s in fams["kdns_dns_request_duration_seconds"].samples
           if s.name.endswith("_bucket") and s.labels["server"] == v4]
    assert les == DURATION_LE
    assert total(fams, "kdns_build_info", "kdns_build_info", version="0.1.0") == 1
    assert total(fams, "kdns_reload_failed", "kdns_reload_failed_total") == 0
    # Listeners show before their first query, so rate() has a starting point.
    assert {s.labels["server"] for s in fams["kdns_cache_misses"].samples} == \
        {v4, f"dns://[::1]:{two.port}"}


def test_every_answer_is_counted_timed_and_sized(two):
    v4, v6 = f"dns://127.0.0.1:{two.port}", f"dns://[::1]:{two.port}"
    before = scrape(two.http)
    sent = {("udp", v4): [0, 0], ("tcp", v4): [0, 0], ("udp", v6): [0, 0]}   # [bytes, count]
    received = {key: 0 for key in sent}

    def send(host, server, name, rdtype="A", tcp=False, rdclass="IN"):
        q = dns.message.make_query(name, rdtype, rdclass)
        resp, size = ask(two, host, q, tcp=tcp)
        key = ("tcp" if tcp else "udp", server)
        sent[key][0] += len(q.to_wire())
        sent[key][1] += 1
        received[key] += size
        return resp

    # dnspython sends the same bytes apart from the ID: one computed answer, then hits.
    for _ in range(3):
        assert send("127.0.0.1", v4, WEB).rcode() == dns.rcode.NOERROR
    for _ in range(2):
        assert send("::1", v6, "nope.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert send("127.0.0.1", v4, "_http._tcp.webapp.default.svc.cluster.local.", "SRV", tcp=True).answer
    assert send("127.0.0.1", v4, "www.example.com.").answer[0][0].address == "192.0.2.53"
    assert send("127.0.0.1", v4, WEB, rdclass="CH").rcode() == dns.rcode.REFUSED
    assert send("127.0.0.1", v4, WEB, "TYPE65280").rcode() == dns.rcode.NOERROR
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x12", ("127.0.0.1", two.port))                       # dropped: no answer
    assert send("127.0.0.1", v4, WEB).rcode() == dns.rcode.NOERROR      # after the junk
    after = scrape(two.http)

    def delta(family, sample, /, **labels):
        return total(after, family, sample, **labels) - total(before, family, sample, **labels)

    req = "kdns_dns_requests", "kdns_dns_requests_total"
    assert delta(*req, server=v4, zone=".", proto="udp", family="1", type="A") == 6
    assert delta(*req, server=v4, zone=".", proto="tcp", family="1", type="SRV") == 1
    assert delta(*req, server=v4, zone=".", proto="udp", family="1", type="other") == 1
    assert delta(*req, server=v6, zone=".", proto="udp", family="2", type="A") == 2
    assert delta(*req) == 10
    resp = "kdns_dns_responses", "kdns_dns_responses_total"
    assert delta(*resp, server=v4, zone=".", rcode="NOERROR", plugin="cache") == 3
    assert delta(*resp, server=v4, zone=".", rcode="NOERROR", plugin="kubernetes") == 3   # A, SRV, other
    assert delta(*resp, server=v4, zone=".", rcode="NOERROR", plugin="forward") == 1
    assert delta(*resp, server=v4, zone=".", rcode="REFUSED", plugin="") == 1
    assert delta(*resp, server=v6, zone=".", rcode="NXDOMAIN", plugin="kubernetes") == 1
    assert delta(*resp, server=v6, zone=".", rcode="NXDOMAIN", plugin="cache") == 1
    hits = "kdns_cache_hits", "kdns_cache_hits_total"
    assert delta(*hits, server=v4, type="success", zones=".") == 3
    assert delta(*hits, server=v6, type="denial", zones=".") == 1
    assert delta("kdns_cache_misses", "kdns_cache_misses_total", server=v4, zones=".") == 4
    assert delta("kdns_cache_misses", "kdns_cache_misses_total", server=v6, zones=".") == 1
    # Every answer is timed exactly once (cache hits, TCP, and the forwarded one from its worker);
    # the dropped packet is not an answer.
    dur = "kdns_dns_request_duration_seconds"
    assert delta(dur, dur + "_count", server=v4, zone=".") == 8
    assert delta(dur, dur + "_bucket", server=v4, zone=".", le="+Inf") == 8
    assert delta(dur, dur + "_count", server=v6, zone=".") == 2
    assert delta(dur, dur + "_sum", server=v4) > 0
    # Sizes are the bytes on the wire, exactly.
    for (proto, server), (size, count) in sent.items():
        for fam, want in (("kdns_dns_request_size_bytes", size), ("kdns_dns_response_size_bytes", received[(proto, server)])):
            assert delta(fam, fam + "_count", server=server, proto=proto) == count, (fam, proto, server)
            assert delta(fam, fam + "_sum", server=server, proto=proto) == want, (fam, proto, server)
    les = [s.labels["le"] for s in after["kdns_dns_request_size_bytes"].samples
           if s.name.endswith("_bucket") and s.labels["server"] == v4 and s.labels["proto"] == "udp"]
    assert les == SIZE_LE
    # The packet cache holds the local UDP answers (not the REFUSED, not the forwarded one):
    # the A (a success), the NXDOMAIN and the TYPE65280 NODATA (denials).
    assert total(after, "kdns_cache_entries", "kdns_cache_entries", type="success") == 1
    assert total(after, "kdns_cache_entries", "kdns_cache_entries", type="denial") == 2


def test_failed_reloads_are_counted(tmp_path):
    good = tmp_path / "svc.yaml"
    good.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
                    "spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}\n")
    server = Kdns("--http", "127.0.0.1:0", "--manifests", str(good), "--reload", "0.1")
    try:
        port = http_port(server)
        good.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
                        "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n")
        assert wait_for(lambda: total(scrape(port), "kdns_reload_failed", "kdns_reload_failed_total") == 1), \
            server.log()
        assert server.query("web.default.svc.cluster.local.").answer[0][0].address == "10.96.0.20"
    finally:
        server.stop()


def test_dns_programming_duration_from_the_trigger_time(api, tmp_path):
    from fakeapi import endpointslice, service

    api.create(service("prod", "web", "10.96.0.20"))
    api.create(service("prod", "pg", "None"))
    server = Kdns("--http", "127.0.0.1:0", "--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig"))
    try:
        port = http_port(server)
        assert wait_for(lambda: server.query("web.prod.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
                        or server.query("web.prod.svc.cluster.local.").answer), server.log()
        assert wait_for(lambda: get(port, "/ready")[0] == 200), server.log()
        stamp = (datetime.now(timezone.utc) - timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for svc, ip in (("web", "10.244.1.5"), ("pg", "10.244.1.6")):
            slice_ = endpointslice("prod", f"{svc}-a", svc, [ip])
            slice_["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": stamp}
            api.create(slice_)
        slice_ = endpointslice("prod", "web-b", "web", ["10.244.1.7"])           # unstamped: not counted
        api.create(slice_)
        assert wait_for(lambda: server.query("pg.prod.svc.cluster.local.").answer), server.log()
        name = "kdns_kubernetes_dns_programming_duration_seconds"
        assert wait_for(lambda: total(scrape(port), name, name + "_count") == 2), server.log()
        fams = scrape(port)
        for kind in ("cluster_ip", "headless_with_selector"):
            assert total(fams, name, name + "_count", service_kind=kind) == 1, kind
            assert total(fams, name, name + "_sum", service_kind=kind) >= 2.0     # stamped 3 s ago
        les = [s.labels["le"] for s in fams[name].samples
               if s.name.endswith("_bucket") and s.labels["service_kind"] == "cluster_ip"]
        assert [float(x) for x in les[:-1]] == [float(x) for x in PROGRAMMING_LE[:-1]]
    finally:
        server.stop()
