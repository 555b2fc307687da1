"""What an operator (or a newcomer) meets first: query logs, log formats and levels, flag hints,
the example-cluster notice, `kdns env --strict`, the README's own examples, and `--pods verified`
without the permission to list pods. Real kdns processes, dig and dnspython."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys

import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import ROOT, Kdns, wait_for
from test_http import get, http_port

WEB = "webapp.default.svc.cluster.local."
# CoreDNS log plugin's common format, with kdns's timestamp and level before it.
QUERY_LINE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[INFO\] (?P<remote>\S+):(?P<port>\d+) - '
                        r'(?P<id>\d+) "(?P<type>\S+) (?P<class>\S+) (?P<name>\S+) (?P<proto>udp|tcp) '
                        r'(?P<size>\d+) (?P<do>true|false) (?P<bufsize>\d+)" (?P<rcode>\S+) '
                        r'(?P<rflags>\S+) (?P<rsize>\d+) (?P<duration>[0-9.]+)s$')


def query_lines(server: Kdns) -> list[dict]:
    return [m.groupdict() for line in server.log().splitlines() if (m := QUERY_LINE.match(line))]


def run_kdns(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "kdns", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- --log-queries

def test_query_log_is_coredns_common_format():
    from dnsstub import Stub

    upstream = Stub(["www.example.com. 300 IN A 192.0.2.53"])
    server = Kdns("--log-queries", "--reload", "0", "--upstream", f"127.0.0.1:{upstream.port}")
    try:
        q = dns.message.make_query(WEB, "A", use_edns=0, payload=1232, want_dnssec=True)
        q.id = 4242
        resp = dns.query.udp(q, "127.0.0.1", port=server.port, timeout=3)
        assert resp.answer[0][0].address == "10.96.45.200"
        q2 = dns.message.make_query("nope.default.svc.cluster.local.", "AAAA")
        q2.id = 77
        resp2 = dns.query.tcp(q2, "127.0.0.1", port=server.port, timeout=3)
        assert resp2.rcode() == dns.rcode.NXDOMAIN
        dig = shutil.which("dig")
        if dig:
            out = subprocess.run([dig, "@127.0.0.1", "-p", str(server.port), "+short", "-x", "10.96.45.200"],
                                 capture_output=True, text=True, timeout=10)
            assert out.stdout.strip() == WEB
        # A forwarded query is answered from a worker thread: logged all the same.
        assert server.query("www.example.com.").answer[0][0].address == "192.0.2.53"
        assert wait_for(lambda: len(query_lines(server)) == (4 if dig else 3)), server.log()
        lines = query_lines(server)
    finally:
        server.stop()
        upstream.close()
    forwarded = lines[-1]
    assert (forwarded["name"], forwarded["rcode"]) == ("www.example.com.", "NOERROR")
    assert "aa" not in forwarded["rflags"].split(",")
    first = lines[0]
    assert first["remote"] == "127.0.0.1" and first["id"] == "4242"
    assert (first["type"], first["class"], first["name"], first["proto"]) == ("A", "IN", WEB, "udp")
    assert int(first["size"]) == len(q.to_wire()) and first["do"] == "true" and first["bufsize"] == "1232"
    assert first["rcode"] == "NOERROR" and first["rflags"] == "qr,aa,rd"
    assert int(first["rsize"]) == len(resp.to_wire())
    second = lines[1]
    assert (second["id"], second["type"], second["proto"], second["bufsize"]) == ("77", "AAAA", "tcp", "65535")
    assert second["rcode"] == "NXDOMAIN" and int(second["rsize"]) == len(resp2.to_wire())
    if dig:
        assert lines[2]["type"] == "PTR" and lines[2]["name"] == "200.45.96.10.in-addr.arpa."


def test_no_query_log_by_default():
    server = Kdns("--reload", "0")
    try:
        for _ in range(3):
            assert server.query(WEB).rcode() == dns.rcode.NOERROR
        log = server.stop()
    finally:
        server.stop()
    assert not query_lines(server) and "webapp" not in log


def test_json_log_format_and_level_after_the_subcommand():
    server = Kdns("--log-queries", "--log-format", "json", "--log-level", "debug", "--reload", "0")
    try:
        assert server.query(WEB).answer
        assert wait_for(lambda: '"logger": "kdns.query"' in server.log()), server.log()
    finally:
        server.stop()
    docs = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert docs and all({"time", "level", "logger", "msg"} <= d.keys() for d in docs)
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", d["time"]) for d in docs)
    listening = [d for d in docs if d["msg"].startswith("listening on ")]
    assert listening and listening[0]["level"] == "info"
    (q,) = [d for d in docs if d["logger"] == "kdns.query"]
    assert (q["type"], q["class"], q["name"], q["proto"], q["rcode"]) == ("A", "IN", WEB, "udp", "NOERROR")
    # --log-level works before the subcommand as well; warning hides the info lines.
    out = run_kdns("--log-level", "warning", "env", "--namespace", "default")
    assert out.returncode == 0 and "[INFO]" not in out.stderr
    out = run_kdns("env", "--namespace", "default", "--log-level", "error", "--manifests", "zones/examples/app.yaml")
    assert out.returncode == 0 and "[INFO]" not in out.stderr
    out = run_kdns("env", "--namespace", "default", "--manifests", "zones/examples/app.yaml")
    assert "[INFO] kdns: allocated clusterIP" in out.stderr


def test_text_log_lines_carry_a_timestamp_and_a_level():
    """The default --log-format text: every line of kdns's own (not only query lines) starts
    with an RFC 3339 UTC timestamp and its level, and --log-level after the subcommand holds."""
    server = Kdns("--reload", "0", "--log-level", "debug")
    try:
        assert server.query(WEB).answer
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert lines
    shape = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[(DEBUG|INFO|WARNING|ERROR)\] kdns[\w.]*: ")
    assert all(shape.match(line) for line in lines), [l for l in lines if not shape.match(l)]
    assert any(" [INFO] kdns: listening on 127.0.0.1:" in line for line in lines)
    quiet = Kdns("--reload", "0", "--log-level", "warning", wait=False)   # no "listening" line
    try:
        assert wait_for(lambda: "[WARNING] kdns: no upstream resolvers" in quiet.log()), quiet.log()
    finally:
        quiet.stop()
    assert quiet.log().strip() and " [INFO] " not in quiet.log()
    assert all(shape.match(line) for line in quiet.log().splitlines() if line.strip())


# ---------------------------------------------------------------- newcomer friction

def test_unbracketed_ipv6_with_a_port_gets_a_hint():
    out = run_kdns("serve", "--listen", "::1:5353", "--resolv-conf", "")
    assert out.returncode == 2
    assert "'::1:5353': an IPv6 address with a port needs brackets: write [::1]:5353 for port 5353" in out.stderr
    assert "Traceback" not in out.stderr
    server = Kdns(listen="[::1]:0")                           # the hinted spelling works
    try:
        assert server.query(WEB).answer[0][0].address == "10.96.45.200"
    finally:
        server.stop()


def test_kubeconfig_alone_says_it_serves_the_example_cluster(tmp_path):
    server = Kdns("--reload", "0", env={"KUBECONFIG": str(tmp_path / "config")})
    try:
        assert server.query(WEB).answer                        # the embedded example cluster
    finally:
        server.stop()
    (line,) = [x for x in server.log().splitlines() if "$KUBECONFIG" in x]
    assert "serves the embedded example cluster" in line and 'kdns serve --kubeconfig "$KUBECONFIG"' in line
    quiet = Kdns("--reload", "0")
    quiet.stop()
    assert "$KUBECONFIG" not in quiet.log()


def test_env_strict_exits_1_for_an_unknown_namespace():
    out = run_kdns("env", "--namespace", "nosuch", "--strict")
    assert out.returncode == 1 and out.stdout == ""
    assert "namespace 'nosuch' does not exist in the source (--strict)" in out.stderr
    loose = run_kdns("env", "--namespace", "nosuch")
    assert loose.returncode == 0 and "KUBERNETES_SERVICE_HOST=10.96.0.1" in loose.stdout
    assert run_kdns("env", "--namespace", "default", "--strict").returncode == 0


def test_the_readme_env_examples_run_as_written():
    """Every `kdns env` line of the README that reads local files runs from the checkout root."""
    readme = (ROOT / "README.md").read_text()
    lines = [line.split("  #")[0].strip() for line in readme.splitlines() if line.startswith("kdns env ")]
    local = [line for line in lines if "--kubeconfig" not in line and "[" not in line]
    assert any("--manifests" in line for line in local) and any("--pod " in line for line in local)
    for line in local:
        argv = shlex.split(line)[1:]
        out = run_kdns(*argv)
        assert out.returncode == 0, (line, out.stderr)
        assert "does not exist" not in out.stderr and "no such file" not in out.stderr, (line, out.stderr)
        assert out.stdout, line
    shop = run_kdns("env", "--pod", "zones/examples/pod.yaml", "--manifests", "zones")
    assert re.search(r"^CART_URL=http://10\.\d+\.\d+\.\d+:9090/api$", shop.stdout, re.M), shop.stdout


# ---------------------------------------------------------------- --pods verified without permission

def test_pods_verified_without_permission_serves_and_is_not_ready(api, tmp_path):
    from fakeapi import pod, service

    api.create(service("prod", "web", "10.96.0.20"))
    api.create(pod("prod", "web-1", "10.244.1.5"))
    api.fail("any", "pods", 403, count=None)      # neither list nor watch (the streaming list)
    server = Kdns("--kubeconfig", api.kubeconfig(tmp_path / "kubeconfig"), "--pods", "verified",
                  "--http", "127.0.0.1:0", "--api-timeout", "2")
    try:
        port = http_port(server)
        # The zone is served (not SERVFAIL) ...
        assert wait_for(lambda: server.query("web.prod.svc.cluster.local.").rcode() == dns.rcode.NOERROR), \
            server.log()
        assert server.query("web.prod.svc.cluster.local.").answer[0][0].address == "10.96.0.20"
        assert server.query("10-244-1-5.prod.pod.cluster.local.").rcode() == dns.rcode.NXDOMAIN
        # ... but the pod is not ready, and says which permission is missing.
        code, body, _ = get(port, "/ready")
        assert code == 503
        assert "forbidden to list pods: --pods verified needs list and watch on pods" in body
        assert "deploy/kdns-pods-verified.yaml" in body
        assert "forbidden to list pods" in server.log()
        # Granting it heals without a restart.
        api.clear_faults()
        assert wait_for(lambda: get(port, "/ready")[0] == 200, 30), server.log()
        assert wait_for(lambda: server.query("10-244-1-5.prod.pod.cluster.local.").answer, 10), server.log()
    finally:
        log = server.stop()
    assert "Traceback" not in log


# ---------------------------------------------------------------- kdns compare (the migration's check)

APP = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-a, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
"""


