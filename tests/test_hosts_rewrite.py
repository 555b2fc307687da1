"""Custom records and rewriting against a real kdns: --hosts (hosts(5), reloaded, answers first,
followed by the packet cache), --hosts-entry, --rewrite-name and --rewrite-suffix with the
answer's owner names given back the question's (CoreDNS `answer auto`)."""

from __future__ import annotations

import os
import time

import dns.flags
import dns.rcode
import pytest

from conftest import DATA, Kdns
from dnsstub import Stub

WAIT = 20.0
CLUSTER = str(DATA / "cluster.yaml")


def answers(server: Kdns, name: str, rdtype: str = "A") -> tuple[str, list[str]]:
    resp = server.query(name, rdtype)
    return dns.rcode.to_text(resp.rcode()), sorted(
        f"{rrset.name} {rrset.ttl} {rd.to_text()}" for rrset in resp.answer for rd in rrset)


def eventually(server: Kdns, name: str, want, rdtype: str = "A") -> None:
    deadline = time.monotonic() + WAIT
    got = answers(server, name, rdtype)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = answers(server, name, rdtype)
    assert got == want, f"{name} {rdtype}: got {got}, want {want}\n{server.log()}"


@pytest.fixture
def upstream():
    stub = Stub(["www.example.com. 60 IN A 192.0.2.80", "db.internal. 60 IN A 192.0.2.99"])
    yield stub
    stub.close()


@pytest.fixture
def kdns():
    servers: list[Kdns] = []

    def start(*args: str) -> Kdns:
        s = Kdns("--manifests", CLUSTER, *args)
        servers.append(s)
        return s
    yield start
    for s in servers:
        log = s.stop()
        assert "Traceback" not in log, log


HOSTS = """\
# custom records
10.0.0.5   db.internal  db-alias.internal   # two names
2001:db8::5 db.internal
10.0.0.6   api.prod.svc.cluster.local
"""


def test_hosts_answer_first_and_everything_else_falls_through(kdns, tmp_path, upstream):
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    s = kdns("--hosts", str(hosts), "--ttl", "7", "--upstream", f"127.0.0.1:{upstream.port}")
    assert answers(s, "db.internal.") == ("NOERROR", ["db.internal. 7 10.0.0.5"])
    assert answers(s, "DB.Internal.", "AAAA") == ("NOERROR", ["DB.Internal. 7 2001:db8::5"])
    assert answers(s, "db-alias.internal.") == ("NOERROR", ["db-alias.internal. 7 10.0.0.5"])
    assert answers(s, "5.0.0.10.in-addr.arpa.", "PTR") == (
        "NOERROR", ["5.0.0.10.in-addr.arpa. 7 db-alias.internal.", "5.0.0.10.in-addr.arpa. 7 db.internal."])
    assert answers(s, "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.", "PTR") == (
        "NOERROR", ["5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 7 db.internal."])
    resp = s.query("db.internal.", "MX")
    assert (dns.rcode.to_text(resp.rcode()), resp.answer, resp.authority) == ("NOERROR", [], [])
    assert resp.flags & dns.flags.AA
    # hosts names win over the cluster's; other names fall through to the cluster, then upstream
    assert answers(s, "api.prod.svc.cluster.local.") == (
        "NOERROR", ["api.prod.svc.cluster.local. 7 10.0.0.6"])
    assert answers(s, "web.prod.svc.cluster.local.")[0] == "NOERROR"
    assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 60 192.0.2.80"])
    assert answers(s, "nosuch.default.svc.cluster.local.") == ("NXDOMAIN", [])


