"""`kdns serve --forward ZONE=HOST...` (stub domains), `--forward-except` and
`--forward-inside-cluster-zone`: a real kdns, real upstream stubs on loopback (tests/dnsstub.py),
dnspython (and dig) as the client. Every zone's upstreams get what the default upstreams have:
their own cache, health and failover, policy, limits, serve-stale, --allow, the loop guard and
per-upstream metrics."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import urllib.request

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from dnsstub import Stub, closed_port
from kdnsproc import DATA, KdnsProcess, assert_loop_is_fatal, lines

CLUSTER = str(DATA / "cluster.yaml")
QR_RD_RA = "QR RD RA"


def flags(r: dns.message.Message) -> str:
    return dns.flags.to_text(r.flags)


def asked(stub: Stub) -> int:
    """Queries the stub saw, less kdns's loop probes (HINFO, sent to every upstream while kdns
    starts, so they may land in the middle of a test)."""
    with stub._lock:
        return sum(1 for _, _, qtype in stub.seen if qtype != "HINFO")


def soa(zone: str) -> str:
    return f"{zone}. 30 IN SOA ns.{zone}. hostmaster.{zone}. 1 7200 1800 86400 30"


@pytest.fixture(scope="module")
def stubs():
    """The default upstream, example.org's and deep.example.org's, each with its own records."""
    made = {
        "default": Stub(["www.example.com. 300 IN A 192.0.2.53",
                         "app.deep.example.org. 300 IN A 192.0.2.1"]),      # never asked for it
        "org": Stub(["x.example.org. 300 IN A 198.51.100.1",
                     "notdeep.example.org. 300 IN A 198.51.100.2",
                     "app.deep.example.org. 300 IN A 198.51.100.3"], soa=soa("example.org")),
        "deep": Stub(["app.deep.example.org. 300 IN A 203.0.113.1",
                      "deep.example.org. 300 IN A 203.0.113.2",
                      "cached.deep.example.org. 300 IN A 203.0.113.3",
                      "tcp.deep.example.org. 300 IN A 203.0.113.4"], soa=soa("deep.example.org")),
    }
    yield made
    for s in made.values():
        s.close()


@pytest.fixture(scope="module")
def kdns(stubs):
    k = KdnsProcess("--manifests", CLUSTER, "--reload", "0", "--http", "127.0.0.1:0",
                    "--upstream", f"127.0.0.1:{stubs['default'].port}",
                    "--forward", f"example.org=127.0.0.1:{stubs['org'].port}",
                    "--forward", f"Deep.Example.Org.=127.0.0.1:{stubs['deep'].port}")
    yield k
    k.stop()


def ask(k: KdnsProcess, name: str, rdtype: str = "A", source: str = "127.0.0.1",
        tcp: bool = False, timeout: float = 5.0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, k.host, port=k.port, timeout=timeout, source=source)
    return dns.query.udp(q, k.host, port=k.port, timeout=timeout, source=source)


def metrics(k: KdnsProcess) -> str:
    port = int(re.search(r"http on 127\.0\.0\.1:(\d+)", k.log()).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def sample(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def forwarded(r: dns.message.Message, answer: list[str], rcode=dns.rcode.NOERROR,
              authority: list[str] = ()) -> None:
    """A relayed upstream answer: the upstream's rcode and sections, AA cleared, RA set."""
    assert (r.rcode(), flags(r), lines(r.answer), lines(r.authority), lines(r.additional)) == (
        rcode, QR_RD_RA, answer, list(authority), [])


def test_the_longest_matching_zone_wins(kdns, stubs):
    before = {k: asked(s) for k, s in stubs.items()}
    forwarded(ask(kdns, "app.deep.example.org."), ["app.deep.example.org. 300 IN A 203.0.113.1"])
    forwarded(ask(kdns, "deep.example.org."), ["deep.example.org. 300 IN A 203.0.113.2"])
    forwarded(ask(kdns, "x.example.org."), ["x.example.org. 300 IN A 198.51.100.1"])
    # a label boundary, not a string suffix: notdeep.example.org is example.org's
    forwarded(ask(kdns, "notdeep.example.org."), ["notdeep.example.org. 300 IN A 198.51.100.2"])
    forwarded(ask(kdns, "nope.example.org."), [], dns.rcode.NXDOMAIN,
              ["example.org. 30 IN SOA ns.example.org. hostmaster.example.org. 1 7200 1800 86400 30"])
    assert asked(stubs["deep"]) - before["deep"] == 2
    assert asked(stubs["org"]) - before["org"] == 3
    assert asked(stubs["default"]) == before["default"]