def test_compare_two_real_servers(tmp_path):
    same, moved = tmp_path / "same.yaml", tmp_path / "moved.yaml"
    same.write_text(APP)
    moved.write_text(APP.replace("10.96.0.20", "10.96.0.21"))
    a = Kdns("--manifests", str(same), "--reload", "0")
    b = Kdns("--manifests", str(same), "--reload", "0", "--ttl", "30")     # TTLs are not compared
    c = Kdns("--manifests", str(moved), "--reload", "0")
    try:
        servers = [f"127.0.0.1:{s.port}" for s in (a, b, c)]
        out = run_kdns("compare", "--server", servers[0], "--server", servers[1], "--manifests", str(same))
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout == ""
        assert f"10 questions about 2 Services: 0 differ; {servers[0]} and {servers[1]} agree" in out.stderr
        out = run_kdns("compare", "--server", servers[0], "--server", servers[2], "--manifests", str(same))
        assert out.returncode == 1, out.stdout + out.stderr
        assert out.stdout.splitlines() == [
            f"differ: web.shop.svc.cluster.local. A: {servers[0]} NOERROR [web.shop.svc.cluster.local. A "
            f"10.96.0.20]; {servers[2]} NOERROR [web.shop.svc.cluster.local. A 10.96.0.21]",
            f"differ: 20.0.96.10.in-addr.arpa. PTR: {servers[0]} NOERROR [20.0.96.10.in-addr.arpa. PTR "
            f"web.shop.svc.cluster.local.]; {servers[2]} NXDOMAIN []",
        ]
        assert "10 questions about 2 Services: 2 differ" in out.stderr
        # A server that does not answer is a difference too, not a hang or a traceback.
        dead = socket_port()
        out = run_kdns("compare", "--server", servers[0], "--server", f"127.0.0.1:{dead}",
                       "--manifests", str(same), "--timeout", "0.2")
        assert out.returncode == 1 and "timeout []" in out.stdout and "Traceback" not in out.stderr
        out = run_kdns("compare", "--server", servers[0])
        assert out.returncode == 2 and "give --server exactly twice" in out.stderr
    finally:
        for s in (a, b, c):
            s.stop()