def test_hosts_edits_show_up_and_a_bad_edit_keeps_the_last_good(kdns, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    s = kdns("--hosts", str(hosts), "--reload", "0.2")
    # cached answers first: the packet cache must let go of exactly these
    assert answers(s, "db.internal.") == ("NOERROR", ["db.internal. 5 10.0.0.5"])
    assert answers(s, "new.default.svc.cluster.local.") == ("NXDOMAIN", [])
    assert answers(s, "api.prod.svc.cluster.local.") == (
        "NOERROR", ["api.prod.svc.cluster.local. 5 10.0.0.6"])
    hosts.write_text("10.0.0.7 db.internal\n10.0.0.8 new.default.svc.cluster.local\n")
    eventually(s, "db.internal.", ("NOERROR", ["db.internal. 5 10.0.0.7"]))
    eventually(s, "new.default.svc.cluster.local.", ("NOERROR", ["new.default.svc.cluster.local. 5 10.0.0.8"]))
    assert answers(s, "api.prod.svc.cluster.local.")[1] != [
        "api.prod.svc.cluster.local. 5 10.0.0.6"]                 # back to the cluster's
    assert answers(s, "5.0.0.10.in-addr.arpa.", "PTR")[0] == "NXDOMAIN"
    hosts.write_text("10.0.0.9 db.internal\nnot-an-ip broken.internal\n")
    deadline = time.monotonic() + WAIT
    while "hosts reload failed" not in s.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"kdns: {hosts}:2: 'not-an-ip' is not an IP address" in s.log()
    assert f"kdns: hosts reload failed: still serving the last good {hosts}" in s.log()
    assert answers(s, "db.internal.") == ("NOERROR", ["db.internal. 5 10.0.0.7"])


def test_a_bad_hosts_file_stops_startup(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 ok.internal\n10.0.0.300 bad.internal\n10.0.0.2\n")
    s = Kdns("--manifests", CLUSTER, "--hosts", str(hosts), wait=False)
    assert s.wait_exit() == 2
    assert f"kdns: {hosts}:2: '10.0.0.300' is not an IP address\n" in s.log()
    assert f"kdns: {hosts}:3: 10.0.0.2 has no host name\n" in s.log()


def test_inline_hosts_entries(kdns):
    s = kdns("--hosts-entry", "10.1.1.1 one.example.org", "--hosts-entry", "10.1.1.2 two.example.org")
    assert answers(s, "two.example.org.") == ("NOERROR", ["two.example.org. 5 10.1.1.2"])
    assert answers(s, "1.1.1.10.in-addr.arpa.", "PTR") == (
        "NOERROR", ["1.1.1.10.in-addr.arpa. 5 one.example.org."])


def test_rewrite_name_exact(kdns):
    s = kdns("--rewrite-name", "db.example.com=web.prod.svc.cluster.local")
    want = answers(s, "web.prod.svc.cluster.local.")
    assert want[0] == "NOERROR" and want[1]
    got = answers(s, "Db.Example.Com.")
    assert got == ("NOERROR", [line.replace("web.prod.svc.cluster.local.", "Db.Example.Com.")
                               for line in want[1]])
    assert answers(s, "x.db.example.com.") == ("REFUSED", [])           # exact: nothing else


def test_rewrite_suffix(kdns, upstream):
    s = kdns("--rewrite-suffix", "corp.example=svc.cluster.local",
             "--upstream", f"127.0.0.1:{upstream.port}")
    web = answers(s, "web.prod.svc.cluster.local.")[1]
    assert answers(s, "web.prod.corp.example.") == (
        "NOERROR", [line.replace("svc.cluster.local.", "corp.example.") for line in web])
    srv = s.query("_http._tcp.web.prod.corp.example.", "SRV")
    assert [rrset.name.to_text() for rrset in srv.answer] == ["_http._tcp.web.prod.corp.example."]
    resp = s.query("nosuch.prod.corp.example.", "A")
    assert dns.rcode.to_text(resp.rcode()) == "NXDOMAIN"
    # a name kdns does not answer itself goes upstream as asked
    assert answers(s, "www.example.com.") == ("NOERROR", ["www.example.com. 60 192.0.2.80"])


def test_a_bad_rewrite_rule_stops_startup():
    s = Kdns("--manifests", CLUSTER, "--rewrite-name", "a.example", wait=False)
    assert s.wait_exit() == 2
    assert "kdns: --rewrite-name 'a.example': expected FROM=TO" in s.log()


def test_a_hosts_edit_drops_only_the_answers_it_changed(tmp_path):
    """Through the packet cache: after an edit, the answer of a name the edit left alone is
    still a cache hit, and the edited name's first answer is the new one."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from conftest import wait_for

    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 keep.internal\n10.0.0.2 edit.internal\n")
    s = Kdns("--manifests", CLUSTER, "--hosts", str(hosts), "--reload", "0.2", "--http", "127.0.0.1:0")
    port = int(s.log().split("http on 127.0.0.1:")[1].split()[0])

    def metric(name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        # Summed over labels: kdns_cache_hits_total is per server and type, as CoreDNS's.
        return sum(x.value for f in text_string_to_metric_families(body) for x in f.samples
                   if x.name == name)

    try:
        for name in ("keep.internal.", "edit.internal.", "web.prod.svc.cluster.local."):
            answers(s, name)
        before = metric("kdns_snapshot_version")
        hosts.write_text("10.0.0.1 keep.internal\n10.0.0.3 edit.internal\n")
        assert wait_for(lambda: metric("kdns_snapshot_version") > before, WAIT), s.log()
        hit = metric("kdns_cache_hits_total")
        assert answers(s, "keep.internal.") == ("NOERROR", ["keep.internal. 5 10.0.0.1"])
        assert answers(s, "web.prod.svc.cluster.local.")[0] == "NOERROR"
        assert metric("kdns_cache_hits_total") == hit + 2            # both still cached
        assert answers(s, "edit.internal.") == ("NOERROR", ["edit.internal. 5 10.0.0.3"])
        assert metric("kdns_cache_hits_total") == hit + 2            # a miss: it changed
    finally:
        s.stop()
