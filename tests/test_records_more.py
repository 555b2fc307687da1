"""Record shapes beyond the vectors: quirks answered the RFC way, reverse apexes, pod names,
manifest formats, and a bounded fuzz of malformed packets."""

from __future__ import annotations

import json
import random
import socket

import dns.flags
import dns.message
import dns.rcode
import pytest

from conftest import DATA, Kdns
from test_vectors import section_lines

SOA = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local."


@pytest.mark.parametrize("name, qtype, rcode, answer", [
    # Q8: underscores are optional in _port._proto.
    ("http.tcp.web.prod.svc.cluster.local.", "SRV", "NOERROR",
     ["http.tcp.web.prod.svc.cluster.local. 5 IN SRV 0 100 80 web.prod.svc.cluster.local."]),
    # Q5: A on a port name is NODATA.
    ("_http._tcp.web.prod.svc.cluster.local.", "A", "NOERROR", []),
    # Q6: mixed-case apex NS answers.
    ("Cluster.Local.", "NS", "NOERROR", ["Cluster.Local. 5 IN NS kube-dns.kube-system.svc.Cluster.Local."]),
    # Q10: extra labels in the pod tree are NXDOMAIN.
    ("x.10-244-1-11.prod.pod.cluster.local.", "A", "NXDOMAIN", []),
    ("10-244-1-11.prod.pod.cluster.local.", "AAAA", "NOERROR", []),
    ("010-244-1-11.prod.pod.cluster.local.", "A", "NXDOMAIN", []),
    ("not-an-ip.prod.pod.cluster.local.", "A", "NXDOMAIN", []),
    ("prod.pod.cluster.local.", "A", "NOERROR", []),
    ("pod.cluster.local.", "TXT", "NOERROR", []),
    ("empty-ns.svc.cluster.local.", "A", "NOERROR", []),
    ("ns.dns.cluster.local.", "A", "NOERROR", ["ns.dns.cluster.local. 5 IN A 127.0.0.1"]),
    ("dns.cluster.local.", "A", "NOERROR", []),
    ("db-0.db.prod.svc.cluster.local.", "SRV", "NOERROR",
     ["db-0.db.prod.svc.cluster.local. 5 IN SRV 0 50 5432 db-0.db.prod.svc.cluster.local."]),
    ("db-0.db.prod.svc.cluster.local.", "AAAA", "NOERROR", ["db-0.db.prod.svc.cluster.local. 5 IN AAAA fd00:10:244:2::10"]),
    ("web.prod.svc.cluster.local.", "MX", "NOERROR", []),
    ("nosuch.prod.svc.cluster.local.", "TXT", "NXDOMAIN", []),
    ("ext.prod.svc.cluster.local.", "TXT", "NOERROR", []),
    ("portless.prod.svc.cluster.local.", "SRV", "NOERROR", []),
    ("legacy.portless.prod.svc.cluster.local.", "A", "NOERROR",
     ["legacy.portless.prod.svc.cluster.local. 5 IN A 10.244.5.20"]),
    ("a.b.c.web.prod.svc.cluster.local.", "A", "NXDOMAIN", []),
    ("svc1.testns.svc.0.10.in-addr.arpa.", "A", "NXDOMAIN", []),
    ("1.0.96.10.in-addr.arpa.", "A", "NOERROR", []),
    ("96.10.in-addr.arpa.", "PTR", "NXDOMAIN", []),
    ("41.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa.", "PTR", "NXDOMAIN", []),
    ("1.4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa.", "PTR", "NOERROR",
     ["1.4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa. 5 IN PTR "
      "fd00-10-244-1--41.v6only.prod.svc.cluster.local."]),
])
def test_more_records(vectors_server, name, qtype, rcode, answer):
    resp = vectors_server().query(name, qtype)
    assert dns.rcode.to_text(resp.rcode()) == rcode
    assert section_lines(resp.answer) == answer
    assert resp.flags & dns.flags.AA
    if not answer:
        assert len(resp.authority) == 1 and section_lines(resp.authority)[0].split()[3] == "SOA"
    else:
        assert resp.authority == []


@pytest.mark.parametrize("zone", ["in-addr.arpa.", "ip6.arpa."])
def test_reverse_zone_apex(vectors_server, zone):
    server = vectors_server()
    resp = server.query(zone, "SOA")
    assert resp.rcode() == dns.rcode.NOERROR
    (line,) = section_lines(resp.answer)
    assert line.startswith(f"{zone} 5 IN SOA ns.dns.{zone} hostmaster.{zone} ")
    assert line.endswith(" 7200 1800 86400 5")
    resp = server.query(zone, "NS")
    assert section_lines(resp.answer) == [f"{zone} 5 IN NS kube-dns.kube-system.svc.cluster.local."]
    assert section_lines(resp.additional) == ["kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10"]