def test_every_other_name_goes_to_the_default_upstreams(kdns, stubs):
    before = stubs["default"].count(name="www.example.com")
    forwarded(ask(kdns, "www.example.com."), ["www.example.com. 300 IN A 192.0.2.53"])
    assert stubs["default"].count(name="www.example.com") == before + 1
    # cluster names never reach any upstream
    counts = [asked(s) for s in stubs.values()]
    r = ask(kdns, "web.prod.svc.cluster.local.")
    assert lines(r.answer) == ["web.prod.svc.cluster.local. 5 IN A 10.96.10.1"]
    assert r.flags & dns.flags.AA
    assert [asked(s) for s in stubs.values()] == counts


def test_each_zone_has_its_own_cache(kdns, stubs):
    first = ask(kdns, "cached.deep.example.org.")
    forwarded(first, ["cached.deep.example.org. 300 IN A 203.0.113.3"])
    for _ in range(3):
        again = ask(kdns, "cached.deep.example.org.")
        assert lines(again.answer)[0].endswith(" IN A 203.0.113.3")
        assert again.answer[0].ttl <= 300 and flags(again) == QR_RD_RA
    assert stubs["deep"].count(name="cached.deep.example.org") == 1     # the rest from the cache


def test_a_stub_zone_over_tcp_goes_to_its_upstream_over_tcp(kdns, stubs):
    forwarded(ask(kdns, "tcp.deep.example.org.", tcp=True), ["tcp.deep.example.org. 300 IN A 203.0.113.4"])
    assert stubs["deep"].count("tcp", "tcp.deep.example.org") == 1


def test_metrics_keep_one_to_label_per_upstream(kdns, stubs):
    ask(kdns, "x.example.org.")                 # cached: no new request
    text = metrics(kdns)
    for key in ("default", "org", "deep"):
        to = f'to="127.0.0.1:{stubs[key].port}"'
        assert sample(text, f"kdns_forward_requests_total{{{to}}}") >= 1
        assert sample(text, f"kdns_forward_upstream_healthy{{{to}}}") == 1
        assert sample(text, f"kdns_forward_inflight{{{to}}}") == 0
    assert sample(text, f'kdns_forward_responses_total{{rcode="NXDOMAIN",to="127.0.0.1:{stubs["org"].port}"}}') >= 1


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) not installed")
def test_dig_sees_the_stub_domains_answer(kdns):
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(kdns.port), "+time=3", "+tries=1",
                          "app.deep.example.org", "A"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert "status: NOERROR" in out.stdout and "flags: qr rd ra;" in out.stdout
    assert re.search(r"^app\.deep\.example\.org\.\s+\d+\s+IN\s+A\s+203\.0\.113\.1$", out.stdout, re.M)


def test_an_upstream_shared_by_two_zones_is_one_series():
    shared = Stub(["www.example.com. 300 IN A 192.0.2.53", "a.shared.test. 300 IN A 192.0.2.7"])
    k = KdnsProcess("--manifests", CLUSTER, "--reload", "0", "--http", "127.0.0.1:0",
                    "--upstream", f"127.0.0.1:{shared.port}",
                    "--forward", f"shared.test=127.0.0.1:{shared.port}")
    try:
        forwarded(ask(k, "www.example.com."), ["www.example.com. 300 IN A 192.0.2.53"])
        forwarded(ask(k, "a.shared.test."), ["a.shared.test. 300 IN A 192.0.2.7"])
        text = metrics(k)
        to = f'to="127.0.0.1:{shared.port}"'
        assert sample(text, f"kdns_forward_requests_total{{{to}}}") == 2
        assert sample(text, f"kdns_forward_upstream_healthy{{{to}}}") == 1
        assert sample(text, f"kdns_forward_inflight{{{to}}}") == 0
        assert text.count(f"kdns_forward_requests_total{{{to}}}") == 1
    finally:
        k.stop()
        shared.close()


