"""Acceptance: real stub resolvers (glibc, musl, Python, dig) using kdns as a pod's nameserver.

Everything runs in a network namespace this module creates, so that /etc/resolv.conf can be
a pod's without touching the machine's (``ip netns exec`` bind-mounts
/etc/netns/<name>/resolv.conf over it):

    search default.svc.cluster.local svc.cluster.local cluster.local
    nameserver 10.53.0.10          <- kdns (tests/data/resolvers-cluster.yaml)
    options ndots:5

and an "external" upstream, dnsmasq on 10.53.0.53, serving www.example.com (A 192.0.2.53,
AAAA 2001:db8::53, PTR) and NXDOMAIN for the rest. kdns forwards to it with --upstream.

With ndots:5 every short name walks the search list first: www.example.com is asked as
www.example.com.default.svc.cluster.local, ...svc.cluster.local, ...cluster.local (NXDOMAIN
from kdns each) before www.example.com. itself (forwarded). musl continues the walk only past
NXDOMAIN (a NODATA stops it), glibc also past NODATA, so both are run.

Skipped only where this machine cannot create network namespaces; a missing dnsmasq, musl-gcc
or dig is a failure (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdnsproc import DATA, ROOT, KdnsProcess

KDNS_IP = "10.53.0.10"
UPSTREAM_IP = "10.53.0.53"
LOOP_KDNS_IP = "10.53.0.11"
LOOP_RELAY_IP = "10.53.0.54"
POD_RESOLV_CONF = (
    "search default.svc.cluster.local svc.cluster.local cluster.local\n"
    f"nameserver {KDNS_IP}\n"
    "options ndots:5\n"
)
NETNS_ETC = Path("/etc/netns")


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{tool} is not installed; .ci/run installs it (see docs/forwarding.md)")
    return path


class Netns:
    """A network namespace of our own, with lo up and the test's addresses on it."""

    def __init__(self) -> None:
        self.name = f"kdns-test-{os.getpid()}-{secrets.token_hex(3)}"
        self.etc = NETNS_ETC / self.name
        self._made_netns_etc = not NETNS_ETC.exists()
        self.procs: list[subprocess.Popen] = []

    def create(self) -> None:
        if os.geteuid() != 0:
            pytest.skip("network namespaces need root (ip netns add)")
        ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
        if ip is None:
            pytest.fail("ip (iproute2) is not installed; .ci/run installs it")
        made = _run(["ip", "netns", "add", self.name])
        if made.returncode != 0:
            pytest.skip(f"this machine cannot create network namespaces: {made.stderr.strip()}")
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text(POD_RESOLV_CONF)
        for cmd in (["link", "set", "lo", "up"],
                    *(["addr", "add", f"{a}/32", "dev", "lo"]
                      for a in (KDNS_IP, UPSTREAM_IP, LOOP_KDNS_IP, LOOP_RELAY_IP))):
            done = _run(["ip", "-n", self.name, *cmd])
            assert done.returncode == 0, f"ip -n {self.name} {' '.join(cmd)}: {done.stderr}"

    def exec(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.name, *cmd], timeout=timeout)

    def start(self, *cmd: str, log: Path) -> subprocess.Popen:
        out = open(log, "w")
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], stdout=out,
                             stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(p)
        return p

    def destroy(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        # Anything still running in the namespace was started by this module (by its pid).
        left = _run(["ip", "netns", "pids", self.name]).stdout.split()
        for pid in left:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        _run(["ip", "netns", "del", self.name])
        shutil.rmtree(self.etc, ignore_errors=True)
        if self._made_netns_etc:
            try:
                NETNS_ETC.rmdir()
            except OSError:
                pass


def _dnsmasq(ns: Netns, listen: str, log: Path, *extra: str) -> subprocess.Popen:
    return ns.start(
        _need("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
        "--no-hosts", "--no-poll", "--bind-interfaces", f"--listen-address={listen}", "--port=53",
        "--pid-file=", "--user=root", "--log-queries", "--log-facility=-", *extra, log=log)


def _wait_dns(ns: Netns, server: str, name: str, expect: str) -> None:
    """Until ``server`` answers ``name`` with ``expect`` in the answer."""
    _need("dig")
    for _ in range(100):
        got = ns.exec("dig", "+short", "+time=1", "+tries=1", f"@{server}", name, timeout=10)
        if got.returncode == 0 and expect in got.stdout:
            return
        time.sleep(0.1)
    pytest.fail(f"{server} never answered {name} with {expect}")


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """The namespace with the upstream dnsmasq and kdns running; yields (netns, dnsmasq log)."""
    tmp = tmp_path_factory.mktemp("resolvers")
    ns = Netns()
    kdns = None
    try:
        ns.create()
        upstream_log = tmp / "dnsmasq.log"
        _dnsmasq(ns, UPSTREAM_IP, upstream_log, "--local-ttl=300", "--local=/example.com/",
                 "--address=/#/", "--host-record=www.example.com,192.0.2.53,2001:db8::53")
        _wait_dns(ns, UPSTREAM_IP, "www.example.com", "192.0.2.53")
        kdns = KdnsProcess("--manifests", str(DATA / "resolvers-cluster.yaml"), "--upstream",
                           UPSTREAM_IP, "--reload", "0", listen=f"{KDNS_IP}:53", netns=ns.name)
        yield ns, upstream_log, tmp
    finally:
        if kdns is not None:
            kdns.stop()
        ns.destroy()


def _lines(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------- glibc

def test_glibc_getent_hosts_short_name(pod):
    ns, _, _ = pod
    got = ns.exec("getent", "hosts", "webapp")
    assert got.returncode == 0, got.stderr
    assert _lines(got.stdout) == [["10.96.45.200", "webapp.default.svc.cluster.local"]]


def test_glibc_getent_ahosts_name_dot_namespace(pod):
    ns, _, _ = pod
    got = ns.exec("getent", "ahosts", "webapp.default")
    assert got.returncode == 0, got.stderr
    rows = _lines(got.stdout)
    assert {r[0] for r in rows} == {"10.96.45.200"}
    assert rows[0] == ["10.96.45.200", "STREAM", "webapp.default.svc.cluster.local"]


def test_glibc_getent_hosts_external_name_via_upstream(pod):
    ns, upstream_log, _ = pod
    got = ns.exec("getent", "hosts", "www.example.com")
    assert got.returncode == 0, got.stderr
    # getent hosts asks AF_INET6 first, then AF_INET: either family, from the upstream
    (row,) = _lines(got.stdout)
    assert row in (["2001:db8::53", "www.example.com"], ["192.0.2.53", "www.example.com"])
    rows = _lines(ns.exec("getent", "ahostsv4", "www.example.com").stdout)
    assert {r[0] for r in rows} == {"192.0.2.53"}
    assert "query[A] www.example.com from" in upstream_log.read_text()


def test_glibc_externalname_is_chased(pod):
    ns, _, _ = pod
    got = ns.exec("getent", "ahostsv4", "ext")
    assert got.returncode == 0, got.stderr
    rows = _lines(got.stdout)
    assert {r[0] for r in rows} == {"192.0.2.53"}
    assert rows[0][2] == "www.example.com"      # the canonical name, through the CNAME


def test_glibc_reverse_lookups(pod):
    ns, _, _ = pod
    # a cluster IP: from kdns's own zone
    assert _lines(ns.exec("getent", "hosts", "10.96.45.200").stdout) == [
        ["10.96.45.200", "webapp.default.svc.cluster.local"]]
    # neither a cluster IP nor an endpoint: falls through to the upstream
    assert _lines(ns.exec("getent", "hosts", "192.0.2.53").stdout) == [
        ["192.0.2.53", "www.example.com"]]


def test_glibc_unknown_names_are_not_found(pod):
    ns, _, _ = pod
    assert ns.exec("getent", "hosts", "nope").returncode == 2
    assert ns.exec("getent", "hosts", "nope.example.com").returncode == 2


# --------------------------------------------------------------------------------------- Python

def test_python_getaddrinfo(pod):
    ns, _, _ = pod
    script = (
        "import json, socket\n"
        "out = {}\n"
        "for name in ['webapp', 'webapp.default', 'web.prod', 'www.example.com', 'ext']:\n"
        "    infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM, 0,\n"
        "                               socket.AI_CANONNAME)\n"
        "    out[name] = [infos[0][3], sorted({i[4][0] for i in infos})]\n"
        "try:\n"
        "    socket.getaddrinfo('nope', 80)\n"
        "    out['nope'] = 'resolved'\n"
        "except socket.gaierror as e:\n"
        "    out['nope'] = e.errno == socket.EAI_NONAME\n"
        "print(json.dumps(out))\n")
    got = ns.exec(sys.executable, "-c", script)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {
        "webapp": ["webapp.default.svc.cluster.local", ["10.96.45.200"]],
        "webapp.default": ["webapp.default.svc.cluster.local", ["10.96.45.200"]],
        "web.prod": ["web.prod.svc.cluster.local", ["10.96.10.1"]],
        "www.example.com": ["www.example.com", ["192.0.2.53"]],
        "ext": ["www.example.com", ["192.0.2.53"]],
        "nope": True,
    }


# ----------------------------------------------------------------------------------------- musl

@pytest.fixture(scope="module")
def musl_gai(pod):
    _, _, tmp = pod
    cc = _need("musl-gcc")
    exe = tmp / "gai"
    built = _run([cc, "-static", "-O1", "-o", str(exe), str(ROOT / "tests" / "musl" / "gai.c")],
                 timeout=120)
    assert built.returncode == 0, built.stderr
    return str(exe)


def test_musl_getaddrinfo_walks_the_search_list(pod, musl_gai):
    ns, _, _ = pod
    # webapp.default: first webapp.default.default.svc.cluster.local, which must be NXDOMAIN for
    # musl to go on to webapp.default.svc.cluster.local; www.example.com: three NXDOMAINs first.
    got = ns.exec(musl_gai, "-4", "webapp", "webapp.default", "web.prod", "www.example.com", "ext")
    assert got.returncode == 0, got.stdout + got.stderr
    assert _lines(got.stdout) == [
        ["webapp", "10.96.45.200", "webapp.default.svc.cluster.local"],
        ["webapp.default", "10.96.45.200", "webapp.default.svc.cluster.local"],
        ["web.prod", "10.96.10.1", "web.prod.svc.cluster.local"],
        ["www.example.com", "192.0.2.53", "www.example.com"],
        ["ext", "192.0.2.53", "www.example.com"],
    ]


def test_musl_both_families(pod, musl_gai):
    ns, _, _ = pod
    got = ns.exec(musl_gai, "webapp", "www.example.com")
    assert got.returncode == 0, got.stdout
    assert sorted(map(tuple, _lines(got.stdout))) == [
        ("webapp", "10.96.45.200", "webapp.default.svc.cluster.local"),
        ("www.example.com", "192.0.2.53", "www.example.com"),
        ("www.example.com", "2001:db8::53", "www.example.com"),
    ]


def test_musl_stops_on_nodata(pod, musl_gai):
    """`prod` from namespace default: prod.default.svc.cluster.local is NXDOMAIN, then
    prod.svc.cluster.local exists (a namespace) with no address: NODATA, where musl stops
    (dns-behavior.md §4, same on CoreDNS). A NXDOMAIN there would send musl on to "prod."."""
    ns, upstream_log, _ = pod
    got = ns.exec(musl_gai, "-4", "prod", "nope")
    assert got.returncode == 2
    assert [r[:2] for r in _lines(got.stdout)] == [["prod", "ERROR"], ["nope", "ERROR"]]
    log = upstream_log.read_text()
    assert " prod from" not in log            # the walk stopped inside the cluster zone
    assert " nope from" in log                # ... while nope. went all the way out


# ------------------------------------------------------------------------------------------ dig

def test_dig_search(pod):
    ns, _, _ = pod
    for name, want in (("webapp", "10.96.45.200"), ("webapp.default", "10.96.45.200"),
                       ("www.example.com", "192.0.2.53")):
        got = ns.exec("dig", "+search", "+short", "+time=3", "+tries=1", name, "A")
        assert got.returncode == 0, got.stderr
        assert got.stdout.split() == [want], name
    got = ns.exec("dig", "+search", "+time=3", "+tries=1", "webapp", "A")
    assert "webapp.default.svc.cluster.local. 5 IN A 10.96.45.200" in " ".join(got.stdout.split())


# --------------------------------------------------------------------------------- the upstream

def test_cluster_names_never_reach_the_upstream(pod):
    _, upstream_log, _ = pod
    queried = [line.split()[2] for line in upstream_log.read_text().splitlines()
               if "query[" in line]
    assert "www.example.com" in queried
    assert not [n for n in queried if n.endswith("cluster.local")]


def test_forwarding_loop_through_a_real_resolver_is_fatal(pod):
    """A node whose resolver forwards to kdns: kdns's loop probe comes back and kdns exits."""
    ns, _, tmp = pod
    relay_log = tmp / "relay.log"
    _dnsmasq(ns, LOOP_RELAY_IP, relay_log, f"--server={LOOP_KDNS_IP}")
    # It cannot answer anything before kdns is up; "started" comes after it has bound its sockets.
    for _ in range(100):
        if "started, version" in relay_log.read_text():
            break
        time.sleep(0.1)
    k = KdnsProcess("--manifests", str(DATA / "resolvers-cluster.yaml"), "--upstream",
                    LOOP_RELAY_IP, "--reload", "0", listen=f"{LOOP_KDNS_IP}:53", netns=ns.name)
    try:
        assert k.wait_exit() == 1
        assert "forwarding loop detected" in k.log() and f"{LOOP_RELAY_IP}:53" in k.log()
        assert "Traceback" not in k.log()
    finally:
        k.stop()


# ------------------------------------------------------------------------- kdns explain agrees

def test_explain_walk_agrees_with_the_real_resolvers(pod, musl_gai):
    """`kdns explain --from default` replays what glibc and musl do in this pod: the same names
    resolve, to the same canonical name, and the same fail (its --ask completes the walk past
    the cluster zone through the running kdns and its upstream)."""
    ns, _, _ = pod
    names = ["webapp", "webapp.default", "web.prod", "www.example.com", "ext", "prod", "nope"]
    for resolver in ("glibc", "musl"):
        for name in names:
            if resolver == "musl":
                real = ns.exec(musl_gai, "-4", name)
                rows = _lines(real.stdout)
                canon = rows[0][2] if real.returncode == 0 else None
            else:
                real = ns.exec("getent", "ahostsv4", name)
                rows = _lines(real.stdout)
                canon = rows[0][2] if real.returncode == 0 else None
            got = ns.exec(sys.executable, "-m", "kdns", "--log-level", "error", "explain",
                          "--manifests", str(DATA / "resolvers-cluster.yaml"), "--from", "default",
                          "--resolver", resolver, name, "A", "--ask", KDNS_IP, "--format", "json")
            assert got.returncode in (0, 1), (resolver, name, got.stdout, got.stderr)
            walk = json.loads(got.stdout)["walk"]
            assert (got.returncode == 0) == (canon is not None), (resolver, name, walk["outcome"])
            if canon is not None and name != "ext":
                assert walk["answered_by"] == canon + ".", (resolver, name)
            elif name == "ext":
                assert walk["answered_by"] == "ext.default.svc.cluster.local.", resolver
