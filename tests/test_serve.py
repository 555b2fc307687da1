"""kdns serve end to end: the embedded cluster, dig, transports, bad input and reloads."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
import time

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from conftest import DATA, ROOT, Kdns, wait_for
from test_vectors import section_lines

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def default_server():
    """`kdns serve` with no source: the embedded zones/cluster.yaml."""
    server = Kdns()
    yield server
    server.stop()


def dig(port: int, *args: str) -> str:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+norec", "+time=3", "+tries=1", *args],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout


def dig_short(port: int, *args: str) -> list[str]:
    return sorted(dig(port, "+short", *args).split("\n")[:-1])


needs_dig = pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) not installed")


# ---------------------------------------------------------------- the embedded example cluster

@needs_dig
@pytest.mark.parametrize("args, want", [
    (["webapp.default.svc.cluster.local"], ["10.96.45.200"]),
    (["nginx.default.svc.cluster.local"], ["10.96.120.15"]),
    (["myapp.default.svc.cluster.local"], ["10.96.88.31"]),
    (["_http._tcp.webapp.default.svc.cluster.local", "SRV"], ["0 100 80 webapp.default.svc.cluster.local."]),
    (["mysql.default.svc.cluster.local"], ["10.244.1.20", "10.244.2.21"]),
    (["mysql-0.mysql.default.svc.cluster.local"], ["10.244.1.20"]),
    (["_mysql._tcp.mysql.default.svc.cluster.local", "SRV"],
     ["0 50 3306 mysql-0.mysql.default.svc.cluster.local.", "0 50 3306 mysql-1.mysql.default.svc.cluster.local."]),
    (["external-db.default.svc.cluster.local", "CNAME"], ["my.database.example.com."]),
    (["kubernetes.default.svc.cluster.local"], ["10.96.0.1"]),
    (["-x", "10.96.45.200"], ["webapp.default.svc.cluster.local."]),
    (["-x", "10.244.2.9"], ["10-244-2-9.myapp.default.svc.cluster.local."]),
    (["10-244-1-5.default.pod.cluster.local"], ["10.244.1.5"]),
    (["dns-version.cluster.local", "TXT"], ['"1.1.0"']),
])
def test_dig_embedded_cluster(default_server, args, want):
    assert dig_short(default_server.port, *args) == want


@needs_dig
def test_dig_full_answer_flags_and_ttl(default_server):
    out = dig(default_server.port, "WebApp.Default.svc.cluster.local", "A")
    assert "status: NOERROR" in out
    assert ";; flags: qr aa;" in out                     # no RA, RD copied (+norec)
    assert "WebApp.Default.svc.cluster.local. 5 IN A\t10.96.45.200" in out.replace("\t", " ", 2)


@needs_dig
def test_dig_nxdomain_has_soa(default_server):
    out = dig(default_server.port, "nosuch.default.svc.cluster.local")
    assert "status: NXDOMAIN" in out
    assert "AUTHORITY: 1" in out
    assert "cluster.local.\t\t5\tIN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local." in out


@needs_dig
def test_dig_tcp_and_truncation_fallback():
    server = Kdns("--manifests", str(DATA / "cluster.yaml"))
    try:
        out = dig(server.port, "+noedns", "big.prod.svc.cluster.local")
        assert ";; Truncated, retrying in TCP mode." in out
        assert "ANSWER: 60" in out
        assert len(dig_short(server.port, "+tcp", "big.prod.svc.cluster.local")) == 60
    finally:
        server.stop()


# ---------------------------------------------------------------- transports

def test_tcp_several_queries_on_one_connection(default_server):
    names = ["webapp.default.svc.cluster.local.", "nosuch.default.svc.cluster.local.", "nginx.default.svc.cluster.local."]
    queries = [dns.message.make_query(n, "A") for n in names]
    with socket.create_connection(("127.0.0.1", default_server.port), timeout=5) as s:
        # Pipelined: all three sent before reading any answer (RFC 7766 §6.2.1.1).
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        answers = []
        f = s.makefile("rb")
        for _ in queries:
            (n,) = struct.unpack("!H", f.read(2))
            answers.append(dns.message.from_wire(f.read(n)))
    assert [a.id for a in answers] == [q.id for q in queries]
    assert [dns.rcode.to_text(a.rcode()) for a in answers] == ["NOERROR", "NXDOMAIN", "NOERROR"]
    assert section_lines(answers[2].answer) == ["nginx.default.svc.cluster.local. 5 IN A 10.96.120.15"]


def test_axfr_refused_over_tcp(default_server):
    resp = default_server.query("cluster.local.", "AXFR", tcp=True)
    assert resp.rcode() == dns.rcode.REFUSED


def test_ipv6_listen():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not configured")
    server = Kdns(listen="[::1]:0")
    try:
        for tcp in (False, True):
            resp = server.query("webapp.default.svc.cluster.local.", tcp=tcp)
            assert section_lines(resp.answer) == ["webapp.default.svc.cluster.local. 5 IN A 10.96.45.200"]
    finally:
        server.stop()


# ---------------------------------------------------------------- bad packets

def raw_udp(port: int, payload: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def header(data: bytes) -> tuple[int, int, int, int, int, int]:
    return struct.unpack("!HHHHHH", data[:12])


def test_bad_packets_get_formerr_or_are_dropped_and_server_survives(default_server):
    port = default_server.port
    good = dns.message.make_query("webapp.default.svc.cluster.local.", "A").to_wire()
    assert raw_udp(port, b"\x12") is None                              # runt: dropped
    assert raw_udp(port, b"\x12\x34" + b"\x81\x80" + good[4:]) is None  # QR=1 (a response): dropped
    garbage = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff"
    reply = raw_udp(port, garbage)
    qid, flags, *_ = header(reply)
    assert qid == 0xABCD and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    two_questions = good[:4] + b"\x00\x02" + good[6:]
    qid, flags, *_ = header(raw_udp(port, two_questions))
    assert flags & 0xF == dns.rcode.FORMERR
    # Label pointing at itself: a compression loop.
    loop = good[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    assert header(raw_udp(port, loop))[1] & 0xF == dns.rcode.FORMERR
    # Still answering normally afterwards.
    assert section_lines(default_server.query("webapp.default.svc.cluster.local.").answer) == [
        "webapp.default.svc.cluster.local. 5 IN A 10.96.45.200"]


def test_opcode_other_than_query_is_notimp(default_server):
    q = dns.message.make_query("webapp.default.svc.cluster.local.", "A")
    q.set_opcode(dns.opcode.UPDATE)
    qid, flags, *_ = header(raw_udp(default_server.port, q.to_wire()))
    assert qid == q.id and flags & 0xF == dns.rcode.NOTIMP and (flags >> 11) & 0xF == dns.opcode.UPDATE


def test_rd_is_copied_and_edns_do_echoed(default_server):
    q = dns.message.make_query("webapp.default.svc.cluster.local.", "A", want_dnssec=True)
    q.flags &= ~dns.flags.RD
    resp = default_server.send(q)
    assert not resp.flags & dns.flags.RD
    assert resp.ednsflags & dns.flags.DO
    assert resp.payload == 1232


def test_tcp_garbage_does_not_kill_the_server(default_server):
    with socket.create_connection(("127.0.0.1", default_server.port), timeout=5) as s:
        s.sendall(b"\x00\x05hello")
        s.sendall(b"\x00\x03ab")        # short frame then close
    resp = default_server.query("nginx.default.svc.cluster.local.", tcp=True)
    assert resp.rcode() == dns.rcode.NOERROR


# ---------------------------------------------------------------- bad manifests

def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdns", "serve", "--listen", "127.0.0.1:0", "--resolv-conf", "", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


BAD = {
    "bad-ip.yaml": ("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
                    "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n"
                    "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n",
                    "bad-ip.yaml, document 1: Service/shop/web: field spec.clusterIP: invalid IP address '10.96.0.300'"),
    "bad-port.yaml": ("kind: Service\napiVersion: v1\nmetadata: {name: web}\nspec: {ports: [{name: http, port: 70000}]}\n",
                      "bad-port.yaml, document 0: Service/default/web: field spec.ports[0].port: must be a port number 1-65535, got 70000"),
    "no-name.yaml": ("kind: Service\napiVersion: v1\nmetadata: {namespace: shop}\nspec: {ports: [{port: 80}]}\n",
                     "no-name.yaml, document 0: Service/shop/?: field metadata.name: is required"),
    "no-label.yaml": ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-abc, namespace: shop}\n"
                      "addressType: IPv4\nendpoints: [{addresses: [10.244.0.5]}]\n",
                      "no-label.yaml, document 0: EndpointSlice/shop/web-abc: field metadata.labels[kubernetes.io/service-name]: is required"),
    "bad-slice-ip.yaml": ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                          "metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}\n"
                          "addressType: IPv4\nendpoints: [{addresses: [10.244.0.5]}, {addresses: [not-an-ip]}]\n",
                          "bad-slice-ip.yaml, document 0: EndpointSlice/shop/web-abc: field endpoints[1].addresses[0]: invalid IP address 'not-an-ip'"),
    "unparsable.yaml": ("kind: Service\nmetadata: {name: [unclosed\n",
                        "unparsable.yaml: does not parse:"),
    "list.json": ('{"kind": "List", "items": [{"kind": "Service", "apiVersion": "v1", "metadata": {"name": "x"},'
                  ' "spec": {"ports": [{"port": 0}]}}]}',
                  "list.json, document 0, items[0]: Service/default/x: field spec.ports[0].port: must be a port number 1-65535, got 0"),
}


@pytest.mark.parametrize("filename", sorted(BAD))
def test_bad_manifest_names_file_document_object_field(tmp_path, filename):
    text, want = BAD[filename]
    path = tmp_path / filename
    path.write_text(text)
    out = run_serve("--manifests", str(path))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [l for l in out.stderr.splitlines() if "problem" not in l]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("kdns: " + str(tmp_path / want.split(",")[0].split(":")[0]))
    assert want in lines[0]


def test_every_problem_is_reported_at_once(tmp_path):
    for name in ("bad-ip.yaml", "bad-port.yaml", "no-label.yaml"):
        (tmp_path / name).write_text(BAD[name][0])
    out = run_serve("--manifests", str(tmp_path))
    assert out.returncode == 2
    assert "3 problem(s) in the manifests" in out.stderr
    for name in ("bad-ip.yaml", "bad-port.yaml", "no-label.yaml"):
        assert BAD[name][1] in out.stderr


def test_missing_path_is_a_clear_error(tmp_path):
    out = run_serve("--manifests", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2
    assert f"kdns: {tmp_path / 'nope.yaml'}: no such file or directory" in out.stderr


def test_bad_flags_are_clear():
    out = run_serve("--ttl", "4000")
    assert out.returncode == 2 and "--ttl 4000: must be 0-3600" in out.stderr
    out = run_serve("--listen", "nonsense:xx")
    assert out.returncode == 2 and "Traceback" not in out.stderr


# ---------------------------------------------------------------- manifests: kinds, allocation, reload

def test_app_manifests_skip_other_kinds_and_allocate_stable_ips():
    server = Kdns("--manifests", str(ROOT / "zones" / "examples"))
    try:
        first = server.query("frontend.shop.svc.cluster.local.")
        ip = first.answer[0][0].address
        assert ip.startswith("10.") and first.rcode() == dns.rcode.NOERROR
        log = server.stop()
        assert "Deployment object(s)" not in log            # a Deployment makes pods now
        assert "derived 2 pods for Deployment shop/frontend" in log
        assert "skipping 1 ConfigMap object(s)" in log
        assert f"allocated clusterIP {ip} to Service shop/frontend" in log
    finally:
        server.stop()
    again = Kdns("--manifests", str(ROOT / "zones" / "examples"))
    try:
        assert again.query("frontend.shop.svc.cluster.local.").answer[0][0].address == ip
        # Legacy v1 Endpoints: ready addresses published, notReadyAddresses not.
        resp = again.query("_postgres._tcp.legacy-db.default.svc.cluster.local.", "SRV")
        assert section_lines(resp.answer) == [
            "_postgres._tcp.legacy-db.default.svc.cluster.local. 5 IN SRV 0 100 5432 legacy-db.default.svc.cluster.local."]
        resp = again.query("192-168-10-21.legacy-db.default.svc.cluster.local.")
        assert section_lines(resp.answer) == ["192-168-10-21.legacy-db.default.svc.cluster.local. 5 IN A 192.168.10.21"]
        assert again.query("192-168-10-23.legacy-db.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    finally:
        again.stop()


def test_reload_applies_good_changes_and_keeps_last_good_data(tmp_path):
    path = tmp_path / "app.yaml"
    svc = "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
    path.write_text(svc.format(ip="10.96.7.7"))
    server = Kdns("--manifests", str(path), "--reload", "0.2")
    try:
        def address():
            r = server.query("web.default.svc.cluster.local.")
            return r.answer[0][0].address if r.answer else None
        assert address() == "10.96.7.7"
        path.write_text(svc.format(ip="10.96.8.8"))
        assert wait_for(lambda: address() == "10.96.8.8")
        path.write_text(svc.format(ip="10.96.999.8"))            # a bad edit
        assert wait_for(lambda: "reload failed: still serving the last good manifests" in server.log())
        assert "field spec.clusterIP: invalid IP address '10.96.999.8'" in server.log()
        assert address() == "10.96.8.8"
    finally:
        server.stop()


def test_sigterm_exits_zero(default_server):
    server = Kdns()
    server.proc.terminate()
    assert server.proc.wait(15) == 0
    server.stop()


# ---------------------------------------------------------------- the import direction

def test_import_contracts_hold():
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("import-linter is a test dependency: pip install '.[test]'")
    out = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" not in out.stdout.lower().replace("0 broken", "")
