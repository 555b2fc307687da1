"""The packet cache keeps an answer exactly as long as the data it was read from (issue 10).

A real kdns watches the fake API; dnspython asks it. Each test first makes the answer a cached
one (the cache-hit counter says so), then changes the cluster and checks that the first query
after the change was applied gets the new answer exactly, and that answers whose data did not
change keep coming from the cache through a storm of events. "Applied" is read from
/metrics' kdns_snapshot_version (one publish per event), never from a sleep; waits are bounded
polls, never speed claims.
"""

from __future__ import annotations

import re
import secrets
import socket
import struct
import urllib.request

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.tsigkeyring
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Kdns, wait_for
from fakeapi import endpointslice, namespace, service

WAIT = 20.0
TTL = 5
SOA = "ns.dns.cluster.local. hostmaster.cluster.local."


def metrics(server: Kdns) -> dict[str, float]:
    """Samples of /metrics summed over their labels (the counters and gauges these tests read;
    kdns_cache_hits_total is per server and type, as CoreDNS's)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    out: dict[str, float] = {}
    for f in text_string_to_metric_families(body):
        for s in f.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def hits(server: Kdns) -> tuple[float, float]:
    m = metrics(server)
    return m["kdns_cache_hits_total"], m["kdns_cache_misses_total"]


def version(server: Kdns) -> float:
    return metrics(server)["kdns_snapshot_version"]


def applied(server: Kdns, before: float, events: int = 1) -> None:
    """Wait until kdns has published ``events`` more snapshots (one event after a quiet spell
    is one; a burst of them may share one)."""
    assert wait_for(lambda: version(server) >= before + events, WAIT), server.log()


def text(resp: dns.message.Message) -> tuple:
    """Everything a client sees: rcode, flags, and each section as zone-file lines. The SOA
    serial is left out: a cached negative answer may carry the one of its snapshot."""
    def lines(section):
        out = []
        for rrset in section:
            for rd in rrset:
                line = f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}"
                if rrset.rdtype == dns.rdatatype.SOA:
                    line = f"{rrset.name} {rrset.ttl} IN SOA {rd.mname} {rd.rname} " \
                           f"{rd.refresh} {rd.retry} {rd.expire} {rd.minimum}"
                out.append(line)
        return sorted(out)
    return (dns.rcode.to_text(resp.rcode()), dns.flags.to_text(resp.flags), lines(resp.answer),
            lines(resp.authority), lines(resp.additional))


def nxdomain(name: str) -> tuple:
    return ("NXDOMAIN", "QR AA RD", [], [f"cluster.local. {TTL} IN SOA {SOA} 7200 1800 86400 {TTL}"], [])


def nodata(name: str) -> tuple:
    return ("NOERROR", "QR AA RD", [], [f"cluster.local. {TTL} IN SOA {SOA} 7200 1800 86400 {TTL}"], [])


def a(name: str, *ips: str) -> tuple:
    return ("NOERROR", "QR AA RD", sorted(f"{name} {TTL} IN A {ip}" for ip in ips), [], [])


def cached(server: Kdns, name: str, rdtype: str = "A") -> tuple:
    """Ask twice; the second answer must be a packet-cache hit and the same as the first."""
    first = text(server.query(name, rdtype))
    h, m = hits(server)
    second = text(server.query(name, rdtype))
    h2, m2 = hits(server)
    assert (h2 - h, m2 - m) == (1, 0), f"{name} {rdtype} was not answered from the cache"
    assert first == second
    return first


WEB = "web.prod.svc.cluster.local."
DB = "db.prod.svc.cluster.local."
PG = "pg.prod.svc.cluster.local."


@pytest.fixture
def live(api, tmp_path):
    api.create(service("prod", "web", "10.96.0.20"))
    api.create(service("prod", "db", "10.96.0.30"))
    api.create(service("prod", "pg", "None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(endpointslice("prod", "pg-a", "pg", ["10.244.1.5"]))
    api.create(endpointslice("prod", "pg-b", "pg", ["10.244.2.5"]))
    api.create(endpointslice("prod", "db-a", "db", ["10.244.3.1"]))
    server = Kdns("--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig"), "--api-timeout", "1",
                  "--http", "127.0.0.1:0", "--ttl", str(TTL))
    server.http = int(re.search(r"http on 127\.0\.0\.1:(\d+)", server.log()).group(1))
    assert wait_for(lambda: text(server.query(PG)) == a(PG, "10.244.1.5", "10.244.2.5"), WAIT)
    for kind in ("services", "endpointslices", "namespaces"):
        assert api.wait_for(lambda: api.watchers(kind) == 1, WAIT), kind
    yield server
    log = server.stop()
    assert "Traceback" not in log, log


def test_a_changed_endpointslice_is_answered_from_the_first_query_after_its_event(api, live):
    assert cached(live, PG) == a(PG, "10.244.1.5", "10.244.2.5")
    srv = "_http._tcp.pg.prod.svc.cluster.local."
    before_srv = cached(live, srv, "SRV")
    assert before_srv[2] == sorted([f"{srv} {TTL} IN SRV 0 50 8080 10-244-1-5.pg.prod.svc.cluster.local.",
                                    f"{srv} {TTL} IN SRV 0 50 8080 10-244-2-5.pg.prod.svc.cluster.local."])
    old_ptr, new_ptr = "5.1.244.10.in-addr.arpa.", "6.1.244.10.in-addr.arpa."
    assert cached(live, old_ptr, "PTR")[2] == [f"{old_ptr} {TTL} IN PTR 10-244-1-5.pg.prod.svc.cluster.local."]
    assert cached(live, new_ptr, "PTR")[0] == "NXDOMAIN"
    old_ep, new_ep = "10-244-1-5.pg.prod.svc.cluster.local.", "10-244-1-6.pg.prod.svc.cluster.local."
    assert cached(live, old_ep) == a(old_ep, "10.244.1.5")
    assert cached(live, new_ep) == nxdomain(new_ep)
    assert cached(live, WEB) == a(WEB, "10.96.0.20")

    v = version(live)
    api.replace(endpointslice("prod", "pg-a", "pg", ["10.244.1.6"]))
    applied(live, v)
    # The first query after the event: no poll, the answer must already be the new one.
    assert text(live.query(PG)) == a(PG, "10.244.1.6", "10.244.2.5")
    assert text(live.query(srv, "SRV"))[2] == sorted([
        f"{srv} {TTL} IN SRV 0 50 8080 10-244-1-6.pg.prod.svc.cluster.local.",
        f"{srv} {TTL} IN SRV 0 50 8080 10-244-2-5.pg.prod.svc.cluster.local."])
    assert text(live.query(old_ptr, "PTR"))[0] == "NXDOMAIN"
    assert text(live.query(new_ptr, "PTR"))[2] == [f"{new_ptr} {TTL} IN PTR {new_ep}"]
    assert text(live.query(old_ep)) == nxdomain(old_ep)
    assert text(live.query(new_ep)) == a(new_ep, "10.244.1.6")
    # web's data did not change: still the cached entry.
    h, m = hits(live)
    assert text(live.query(WEB)) == a(WEB, "10.96.0.20")
    assert hits(live) == (h + 1, m)


def test_a_changed_service_is_answered_from_the_first_query_after_its_event(api, live):
    srv = "_http._tcp.web.prod.svc.cluster.local."
    assert cached(live, srv, "SRV")[2] == [f"{srv} {TTL} IN SRV 0 100 80 web.prod.svc.cluster.local."]
    assert cached(live, WEB) == a(WEB, "10.96.0.20")
    v = version(live)
    api.replace(service("prod", "web", "10.96.0.20", ports=[{"name": "http", "port": 8081, "protocol": "TCP"}]))
    applied(live, v)
    assert text(live.query(srv, "SRV"))[2] == [f"{srv} {TTL} IN SRV 0 100 8081 web.prod.svc.cluster.local."]
    # Recompiled to the same A records: still the same, right answer.
    assert text(live.query(WEB)) == a(WEB, "10.96.0.20")


def test_an_unchanged_name_is_answered_from_the_cache_through_a_storm_of_events(api, live):
    assert cached(live, WEB) == a(WEB, "10.96.0.20")
    assert cached(live, PG) == a(PG, "10.244.1.5", "10.244.2.5")
    v = version(live)
    h0, m0 = hits(live)
    asked = 0
    events = 200
    for i in range(events):
        # EndpointSlice rewrites of another Service, as a rolling update makes them.
        api.replace(endpointslice("prod", "db-a", "db", [f"10.244.3.{1 + (i + 1) % 250}"]))
        if i % 10 == 0:
            assert text(live.query(WEB)) == a(WEB, "10.96.0.20")
            assert text(live.query(PG)) == a(PG, "10.244.1.5", "10.244.2.5")
            asked += 2
    # The storm itself was served: db's endpoint name follows the last slice. (Waited for by
    # its answer, not by a count of snapshots: events in a burst share one publish.) The
    # polling's own hits and misses, of another name, are left out of the count below.
    last = f"10-244-3-{1 + events % 250}.db.prod.svc.cluster.local."
    h1, m1 = hits(live)
    assert wait_for(lambda: text(live.query(last)) == a(last, f"10.244.3.{1 + events % 250}"), WAIT), \
        live.log()
    h2, m2 = hits(live)
    assert version(live) > v
    for _ in range(5):
        assert text(live.query(WEB)) == a(WEB, "10.96.0.20")
        assert text(live.query(PG)) == a(PG, "10.244.1.5", "10.244.2.5")
        asked += 2
    h, m = hits(live)
    assert (h - h0 - (h2 - h1), m - m0 - (m2 - m1)) == (asked, 0), \
        "an answer whose data did not change left the cache"


def test_creating_a_service_ends_its_cached_nxdomain_and_deleting_it_brings_it_back(api, live):
    name = "new.prod.svc.cluster.local."
    assert cached(live, name) == nxdomain(name)
    assert cached(live, name, "AAAA") == nxdomain(name)
    v = version(live)
    api.create(service("prod", "new", "10.96.0.40"))
    applied(live, v)
    assert text(live.query(name)) == a(name, "10.96.0.40")
    assert text(live.query(name, "AAAA")) == nodata(name)
    assert cached(live, name) == a(name, "10.96.0.40")
    v = version(live)
    api.delete("Service", "prod", "new")
    applied(live, v)
    assert text(live.query(name)) == nxdomain(name)
    assert text(live.query(name, "AAAA")) == nxdomain(name)


def test_creating_and_deleting_a_namespace_flips_its_cached_answers(api, live):
    ns_name, below = "shop.svc.cluster.local.", "cart.shop.svc.cluster.local."
    pod_ns = "shop.pod.cluster.local."
    assert cached(live, ns_name) == nxdomain(ns_name)
    assert cached(live, pod_ns) == nxdomain(pod_ns)
    assert cached(live, below) == nxdomain(below)
    v = version(live)
    api.create(namespace("shop"))
    applied(live, v)
    assert text(live.query(ns_name)) == nodata(ns_name)
    assert text(live.query(pod_ns)) == nodata(pod_ns)
    assert text(live.query(below)) == nxdomain(below)      # the namespace exists, the Service not
    assert cached(live, ns_name) == nodata(ns_name)
    v = version(live)
    api.delete("Namespace", "", "shop")
    applied(live, v)
    assert text(live.query(ns_name)) == nxdomain(ns_name)
    assert text(live.query(pod_ns)) == nxdomain(pod_ns)


def test_deleting_a_namespace_ends_the_cached_answers_of_the_services_still_in_it(api, live):
    """A Service's answer is cached under the Service alone; the namespace's deletion must
    still end it at once (the API deletes the namespace's objects only later, if at all)."""
    api.create(namespace("shop"))
    api.create(service("shop", "cart", "10.96.0.40"))
    api.create(endpointslice("shop", "cart-a", "cart", ["10.244.4.1"]))
    cart, ep = "cart.shop.svc.cluster.local.", "10-244-4-1.cart.shop.svc.cluster.local."
    assert wait_for(lambda: text(live.query(cart)) == a(cart, "10.96.0.40"), WAIT)
    assert wait_for(lambda: text(live.query(ep)) == a(ep, "10.244.4.1"), WAIT)
    assert cached(live, cart) == a(cart, "10.96.0.40")
    assert cached(live, ep) == a(ep, "10.244.4.1")
    srv = "_http._tcp.cart.shop.svc.cluster.local."             # the generic answer path
    assert cached(live, srv, "SRV")[2] == [f"{srv} {TTL} IN SRV 0 100 80 {cart}"]
    assert cached(live, WEB) == a(WEB, "10.96.0.20")
    v = version(live)
    api.delete("Namespace", "", "shop", cascade=False)
    applied(live, v)
    assert api.get("Service", "shop", "cart") is not None     # only the namespace went
    assert text(live.query(cart)) == nxdomain(cart)
    assert text(live.query(ep)) == nxdomain(ep)
    assert text(live.query(srv, "SRV")) == nxdomain(srv)
    h, m = hits(live)
    assert text(live.query(WEB)) == a(WEB, "10.96.0.20")       # another namespace's: kept
    assert hits(live) == (h + 1, m)


# ---- the key: one question, one entry (over the embedded example cluster)

WEBAPP = "webapp.default.svc.cluster.local."


@pytest.fixture(scope="module")
def embedded():
    server = Kdns("--http", "127.0.0.1:0", "--reload", "0")
    server.http = int(re.search(r"http on 127\.0\.0\.1:(\d+)", server.log()).group(1))
    yield server
    server.stop()


def test_a_query_with_a_cookie_hits_the_entry_of_the_same_query_without_one(embedded):
    plain = text(embedded.query(WEBAPP))
    h, m = hits(embedded)
    for _ in range(5):
        q = dns.message.make_query(WEBAPP, "A", use_edns=0, payload=1232,
                                   options=[dns.edns.GenericOption(dns.edns.COOKIE, secrets.token_bytes(8))])
        resp = embedded.send(q)
        assert text(resp) == plain
        assert resp.options == ()          # no cookie echoed: kdns does not do cookies (RFC 7873 §5.2)
    assert hits(embedded) == (h + 5, m)


def raw(server: Kdns, packet: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(packet, ("127.0.0.1", server.port))
        return s.recv(4096)


def test_a_compression_pointer_into_the_header_is_formerr_and_never_cached(embedded):
    entries = metrics(embedded)["kdns_cache_entries"]
    for qid in (0x1234, 0x4321, 0x0001):
        # QNAME c000: a pointer to offset 0, the ID; then type A, class IN.
        packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\xc0\x00" + b"\x00\x01\x00\x01"
        reply = raw(embedded, packet)
        assert reply == struct.pack("!HHHHHH", qid, 0x8101, 0, 0, 0, 0)     # FORMERR, header only
    assert metrics(embedded)["kdns_cache_entries"] == entries
    assert text(embedded.query(WEBAPP))[0] == "NOERROR"


@pytest.mark.parametrize("qname", [
    b"\x40" + b"a" * 64 + b"\x07default\x03svc\x07cluster\x05local\x00",            # label of 64
    b"".join(b"\x3f" + b"b" * 63 for _ in range(4)) + b"\x00",                       # 257 octets
    b"\x06webapp\x80xx\x00",                                                          # label type 10
], ids=["label-64", "name-257", "bad-label-type"])
def test_invalid_names_are_formerr_without_a_traceback_and_logged_once(qname):
    server = Kdns("--reload", "0")
    try:
        for qid in range(200):
            packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"
            assert raw(server, packet) == struct.pack("!HHHHHH", qid, 0x8101, 0, 0, 0, 0)
        assert text(server.query(WEBAPP))[0] == "NOERROR"
    finally:
        log = server.stop()
    assert "Traceback" not in log
    assert len([line for line in log.splitlines() if "bad packet" in line]) == 1, log


def test_bytes_after_the_last_record_are_formerr(embedded):
    q = dns.message.make_query(WEBAPP, "A").to_wire()
    assert raw(embedded, q + b"\x00\x00")[:4] == q[:2] + b"\x81\x01"
    resp = dns.message.from_wire(raw(embedded, q))
    assert dns.rcode.to_text(resp.rcode()) == "NOERROR"


def test_a_tsig_signed_query_gets_notauth_badkey_not_an_unsigned_answer(embedded):
    keyring = dns.tsigkeyring.from_text({"kdns-test-key.": "c2VjcmV0c2VjcmV0c2VjcmV0"})
    q = dns.message.make_query(WEBAPP, "A")
    q.use_tsig(keyring, keyname="kdns-test-key.")
    wire = q.to_wire()
    reply = raw(embedded, wire)
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply[:12])
    assert (qid, flags & 0x800F, qd, an, ns, ar) == (q.id, 0x8009, 1, 0, 0, 1)    # NOTAUTH
    # The TSIG RR: our key name, type TSIG, class ANY, TTL 0, then error BADKEY and no MAC.
    question_end = 12 + len(dns.name.from_text(WEBAPP).to_wire()) + 4
    assert reply[12:question_end] == wire[12:question_end]
    rr = reply[question_end:]
    owner = dns.name.from_text("kdns-test-key.").to_wire()
    assert rr.startswith(owner + struct.pack("!HHI", 250, 255, 0))
    rdata = rr[len(owner) + 10:]
    algorithm = dns.name.from_text("hmac-sha256.").to_wire()
    assert rdata.startswith(algorithm)
    mac_size = struct.unpack("!H", rdata[len(algorithm) + 8:len(algorithm) + 10])[0]
    assert mac_size == 0
    assert rdata[len(algorithm) + 10:] == struct.pack("!HHH", q.id, 17, 0)


# ---- answer rotation (--loadbalance, on by default as in kubeadm's Corefile)

def first_addresses(server: Kdns, name: str, times: int, **kw) -> dict[str, int]:
    firsts: dict[str, int] = {}
    for _ in range(times):
        resp = server.query(name, **kw)
        assert dns.rcode.to_text(resp.rcode()) == "NOERROR"
        ips = [rd.address for rrset in resp.answer for rd in rrset]
        assert sorted(ips) == ["10.244.1.5", "10.244.2.5", "10.244.3.5"]
        firsts[ips[0]] = firsts.get(ips[0], 0) + 1
    return firsts


@pytest.fixture
def headless(api, tmp_path):
    api.create(service("prod", "pg", "None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(endpointslice("prod", "pg-a", "pg", ["10.244.1.5", "10.244.2.5", "10.244.3.5"]))

    def start(*extra: str) -> Kdns:
        server = Kdns("--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig"), "--api-timeout", "1",
                      "--http", "127.0.0.1:0", *extra)
        server.http = int(re.search(r"http on 127\.0\.0\.1:(\d+)", server.log()).group(1))
        assert wait_for(lambda: server.query(PG).answer, WAIT)
        servers.append(server)
        return server
    servers: list[Kdns] = []
    yield start
    for s in servers:
        s.stop()


def test_a_headless_answer_rotates_through_the_packet_cache(headless):
    server = headless()
    h, m = hits(server)
    # Round robin: each of the 3 addresses comes first exactly 10 times in 30 answers, all of
    # them packet-cache hits (the fixture's wait asked first).
    assert first_addresses(server, PG, 30) == {"10.244.1.5": 10, "10.244.2.5": 10, "10.244.3.5": 10}
    h2, m2 = hits(server)
    assert (h2 - h, m2 - m) == (30, 0)
    # Over TCP too (not cached: the records themselves are rotated).
    assert first_addresses(server, PG, 30, tcp=True) == {"10.244.1.5": 10, "10.244.2.5": 10,
                                                         "10.244.3.5": 10}


def test_no_loadbalance_keeps_endpointslice_order(headless):
    server = headless("--no-loadbalance")
    assert first_addresses(server, PG, 12) == {"10.244.1.5": 12}


def test_a_full_cache_admits_a_name_on_its_second_miss_and_keeps_its_hot_answers():
    """The doorkeeper (kdns.packetcache): once the cache is full, a name asked once is answered
    but not cached, so it evicts nothing; asked again, it is cached and then hit."""
    server = Kdns("--http", "127.0.0.1:0", "--reload", "0", "--cache-size", "4")
    server.http = int(re.search(r"http on 127\.0\.0\.1:(\d+)", server.log()).group(1))
    try:
        hot = [f"{n}.default.svc.cluster.local." for n in ("webapp", "nginx", "myapp", "mysql")]
        for name in hot:
            server.query(name)
        assert metrics(server)["kdns_cache_entries"] == 4               # full
        h, m = hits(server)
        once = [f"nope-{i}.default.svc.cluster.local." for i in range(20)]
        for name in once:                                               # asked once each
            assert server.query(name).rcode() == dns.rcode.NXDOMAIN
        assert hits(server) == (h, m + 20)
        for name in hot:                                                # none was evicted
            assert server.query(name).answer
        assert hits(server) == (h + 4, m + 20)
        cold = "kubernetes.default.svc.cluster.local."
        first = text(server.query(cold))
        assert hits(server) == (h + 4, m + 21)                          # not admitted
        assert text(server.query(cold)) == first
        assert hits(server) == (h + 4, m + 22)                          # second miss: admitted
        assert text(server.query(cold)) == first
        assert hits(server) == (h + 5, m + 22)                          # and hit
        assert metrics(server)["kdns_cache_entries"] <= 4
    finally:
        server.stop()


def test_a_dual_stack_headless_aaaa_answer_rotates_through_the_packet_cache(api, tmp_path):
    """The AAAA RRset of a dual-stack headless Service (its IPv6 EndpointSlice) rotates as the
    A one does: round robin, from the packet cache, each address first equally often."""
    api.create(service("prod", "pg", "None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    api.create(endpointslice("prod", "pg-a", "pg", ["10.244.1.5", "10.244.2.5", "10.244.3.5"]))
    v6 = ["fd00:10:244:1::5", "fd00:10:244:2::5", "fd00:10:244:3::5"]
    api.create(endpointslice("prod", "pg-v6", "pg", v6, address_type="IPv6"))
    server = Kdns("--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig"), "--api-timeout", "1",
                  "--http", "127.0.0.1:0")
    try:
        server.http = int(re.search(r"http on 127\.0\.0\.1:(\d+)", server.log()).group(1))
        assert wait_for(lambda: len(server.query(PG, "AAAA").answer) == 1, WAIT), server.log()
        h, m = hits(server)
        firsts: dict[str, int] = {}
        for _ in range(30):
            resp = server.query(PG, "AAAA")
            ips = [rd.address for rrset in resp.answer for rd in rrset]
            assert sorted(ips) == v6 and resp.rcode() == dns.rcode.NOERROR
            firsts[ips[0]] = firsts.get(ips[0], 0) + 1
        assert firsts == {ip: 10 for ip in v6}
        h2, m2 = hits(server)
        assert (h2 - h, m2 - m) == (30, 0)
    finally:
        server.stop()