def socket_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_connections_caps_open_connections():
    # Past the cap the oldest idle connection makes room for the new one (RFC 7766 §6.2.2,
    # issue 13): a held-open idle slot never locks a new client out.
    import socket
    import struct

    server = Kdns("--tcp-connections", "1", "--reload", "0")
    try:
        first = socket.create_connection(("127.0.0.1", server.port), timeout=3)
        q = dns.message.make_query(WEB, "A").to_wire()
        first.sendall(struct.pack("!H", len(q)) + q)
        assert len(first.recv(2)) == 2                                  # served: the one slot is taken
        first.recv(65535)
        second = socket.create_connection(("127.0.0.1", server.port), timeout=3)
        second.sendall(struct.pack("!H", len(q)) + q)
        assert len(second.recv(2)) == 2                                 # the newcomer is served...
        try:
            got = first.recv(2)
        except ConnectionResetError:
            got = b""
        assert got == b""                                               # ...the idle one was closed
        second.close()
        first.close()
        def served() -> bool:
            try:
                return bool(server.query(WEB, tcp=True).answer)
            except (EOFError, ConnectionError):
                return False                     # the slot is not back yet
        assert wait_for(served)                                         # the slot comes back
    finally:
        server.stop()
    bad = run_kdns("serve", "--tcp-connections", "0", "--resolv-conf", "")
    assert bad.returncode == 2 and "--tcp-connections 0: must be 1-65535" in bad.stderr


def test_a_corefile_log_line_turns_on_the_query_log(tmp_path):
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:53 {\n    errors\n    log\n    kubernetes cluster.local in-addr.arpa ip6.arpa\n}\n")
    out = run_kdns("corefile", str(corefile))
    assert out.returncode == 0, out.stderr
    assert "--log-queries" in out.stdout.split()
    corefile.write_text(".:53 {\n    kubernetes cluster.local in-addr.arpa ip6.arpa\n}\n")
    assert "--log-queries" not in run_kdns("corefile", str(corefile)).stdout.split()
