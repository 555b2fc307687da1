"""The forwarding options a Corefile maps to, against a real kdns and a loopback stub:
--cache-ttl and --cache-denial-ttl (CoreDNS cache's success and denial TTLs) and
--max-concurrent (forward's max_concurrent); the stub-domain flags in `kdns serve --help` (their
behaviour: tests/test_stub_domains.py; --policy: tests/test_forward_reactor.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

import dns.message
import dns.rcode
import pytest

from conftest import DATA, ROOT, Kdns, wait_for
from dnsstub import Stub

CLUSTER = str(DATA / "cluster.yaml")
SOA = "example.com. 600 IN SOA ns.example.com. hostmaster.example.com. 1 7200 1800 86400 900"


@pytest.fixture
def upstream():
    stub = Stub(["www.example.com. 600 IN A 192.0.2.80"], soa=SOA)
    yield stub
    stub.close()


def ttls(resp) -> list[tuple[str, int]]:
    return [(rrset.name.to_text(), rrset.ttl) for rrset in resp.answer + resp.authority]


def test_cache_ttl_caps_success_and_denial(upstream):
    up = f"127.0.0.1:{upstream.port}"
    plain = Kdns("--manifests", CLUSTER, "--upstream", up)
    capped = Kdns("--manifests", CLUSTER, "--upstream", up, "--cache-ttl", "20",
                  "--cache-denial-ttl", "10")
    try:
        assert ttls(plain.query("www.example.com.")) == [("www.example.com.", 600)]
        assert ttls(plain.query("nosuch.example.com.")) == [("example.com.", 600)]
        assert ttls(capped.query("www.example.com.")) == [("www.example.com.", 20)]
        resp = capped.query("nosuch.example.com.")
        assert dns.rcode.to_text(resp.rcode()) == "NXDOMAIN"
        assert ttls(resp) == [("example.com.", 10)]
    finally:
        plain.stop()
        capped.stop()


def test_max_concurrent_sheds_load(upstream):
    upstream.hold.clear()                       # the upstream sits on every query
    s = Kdns("--manifests", CLUSTER, "--upstream", f"127.0.0.1:{upstream.port}",
             "--max-concurrent", "1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(dns.message.make_query("a.example.com.", "A").to_wire(), ("127.0.0.1", s.port))
        assert wait_for(lambda: upstream.count(name="a.example.com") == 1)
        resp = s.query("b.example.com.")
        assert dns.rcode.to_text(resp.rcode()) == "SERVFAIL" and upstream.count(name="b.example.com") == 0
    finally:
        upstream.hold.set()
        sock.close()
        s.stop()


def test_stub_domain_flags_are_documented_in_serve_help():
    out = subprocess.run([sys.executable, "-m", "kdns", "serve", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    help_text = " ".join(out.stdout.split())
    for flag in ("--forward ZONE=HOST[:PORT][,...]", "--forward-except ZONE",
                 "--forward-inside-cluster-zone"):
        assert flag in help_text
    assert "SERVFAIL, as CoreDNS forward's except" in help_text