def test_ttl_flag_and_soa_ttl_cap(tmp_path):
    server = Kdns("--manifests", str(DATA / "cluster.yaml"), "--ttl", "600")
    try:
        resp = server.query("web.prod.svc.cluster.local.")
        assert section_lines(resp.answer) == ["web.prod.svc.cluster.local. 600 IN A 10.96.10.1"]
        resp = server.query("nosuch.prod.svc.cluster.local.")
        (soa,) = section_lines(resp.authority)
        assert soa.startswith("cluster.local. 300 IN SOA ") and soa.endswith(" 600")   # min(ttl, 300); MINIMUM = ttl
        resp = server.query("dns-version.cluster.local.", "TXT")
        assert section_lines(resp.answer) == ['dns-version.cluster.local. 28800 IN TXT "1.1.0"']
    finally:
        server.stop()


def test_custom_domain(tmp_path):
    server = Kdns("--manifests", str(DATA / "cluster.yaml"), "--domain", "Corp.Example.")
    try:
        resp = server.query("web.prod.svc.corp.example.")
        assert section_lines(resp.answer) == ["web.prod.svc.corp.example. 5 IN A 10.96.10.1"]
        assert server.query("web.prod.svc.cluster.local.").rcode() == dns.rcode.REFUSED
        resp = server.query("1.10.96.10.in-addr.arpa.", "PTR")
        assert section_lines(resp.answer) == ["1.10.96.10.in-addr.arpa. 5 IN PTR web.prod.svc.corp.example."]
    finally:
        server.stop()


def test_json_list_dump_as_kubectl_prints_it(tmp_path):
    dump = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "shop",
                                                             "resourceVersion": "123", "uid": "u1"},
         "spec": {"clusterIP": "10.96.3.3", "clusterIPs": ["10.96.3.3"], "type": "ClusterIP",
                  "ports": [{"name": "grpc", "port": 9000, "protocol": "TCP", "targetPort": 9000}]},
         "status": {"loadBalancer": {}}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "api-x1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "api"}},
         "addressType": "IPv4", "ports": [{"name": "grpc", "port": 9000, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["10.244.9.9"], "conditions": {"ready": True}}]},
    ]}
    (tmp_path / "dump.json").write_text(json.dumps(dump, indent=2))
    server = Kdns("--manifests", str(tmp_path))
    try:
        resp = server.query("_grpc._tcp.api.shop.svc.cluster.local.", "SRV")
        assert section_lines(resp.answer) == [
            "_grpc._tcp.api.shop.svc.cluster.local. 5 IN SRV 0 100 9000 api.shop.svc.cluster.local."]
        resp = server.query("10-244-9-9.api.shop.svc.cluster.local.")
        assert section_lines(resp.answer) == ["10-244-9-9.api.shop.svc.cluster.local. 5 IN A 10.244.9.9"]
        assert server.query("shop.svc.cluster.local.").rcode() == dns.rcode.NOERROR   # namespace implied
    finally:
        server.stop()


def test_fuzzed_packets_never_kill_the_server(vectors_server):
    """A bounded fuzz (2,000 packets): random bytes and mutations of valid queries."""
    server = vectors_server()
    rng = random.Random(1234)
    seeds = [dns.message.make_query(n, t).to_wire() for n, t in [
        ("web.prod.svc.cluster.local.", "A"), ("_http._tcp.web.prod.svc.cluster.local.", "SRV"),
        ("11.1.244.10.in-addr.arpa.", "PTR"), ("www.example.com.", "A")]]
    replies = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for burst in range(40):                  # 40 bursts of 50, then drain what came back
            ids = set()
            for i in range(50):
                if i % 3 == 0:
                    pkt = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
                else:
                    buf = bytearray(rng.choice(seeds))
                    for _ in range(rng.randrange(1, 6)):
                        buf[rng.randrange(len(buf))] = rng.getrandbits(8)
                    pkt = bytes(buf[:rng.randrange(len(buf) + 1)] if i % 7 == 0 else buf)
                ids.add(pkt[:2])
                s.sendto(pkt, ("127.0.0.1", server.port))
            s.settimeout(0.1)
            try:
                while True:
                    reply = s.recv(65535)
                    assert reply[:2] in ids and reply[2] & 0x80      # an ID we sent, QR set
                    replies += 1
            except socket.timeout:
                pass
    assert replies > 0
    resp = server.query("web.prod.svc.cluster.local.")
    assert section_lines(resp.answer) == ["web.prod.svc.cluster.local. 5 IN A 10.96.10.1"]
    assert server.proc.poll() is None
