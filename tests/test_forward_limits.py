"""`kdns serve` forwarding that no client can break, and that serves only who it should: a flood
of a blackholed zone from one client, --allow, serve-stale. A real kdns process, real upstream
stubs (tests/dnsstub.py) and real clients bound to their own loopback addresses.
"""

from __future__ import annotations

import socket
import threading
import time

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from dnsstub import Stub
from kdns.forward.acl import Allow
from kdnsproc import DATA, UPSTREAM as VECTORS_UPSTREAM, KdnsProcess, lines

VICTIM_NAMES = [f"v{i}.example.com. 300 IN A 192.0.2.{i % 250 + 1}" for i in range(200)]
UPSTREAM = [*VECTORS_UPSTREAM, "short.example.com. 1 IN A 192.0.2.2", *VICTIM_NAMES]
CASES = {c["id"]: c for c in yaml.safe_load((DATA / "cases.yaml").read_text())}


def ask(k: KdnsProcess, name: str, rdtype: str = "A", source: str = "127.0.0.1",
        tcp: bool = False, timeout: float = 3.0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, k.host, port=k.port, timeout=timeout, source=source)
    return dns.query.udp(q, k.host, port=k.port, timeout=timeout, source=source)


def blackholed(stub: Stub, suffix: str) -> None:
    """The stub never answers names under ``suffix`` (a dead zone), and answers the rest."""
    answer = stub.reply

    def reply(data: bytes, transport: str):
        name = str(dns.message.from_wire(data).question[0].name).lower()
        if name.endswith(suffix):
            return None
        return answer(data, transport)
    stub.reply = reply


class Flood:
    """A client on 127.0.0.2 sending unique names under a blackholed zone, paced in bursts,
    bounded in count; it reads (and counts the rcodes of) what comes back."""

    def __init__(self, port: int, limit: int = 40000, burst: int = 40):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.2", 0))
        self.sock.settimeout(0.2)
        self.port, self.limit, self.burst = port, limit, burst
        self.sent = 0
        self.rcodes: dict[int, int] = {}
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._read, daemon=True)]
        for t in self._threads:
            t.start()

    def _send(self) -> None:
        while not self.stop.is_set() and self.sent < self.limit:
            for _ in range(self.burst):
                q = dns.message.make_query(f"r{self.sent}.blackhole.example.com.", "A")
                self.sock.sendto(q.to_wire(), ("127.0.0.1", self.port))
                self.sent += 1
            time.sleep(0.01)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                if self.stop.is_set():
                    return
                continue
            except OSError:
                return
            rcode = data[3] & 0x0F
            self.rcodes[rcode] = self.rcodes.get(rcode, 0) + 1

    def end(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(10)
        self.sock.close()


def test_a_flood_of_a_blackholed_zone_does_not_take_forwarding_from_other_clients():
    upstream = Stub(UPSTREAM)
    blackholed(upstream, "blackhole.example.com.")
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--upstream",
                    f"127.0.0.1:{upstream.port}", "--reload", "0")
    flood = Flood(k.port)
    try:
        for _ in range(500):                      # bounded: the flood is under way
            if flood.sent >= 400:
                break
            time.sleep(0.01)
        during = []
        for i in range(60):                       # each a cache miss: it needs the upstream
            r = ask(k, f"v{i}.example.com.")
            during.append(lines(r.answer))
        assert during == [[VICTIM_NAMES[i]] for i in range(60)]
        # the flooding client was held to its share: SERVFAIL at once beyond it
        assert flood.rcodes.get(dns.rcode.SERVFAIL, 0) >= 1
        sent_during = flood.sent
        flood.end()
        assert sent_during > 60
        after = [lines(ask(k, f"v{i}.example.com.").answer) for i in range(60, 120)]
        assert after == [[VICTIM_NAMES[i]] for i in range(60, 120)]
        # cluster names were never in question
        assert lines(ask(k, "web.prod.svc.cluster.local.").answer) == [
            "web.prod.svc.cluster.local. 5 IN A 10.96.10.1"]
        assert "Traceback" not in k.log()
    finally:
        flood.end()
        k.stop()
        upstream.close()


@pytest.fixture(scope="module")
def upstream():
    s = Stub(UPSTREAM)
    yield s
    s.close()


@pytest.fixture(scope="module")
def only_local(upstream):
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--pod-ip", "10.244.0.10",
                    "--upstream", f"127.0.0.1:{upstream.port}", "--reload", "0",
                    "--allow", "127.0.0.1/32")
    yield k
    k.stop()


