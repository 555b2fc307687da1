"""`kdns serve` with upstreams: the vectors that need one, fallthrough, chases, loops, refusals.

A real kdns process on 127.0.0.1 and a real upstream (tests/dnsstub.py) on 127.0.0.1; the client
is dnspython.
"""

from __future__ import annotations

import socket
import time

import dns.flags
import dns.rcode
import pytest
import yaml

from dnsstub import Stub, closed_port
from kdnsproc import DATA, UPSTREAM, KdnsProcess, assert_loop_is_fatal, lines

CASES = {c["id"]: c for c in yaml.safe_load((DATA / "cases.yaml").read_text())}


@pytest.fixture(scope="module")
def upstream():
    s = Stub(UPSTREAM)
    yield s
    s.close()


@pytest.fixture(scope="module")
def kdns(upstream):
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--pod-ip", "10.244.0.10",
                    "--ttl", "5", "--upstream", f"127.0.0.1:{upstream.port}", "--reload", "0")
    yield k
    k.stop()


@pytest.mark.parametrize("case_id", ["out-of-zone-forwarded", "externalname-a-chased"])
def test_vectors_that_need_an_upstream(kdns, case_id):
    case = CASES[case_id]
    r = kdns.query(case["name"], case["qtype"])
    assert dns.rcode.to_text(r.rcode()) == case["rcode"]
    got = lines(r.answer)
    assert got == case["answer"]          # in order: the CNAME precedes its target's records
    assert lines(r.authority) == case["authority"]
    # forwarded answers carry the upstream's flags but AA=0; the chase is our own answer, AA=1
    assert bool(r.flags & dns.flags.AA) == (case_id == "externalname-a-chased")


def test_forwarded_over_tcp_goes_upstream_over_tcp(kdns, upstream):
    before = upstream.count("tcp", "www.example.com")
    r = kdns.query("www.example.com.", "AAAA", tcp=True)
    assert lines(r.answer) == ["www.example.com. 300 IN AAAA 2001:db8::53"]
    assert upstream.count("tcp", "www.example.com") == before + 1


def test_forwarded_nxdomain_is_relayed(kdns):
    r = kdns.query("nope.example.org.", "A")
    assert r.rcode() == dns.rcode.NXDOMAIN and not r.flags & dns.flags.AA


def test_cluster_names_never_reach_the_upstream(kdns, upstream):
    before = upstream.count()
    for name in ("web.prod.svc.cluster.local.", "nope.prod.svc.cluster.local.",
                 "www.example.com.prod.svc.cluster.local.", "1.0.96.10.in-addr.arpa."):
        kdns.query(name, "A")
    assert upstream.count() == before


def test_reverse_miss_falls_through_to_the_upstream(kdns, upstream):
    # 10.244.9.9 is neither a cluster IP nor an endpoint (vector ptr-unknown-ip); the upstream knows it
    r = kdns.query("9.9.244.10.in-addr.arpa.", "PTR")
    assert lines(r.answer) == ["9.9.244.10.in-addr.arpa. 300 IN PTR node-9.example.net."]
    assert upstream.count(name="9.9.244.10.in-addr.arpa") >= 1
    # a cluster IP is still answered from the snapshot
    r = kdns.query("1.0.96.10.in-addr.arpa.", "PTR")
    assert lines(r.answer) == ["1.0.96.10.in-addr.arpa. 5 IN PTR kubernetes.default.svc.cluster.local."]
    assert r.flags & dns.flags.AA


def test_reverse_miss_unknown_upstream_too_is_nxdomain(kdns):
    r = kdns.query("8.8.244.10.in-addr.arpa.", "PTR")
    assert r.rcode() == dns.rcode.NXDOMAIN


def test_externalname_with_nxdomain_target_is_the_cname_alone():
    empty = Stub([])      # NXDOMAIN for everything, www.example.com included
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--upstream",
                    f"127.0.0.1:{empty.port}", "--reload", "0")
    try:
        r = k.query("ext.prod.svc.cluster.local.", "A")
        assert r.rcode() == dns.rcode.NOERROR
        assert lines(r.answer) == ["ext.prod.svc.cluster.local. 5 IN CNAME www.example.com."]
        assert empty.count(name="www.example.com") == 1
    finally:
        k.stop()
        empty.close()


def test_every_upstream_down_is_servfail():
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--upstream",
                    "127.0.0.1:%d" % closed_port()[1], "--reload", "0")
    try:
        assert k.query("www.example.com.", "A").rcode() == dns.rcode.SERVFAIL
        assert k.query("www.example.com.", "A", tcp=True).rcode() == dns.rcode.SERVFAIL
        # cluster names do not depend on the upstream
        assert lines(k.query("web.prod.svc.cluster.local.").answer) == [
            "web.prod.svc.cluster.local. 5 IN A 10.96.10.1"]
    finally:
        k.stop()


def test_no_upstream_at_all_is_refused(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.com\n")
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--resolv-conf", str(conf),
                    "--reload", "0")
    try:
        assert k.query("www.example.com.", "A").rcode() == dns.rcode.REFUSED
    finally:
        k.stop()


def test_upstreams_from_resolv_conf_file(tmp_path, upstream):
    # resolv.conf has no port syntax; a wildcard-free listen on another port proves we read it
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\n")
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--resolv-conf", str(conf),
                    "--reload", "0")
    try:
        assert "forwarding other names to 127.0.0.1:53" in k.log()
    finally:
        k.stop()