def test_a_dead_stub_upstream_fails_over_to_the_next_and_is_marked_down():
    live = Stub(["a.fail.test. 300 IN A 192.0.2.10", "b.fail.test. 300 IN A 192.0.2.11"])
    dead = closed_port()
    k = KdnsProcess("--manifests", CLUSTER, "--reload", "0", "--http", "127.0.0.1:0",
                    "--forward", f"fail.test=127.0.0.1:{dead[1]},127.0.0.1:{live.port}")
    try:
        forwarded(ask(k, "a.fail.test."), ["a.fail.test. 300 IN A 192.0.2.10"])
        text = metrics(k)
        assert sample(text, f'kdns_forward_upstream_healthy{{to="127.0.0.1:{dead[1]}"}}') == 0
        assert sample(text, f'kdns_forward_upstream_healthy{{to="127.0.0.1:{live.port}"}}') == 1
        asked_dead = sample(text, f'kdns_forward_requests_total{{to="127.0.0.1:{dead[1]}"}}')
        assert asked_dead == 1
        # marked down: the next query goes to the live upstream first
        forwarded(ask(k, "b.fail.test."), ["b.fail.test. 300 IN A 192.0.2.11"])
        text = metrics(k)
        assert sample(text, f'kdns_forward_requests_total{{to="127.0.0.1:{dead[1]}"}}') == asked_dead
        # no default upstream at all: other names are REFUSED, the stub domain still works
        r = ask(k, "www.example.com.")
        assert (r.rcode(), r.answer, r.authority) == (dns.rcode.REFUSED, [], [])
    finally:
        k.stop()
        live.close()


def test_round_robin_policy_applies_to_a_stub_zones_upstreams():
    one, two = Stub(["a.rr.test. 300 IN A 192.0.2.1"]), Stub(["b.rr.test. 300 IN A 192.0.2.2"])
    k = KdnsProcess("--manifests", CLUSTER, "--reload", "0", "--policy", "round_robin",
                    "--forward", f"rr.test=127.0.0.1:{one.port},127.0.0.1:{two.port}")
    try:
        ask(k, "a.rr.test.")
        ask(k, "b.rr.test.")
        assert (one.count(name="a.rr.test"), two.count(name="b.rr.test")) == (1, 1)
        assert (one.count(name="b.rr.test"), two.count(name="a.rr.test")) == (0, 0)
    finally:
        k.stop()
        one.close()
        two.close()