def test_allow_refuses_forwarded_names_to_others_and_keeps_cluster_names_open(only_local, upstream):
    k = only_local
    before = upstream.count(name="www.example.com")
    r = ask(k, "www.example.com.", source="127.0.0.3")
    assert r.rcode() == dns.rcode.REFUSED and not r.answer
    assert upstream.count(name="www.example.com") == before
    # an allowed client fills the forwarding cache (and the UDP loop's memo of it) ...
    for _ in range(3):
        r = ask(k, "www.example.com.")
        assert [line.split(" ", 2)[2] for line in lines(r.answer)] == ["IN A 192.0.2.53"]
        assert 0 < r.answer[0].ttl <= 300
    # ... which the refused client still never gets, over UDP or TCP
    for tcp in (False, True):
        r = ask(k, "www.example.com.", source="127.0.0.3", tcp=tcp)
        assert r.rcode() == dns.rcode.REFUSED and not r.answer
    for tcp in (False, True):
        r = ask(k, "web.prod.svc.cluster.local.", source="127.0.0.3", tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR
        assert lines(r.answer) == ["web.prod.svc.cluster.local. 5 IN A 10.96.10.1"]


def test_allow_gives_others_the_in_zone_answer_without_recursion(only_local, upstream):
    k = only_local
    # ExternalName: the CNAME alone; the allowed client gets the chase too
    r = ask(k, "ext.prod.svc.cluster.local.", source="127.0.0.3")
    assert r.rcode() == dns.rcode.NOERROR
    assert lines(r.answer) == ["ext.prod.svc.cluster.local. 5 IN CNAME www.example.com."]
    case = CASES["externalname-a-chased"]
    r = ask(k, case["name"], case["qtype"])
    assert lines(r.answer)[0] == case["answer"][0] and len(r.answer) == 2
    r = ask(k, "ext.prod.svc.cluster.local.", source="127.0.0.3")
    assert lines(r.answer) == ["ext.prod.svc.cluster.local. 5 IN CNAME www.example.com."]
    # a reverse miss: kdns's own NXDOMAIN, not the upstream's fallthrough answer
    assert ask(k, "9.9.244.10.in-addr.arpa.", "PTR", source="127.0.0.3").rcode() == dns.rcode.NXDOMAIN
    r = ask(k, "9.9.244.10.in-addr.arpa.", "PTR")
    assert lines(r.answer)[0].startswith("9.9.244.10.in-addr.arpa. ") and \
        lines(r.answer)[0].endswith(" IN PTR node-9.example.net.")
    assert ask(k, "9.9.244.10.in-addr.arpa.", "PTR", source="127.0.0.3").rcode() == dns.rcode.NXDOMAIN


def test_default_allow_is_loopback_and_private_ranges():
    allow = Allow()
    for ok in ("127.0.0.3", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
               "100.64.0.1", "::1", "fd00::1", "fe80::1%eth0", "::ffff:10.0.0.1"):
        assert allow.allows((ok, 53)), ok
    for no in ("8.8.8.8", "172.32.0.1", "192.0.2.1", "100.128.0.1", "2001:db8::1", "::ffff:8.8.8.8"):
        assert not allow.allows((no, 53)), no


def test_default_allow_lets_any_loopback_client_recurse(upstream):
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--upstream",
                    f"127.0.0.1:{upstream.port}", "--reload", "0")
    try:
        assert lines(ask(k, "www.example.com.", source="127.0.0.3").answer) == [
            "www.example.com. 300 IN A 192.0.2.53"]
    finally:
        k.stop()


def test_bad_allow_and_serve_stale_values_are_clear_errors():
    for args, message in ((["--allow", "10.0.0.0/33"], "--allow '10.0.0.0/33': not a CIDR"),
                          (["--serve-stale", "forever"], "'forever': a duration like"),
                          (["--max-client-forwards", "0"], "'0': must be 1-100000"),
                          (["--policy", "fastest"], "argument --policy: invalid choice: 'fastest'")):
        k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), *args, wait=False)
        assert k.wait_exit() == 2
        assert message in k.log() and "Traceback" not in k.log()


def test_serve_stale_answers_ttl_30_when_every_upstream_is_down():
    up = Stub(UPSTREAM)
    k = KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--upstream",
                    f"127.0.0.1:{up.port}", "--reload", "0", "--serve-stale", "1h")
    try:
        assert lines(ask(k, "short.example.com.").answer) == ["short.example.com. 1 IN A 192.0.2.2"]
        up.close()                                 # its port is closed: every exchange fails
        r = None
        for _ in range(100):                       # bounded: until the 1 s TTL has run out
            r = ask(k, "short.example.com.")
            if r.answer and r.answer[0].ttl == 30:
                break
            assert lines(r.answer)[0].endswith(" IN A 192.0.2.2") and r.answer[0].ttl <= 1
            time.sleep(0.1)
        assert r.rcode() == dns.rcode.NOERROR
        assert lines(r.answer) == ["short.example.com. 30 IN A 192.0.2.2"]
        # never cached: nothing to serve stale
        assert ask(k, "v1.example.com.").rcode() == dns.rcode.SERVFAIL
    finally:
        k.stop()