def test_refuses_to_start_when_every_upstream_is_itself():
    host, port = closed_port()
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--upstream", f"{host}:{port}",
                    listen=f"{host}:{port}", wait=False)
    assert k.wait_exit() == 2
    assert f"--upstream: every upstream (127.0.0.1:{port}) is kdns's own listen address" in k.log()
    assert "Traceback" not in k.log()


@pytest.mark.parametrize("allow", [[], ["--allow", "127.0.0.5/32"]], ids=["default-allow", "upstream-not-allowed"])
def test_forwarding_loop_is_detected_and_fatal(allow):
    """The upstream sends everything back to kdns, as a node resolver pointing at kdns would;
    also when the upstream's own address is not one --allow lets recurse."""
    relay = Stub([])
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--upstream",
                    f"127.0.0.1:{relay.port}", "--reload", "0", *allow, wait=False)

    try:
        assert_loop_is_fatal(k, relay)
    finally:
        k.stop()
        relay.close()


def test_fallthrough_answer_never_outlives_the_snapshot(tmp_path, upstream):
    """A reverse name answered by the upstream (fallthrough, cached for 300 s) becomes a cluster
    IP: from the next snapshot on, kdns answers it itself."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n")
    k = KdnsProcess("--manifests", str(cluster), "--upstream", f"127.0.0.1:{upstream.port}",
                    "--reload", "0.1")
    try:
        r = k.query("9.9.244.10.in-addr.arpa.", "PTR")
        assert lines(r.answer) == ["9.9.244.10.in-addr.arpa. 300 IN PTR node-9.example.net."]
        assert lines(k.query("9.9.244.10.in-addr.arpa.", "PTR").answer) == lines(r.answer)
        cluster.write_text(cluster.read_text() + "---\napiVersion: v1\nkind: Service\n"
                           "metadata: {name: node9, namespace: prod}\nspec:\n  type: ClusterIP\n"
                           "  clusterIP: 10.244.9.9\n  ports: [{port: 80}]\n")
        for _ in range(200):
            if k.query("node9.prod.svc.cluster.local.").answer:
                break
            time.sleep(0.05)
        r = k.query("9.9.244.10.in-addr.arpa.", "PTR")
        assert lines(r.answer) == ["9.9.244.10.in-addr.arpa. 5 IN PTR node9.prod.svc.cluster.local."]
        assert r.flags & dns.flags.AA
    finally:
        k.stop()


def test_forwarded_queries_beyond_max_concurrent_get_servfail_at_once():
    """While the upstream holds every answer, at most max_concurrent queries are in flight at it;
    the next one is answered SERVFAIL at once instead of joining an ever-longer queue."""
    import dns.message
    import dns.query

    from kdns import server as server_mod
    from kdns.config import Config
    from kdns.forward import Forwarder
    from kdns.snapshot import Store
    from kdns.sources import manifests

    held = Stub(UPSTREAM)
    held.hold.clear()
    config = Config(listen=(("127.0.0.1", 0),))
    store = Store(config)
    store.reset(manifests.load([DATA / "cluster.yaml"]))
    srv = server_mod.Server(store.holder, config.listen, 100)
    # initial_rto: the held queries are not sent again while they wait
    srv.forwarder = Forwarder([held.addr], 100, timeout=10, deadline=10, own_zones=config.zones,
                              max_concurrent=2, initial_rto=10)
    (addr,) = srv.bind()
    srv.start()
    socks = []
    try:
        for name in ("a.example.org.", "b.example.org."):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(10)
            s.sendto(dns.message.make_query(name, "A").to_wire(), addr)
            socks.append(s)
        for _ in range(500):          # both are with the upstream now
            if held.count() == 2:
                break
            time.sleep(0.01)
        assert held.count() == 2
        r = dns.query.udp(dns.message.make_query("c.example.org.", "A"), addr[0], port=addr[1],
                          timeout=5)
        assert r.rcode() == dns.rcode.SERVFAIL and held.count() == 2
        # cluster names are not held up behind them
        r = dns.query.udp(dns.message.make_query("web.prod.svc.cluster.local.", "A"), addr[0],
                          port=addr[1], timeout=5)
        assert lines(r.answer) == ["web.prod.svc.cluster.local. 5 IN A 10.96.10.1"]
        held.hold.set()
        for s in socks:
            assert dns.message.from_wire(s.recv(65535)).rcode() == dns.rcode.NXDOMAIN
        # the slots are free again
        r = dns.query.udp(dns.message.make_query("www.example.com.", "A"), addr[0], port=addr[1],
                          timeout=5)
        assert lines(r.answer) == ["www.example.com. 300 IN A 192.0.2.53"]
    finally:
        for s in socks:
            s.close()
        srv.close()
        held.hold.set()
        held.close()


def test_cached_forward_ttls_count_down_and_are_never_extended(kdns, upstream):
    """The UDP loop memoises a forwarding-cache reply only while its TTLs stay the same."""
    name = "www.example.com."
    before = len(upstream.seen)
    first = kdns.query(name, "A")
    assert first.answer[0].ttl <= 300
    ttls = [first.answer[0].ttl]
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline and min(ttls) > ttls[0] - 2:
        r = kdns.query(name, "A")
        assert lines(r.answer)[0].endswith("IN A 192.0.2.53")
        ttls.append(r.answer[0].ttl)
        time.sleep(0.05)
    assert ttls == sorted(ttls, reverse=True)           # never goes up
    assert min(ttls) <= ttls[0] - 2                     # and does go down, a second at a time
    assert all(a - b in (0, 1) for a, b in zip(ttls, ttls[1:]))
    # Answered from the cache: at most one upstream question (none when an earlier test asked).
    assert len([s for s in upstream.seen[before:] if s[1] == "www.example.com" and s[2] == "A"]) <= 1