def test_max_concurrent_and_serve_stale_apply_per_zone():
    held = Stub(["short.held.test. 1 IN A 192.0.2.20", "other.held.test. 300 IN A 192.0.2.21"])
    default = Stub(["www.example.com. 300 IN A 192.0.2.53"])
    k = KdnsProcess("--manifests", CLUSTER, "--reload", "0", "--max-concurrent", "1",
                    "--serve-stale", "1h", "--upstream", f"127.0.0.1:{default.port}",
                    "--forward", f"held.test=127.0.0.1:{held.port}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        forwarded(ask(k, "short.held.test."), ["short.held.test. 1 IN A 192.0.2.20"])
        held.hold.clear()                          # the stub's answers wait
        sock.settimeout(10)
        sock.sendto(dns.message.make_query("other.held.test.", "A").to_wire(), (k.host, k.port))
        for _ in range(500):
            if held.count(name="other.held.test"):
                break
            time.sleep(0.01)
        # its one slot is taken: the next held.test miss is SERVFAIL at once ...
        r = ask(k, "third.held.test.")
        assert (r.rcode(), flags(r), r.answer) == (dns.rcode.SERVFAIL, QR_RD_RA, [])
        assert held.count(name="third.held.test") == 0
        # ... while the default upstreams' slots are their own
        forwarded(ask(k, "www.example.com."), ["www.example.com. 300 IN A 192.0.2.53"])
        held.hold.set()
        assert lines(dns.message.from_wire(sock.recv(65535)).answer) == [
            "other.held.test. 300 IN A 192.0.2.21"]
        held.mode = "drop"                         # the stub goes silent: serve-stale
        r = None
        for _ in range(100):                       # bounded: until the 1 s TTL has run out
            r = ask(k, "short.held.test.", timeout=8)
            if r.answer and r.answer[0].ttl == 30:
                break
            time.sleep(0.1)
        forwarded(r, ["short.held.test. 30 IN A 192.0.2.20"])
    finally:
        sock.close()
        k.stop()
        held.hold.set()
        held.close()
        default.close()


def test_allow_applies_to_stub_zones():
    stub = Stub(["a.acl.test. 300 IN A 192.0.2.30"])
    k = KdnsProcess("--manifests", CLUSTER, "--reload", "0", "--allow", "127.0.0.1/32",
                    "--forward", f"acl.test=127.0.0.1:{stub.port}")
    try:
        r = ask(k, "a.acl.test.", source="127.0.0.2")
        # RA=0: this client may not recurse (as for the default upstreams' names)
        assert (r.rcode(), flags(r), r.answer, r.authority) == (dns.rcode.REFUSED, "QR RD", [], [])
        r = ask(k, "a.acl.test.", source="127.0.0.2", tcp=True)
        assert (r.rcode(), r.answer) == (dns.rcode.REFUSED, [])
        assert stub.count(name="a.acl.test") == 0
        # cluster names stay open to everyone
        assert lines(ask(k, "web.prod.svc.cluster.local.", source="127.0.0.2").answer) == [
            "web.prod.svc.cluster.local. 5 IN A 10.96.10.1"]
        forwarded(ask(k, "a.acl.test."), ["a.acl.test. 300 IN A 192.0.2.30"])
        r = ask(k, "a.acl.test.", source="127.0.0.2")      # cached now: still refused
        assert (r.rcode(), r.answer) == (dns.rcode.REFUSED, [])
        assert stub.count(name="a.acl.test") == 1
    finally:
        k.stop()
        stub.close()


def test_forward_except_is_servfail_unless_a_stub_zone_takes_the_name():
    default = Stub(["www.example.com. 300 IN A 192.0.2.53", "x.blocked.test. 300 IN A 192.0.2.40"])
    ok = Stub(["a.ok.blocked.test. 300 IN A 192.0.2.41"])
    k = KdnsProcess("--manifests", CLUSTER, "--reload", "0", "--upstream", f"127.0.0.1:{default.port}",
                    "--forward-except", "blocked.test",
                    "--forward", f"ok.blocked.test=127.0.0.1:{ok.port}")
    try:
        for tcp in (False, True):
            r = ask(k, "x.blocked.test.", tcp=tcp)
            assert (r.rcode(), flags(r), r.answer, r.authority, r.additional) == (
                dns.rcode.SERVFAIL, QR_RD_RA, [], [], [])
        assert ask(k, "blocked.test.", "MX").rcode() == dns.rcode.SERVFAIL
        assert default.count(name="x.blocked.test") == 0
        forwarded(ask(k, "a.ok.blocked.test."), ["a.ok.blocked.test. 300 IN A 192.0.2.41"])
        forwarded(ask(k, "www.example.com."), ["www.example.com. 300 IN A 192.0.2.53"])
        assert "not forwarding blocked.test to the default upstreams (SERVFAIL)" in k.log()
    finally:
        k.stop()
        default.close()
        ok.close()


def test_a_stub_zone_inside_a_served_zone_needs_the_explicit_flag():
    for zone, why in (("prod.svc.cluster.local", "is inside cluster.local"),
                      ("cluster.local", "is cluster.local"),
                      ("10.in-addr.arpa", "is inside in-addr.arpa"),
                      ("corp.internal", "is inside internal")):
        extra = ["--zone", "internal"] if zone == "corp.internal" else []
        k = KdnsProcess("--manifests", CLUSTER, *extra, "--forward", f"{zone}=127.0.0.1:9",
                        wait=False)
        assert k.wait_exit() == 2
        assert k.log().endswith(
            f"kdns: --forward {zone}=127.0.0.1:9: {zone} {why}, a zone kdns serves from the "
            "cluster's data; forwarding it would hide those records. To send its names to the "
            "stub instead, say so with --forward-inside-cluster-zone\n"), k.log()


def test_with_the_flag_a_stub_zone_inside_the_cluster_zone_takes_its_names():
    stub = Stub(["web.prod.svc.cluster.local. 77 IN A 192.0.2.77"], soa=soa("prod.svc.cluster.local"))
    k = KdnsProcess("--manifests", CLUSTER, "--reload", "0", "--forward-inside-cluster-zone",
                    "--forward", f"prod.svc.cluster.local=127.0.0.1:{stub.port}")
    try:
        for tcp in (False, True):
            forwarded(ask(k, "web.prod.svc.cluster.local.", tcp=tcp),
                      ["web.prod.svc.cluster.local. 77 IN A 192.0.2.77"])
        forwarded(ask(k, "api.prod.svc.cluster.local."), [], dns.rcode.NXDOMAIN,
                  [soa("prod.svc.cluster.local")])
        # the rest of the cluster zone is still the cluster's, authoritative
        r = ask(k, "kube-dns.kube-system.svc.cluster.local.")
        assert lines(r.answer) == ["kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10"]
        assert r.flags & dns.flags.AA
        assert "forwarding prod.svc.cluster.local to 127.0.0.1:%d (instead of the cluster data)" % (
            stub.port) in k.log()
    finally:
        k.stop()
        stub.close()


@pytest.mark.parametrize("value, message", [
    (".=127.0.0.1", "--forward .=127.0.0.1: the root zone is every name's: that is --upstream"),
    ("example.org", "--forward 'example.org': expected ZONE=HOST[:PORT][,HOST[:PORT]...]"),
    ("example.org=", "--forward 'example.org=': expected ZONE=HOST[:PORT][,HOST[:PORT]...]"),
    ("example.org=consul", "--forward example.org=consul: 'consul': 'consul' is not an IP address"),
    ("exa..mple=127.0.0.1", "--forward 'exa..mple': not a DNS name"),
])
def test_bad_forward_values_are_clear_errors(value, message):
    k = KdnsProcess("--manifests", CLUSTER, "--forward", value, wait=False)
    assert k.wait_exit() == 2
    assert k.log().endswith(f"kdns: {message}\n"), k.log()


def test_the_same_zone_twice_is_an_error():
    k = KdnsProcess("--manifests", CLUSTER, "--forward", "a.test=127.0.0.1:1",
                    "--forward", "A.test.=127.0.0.1:2", wait=False)
    assert k.wait_exit() == 2
    assert k.log().endswith("kdns: --forward A.test.=127.0.0.1:2: zone a.test is already forwarded "
                            "(--forward a.test=127.0.0.1:1); give one --forward per zone with every "
                            "address\n"), k.log()


def test_a_stub_zone_pointing_at_kdns_itself_is_refused():
    for _ in range(5):     # a free port, taken by some other process before kdns binds it: again
        host, port = closed_port()
        k = KdnsProcess("--manifests", CLUSTER, "--forward", f"loop.test={host}:{port}",
                        listen=f"{host}:{port}", wait=False)
        code = k.wait_exit()
        if not (code == 1 and "cannot listen" in k.log()):
            break
    assert code == 2, k.log()
    assert k.log().endswith(
        f"kdns: --forward loop.test: every upstream (127.0.0.1:{port}) is kdns's own listen "
        "address, which would be a forwarding loop; give a real resolver with --forward "
        "loop.test=HOST[:PORT]\n"), k.log()


def test_a_forwarding_loop_through_a_stub_zone_is_detected_and_fatal():
    relay = Stub([])
    k = KdnsProcess("--manifests", CLUSTER, "--reload", "0",
                    "--forward", f"relay.test=127.0.0.1:{relay.port}", wait=False)

    try:
        assert_loop_is_fatal(k, relay)
    finally:
        k.stop()
        relay.close()


def test_an_externalname_target_and_a_reverse_fallthrough_are_routed_by_zone():
    default = Stub([])                                   # NXDOMAIN for everything
    stub = Stub(["www.example.com. 300 IN A 192.0.2.53",
                 "9.9.244.10.in-addr.arpa. 300 IN PTR node-9.example.net."])
    k = KdnsProcess("--manifests", CLUSTER, "--reload", "0", "--upstream", f"127.0.0.1:{default.port}",
                    "--forward", f"example.com=127.0.0.1:{stub.port}",
                    "--forward", f"arpa=127.0.0.1:{stub.port}")     # above the reverse zones: allowed
    try:
        r = ask(k, "ext.prod.svc.cluster.local.")
        assert (r.rcode(), lines(r.answer)) == (dns.rcode.NOERROR, [
            "ext.prod.svc.cluster.local. 5 IN CNAME www.example.com.",
            "www.example.com. 300 IN A 192.0.2.53"])
        assert flags(r) == "QR AA RD"           # the chase is kdns's own answer
        r = ask(k, "9.9.244.10.in-addr.arpa.", "PTR")           # not a cluster IP: falls through
        forwarded(r, ["9.9.244.10.in-addr.arpa. 300 IN PTR node-9.example.net."])
        # a cluster IP's PTR is still kdns's own
        r = ask(k, "1.10.96.10.in-addr.arpa.", "PTR")
        assert lines(r.answer) == ["1.10.96.10.in-addr.arpa. 5 IN PTR web.prod.svc.cluster.local."]
        assert default.count(name="www.example.com") == 0
        assert default.count(name="9.9.244.10.in-addr.arpa") == 0
        assert (stub.count(name="www.example.com"), stub.count(name="9.9.244.10.in-addr.arpa")) == (1, 1)
    finally:
        k.stop()
        default.close()
        stub.close()
