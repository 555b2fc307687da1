"""The miss path's shortcut (kdns.direct) answers exactly what the generic path answers.

An A/AAAA question for a Service or endpoint name that misses the packet cache over UDP is
written by kdns.direct; over TCP (no packet cache) the same question always takes the generic
answer engine and writer. So every such question is asked both ways, once each, and the two
responses must be the same bytes: header, flags, counts, every section, TTLs, name case and
compression. Names come from the manifests themselves (read here with PyYAML, not with kdns),
plus names that do not exist, in every spelling and EDNS shape a client sends.
"""

from __future__ import annotations

import itertools
import socket
import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
import yaml

from conftest import DATA, Kdns

CLUSTER = DATA / "cluster.yaml"


def cluster_names(path) -> list[str]:
    """Every Service name and endpoint name of a manifest file, and some that do not exist."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    names = []
    for d in docs:
        meta = d.get("metadata", {})
        if d["kind"] == "Service":
            names.append(f"{meta['name']}.{meta['namespace']}.svc.cluster.local.")
        elif d["kind"] == "EndpointSlice":
            svc = meta["labels"]["kubernetes.io/service-name"]
            for ep in d.get("endpoints") or ():
                for ip in ep["addresses"]:
                    label = ep.get("hostname") or ip.replace(".", "-").replace(":", "-")
                    if label.endswith("-"):
                        label += "0"
                    names.append(f"{label}.{svc}.{meta['namespace']}.svc.cluster.local.")
    names += ["nope.prod.svc.cluster.local.", "web.nope.svc.cluster.local.",
              "nope.web.prod.svc.cluster.local.", "web.empty-ns.svc.cluster.local.",
              "x.kubernetes.default.svc.cluster.local."]
    return list(dict.fromkeys(names))


def spellings(name: str) -> list[str]:
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(name))
    return [name, name.upper(), mixed]


def shapes(name: str, rdtype: str) -> list[dns.message.Message]:
    """The same question without EDNS, with EDNS, with DO, and with a client COOKIE."""
    cookie = dns.edns.GenericOption(10, bytes(range(8)))
    out = [dns.message.make_query(name, rdtype, use_edns=False),
           dns.message.make_query(name, rdtype, use_edns=0, payload=1232),
           dns.message.make_query(name, rdtype, use_edns=0, payload=4096, want_dnssec=True),
           dns.message.make_query(name, rdtype, use_edns=0, payload=1232, options=[cookie])]
    for n, q in enumerate(out):
        q.id = 0x1000 + n
    return out


def udp(server: Kdns, packet: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(packet, (server.host, server.port))
        return s.recv(65535)


def tcp(server: Kdns, packet: bytes) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=3) as s:
        s.sendall(struct.pack("!H", len(packet)) + packet)
        size = b""
        while len(size) < 2:
            size += s.recv(2 - len(size))
        (n,) = struct.unpack("!H", size)
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            assert chunk, "TCP connection closed mid-answer"
            data += chunk
        return data


def truncated(over_udp: bytes, over_tcp: bytes, limit: int) -> None:
    """A truncated datagram: the whole answer did not fit, and what was sent is its first
    records, whole (the same bytes up to where the datagram stops, counts aside)."""
    assert len(over_tcp) > limit >= len(over_udp)
    assert over_udp[:2] == over_tcp[:2] and over_udp[3:6] == over_tcp[3:6]
    assert over_udp[2] == over_tcp[2] | 0x02
    (sent,) = struct.unpack("!H", over_udp[6:8])
    (whole,) = struct.unpack("!H", over_tcp[6:8])
    assert 0 < sent < whole and over_udp[12:] == over_tcp[12:len(over_udp)]


@pytest.fixture(scope="module")
def fixed():
    server = Kdns("--manifests", str(CLUSTER), "--ttl", "7", "--no-loadbalance")
    yield server
    server.stop()


def test_every_service_and_endpoint_name_answers_the_same_bytes_over_udp_and_tcp(fixed):
    names = cluster_names(CLUSTER)
    assert len(names) > 20
    asked = 0
    for name, rdtype in itertools.product(names, ("A", "AAAA")):
        for spelled in spellings(name):
            for q in shapes(spelled, rdtype):
                wire = q.to_wire()
                over_udp = udp(fixed, wire)          # a packet-cache miss: kdns.direct
                over_tcp = tcp(fixed, wire)          # never cached: the generic path
                if over_udp[2] & 0x02:               # TC: too big for this datagram
                    truncated(over_udp, over_tcp, 512 if q.edns < 0 else q.payload)
                else:
                    assert over_udp == over_tcp, (spelled, rdtype, q.edns, over_udp.hex(),
                                                  over_tcp.hex())
                assert udp(fixed, wire) == over_udp  # and the cached copy is the same again
                asked += 1
    assert asked == len(names) * 2 * 3 * 4


def test_the_shortcut_answers_keep_exact_sections_ttls_and_case(fixed):
    """What the equal bytes are, for one name of each kind (so equality is not of two wrongs)."""
    q = dns.message.make_query("WEB.prod.svc.Cluster.Local.", "A", use_edns=0, payload=1232)
    r = dns.message.from_wire(udp(fixed, q.to_wire()))
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and r.flags & dns.flags.QR and not r.flags & dns.flags.TC
    assert [(rr.name.to_text(), rr.ttl, sorted(x.to_text() for x in rr)) for rr in r.answer] == \
        [("WEB.prod.svc.Cluster.Local.", 7, ["10.96.10.1"])]
    assert r.authority == [] and r.additional == []
    assert r.edns == 0 and r.payload == 1232 and r.options == ()

    q = dns.message.make_query("nope.prod.svc.cluster.local.", "A", use_edns=False)
    r = dns.message.from_wire(udp(fixed, q.to_wire()))
    assert r.rcode() == dns.rcode.NXDOMAIN and r.answer == [] and r.edns == -1
    (soa,) = r.authority
    assert (soa.name.to_text(), soa.ttl) == ("cluster.local.", 7)
    assert soa[0].mname.to_text() == "ns.dns.cluster.local."
    assert (soa[0].refresh, soa[0].retry, soa[0].expire, soa[0].minimum) == (7200, 1800, 86400, 7)

    q = dns.message.make_query("web.prod.svc.cluster.local.", "AAAA", use_edns=False)
    r = dns.message.from_wire(udp(fixed, q.to_wire()))
    assert r.rcode() == dns.rcode.NOERROR and r.answer == [] and len(r.authority) == 1

    q = dns.message.make_query("dual.prod.svc.cluster.local.", "AAAA", use_edns=False)
    r = dns.message.from_wire(udp(fixed, q.to_wire()))
    assert [sorted(x.to_text() for x in rr) for rr in r.answer] == [["fd00:10:96::3"]]


@pytest.fixture(scope="module")
def big_manifest(tmp_path_factory):
    """A headless Service of 40 endpoints: its A answer (40 x 16 bytes) overflows 512 bytes."""
    path = tmp_path_factory.mktemp("big") / "big.yaml"
    eps = [{"addresses": [f"10.244.9.{i}"], "conditions": {"ready": True}} for i in range(1, 41)]
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "big"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hl", "namespace": "big"},
             "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "hl-1", "namespace": "big",
                          "labels": {"kubernetes.io/service-name": "hl"}},
             "addressType": "IPv4", "ports": [{"name": "http", "port": 80}], "endpoints": eps}]
    path.write_text(yaml.safe_dump_all(docs))
    return path


@pytest.fixture(scope="module")
def big(big_manifest):
    server = Kdns("--manifests", str(big_manifest), "--no-loadbalance")
    yield server
    server.stop()


def test_a_large_rotated_answer_cycles_through_every_record(big_manifest):
    """40 records are too many to keep every rotation made (packetcache.ROTATIONS_MAX): each hit
    slices the run instead, and still serves every address first once per 40 answers."""
    server = Kdns("--manifests", str(big_manifest))
    try:
        wire = dns.message.make_query("hl.big.svc.cluster.local.", "A", use_edns=0,
                                      payload=4096).to_wire()
        want = sorted(f"10.244.9.{i}" for i in range(1, 41))
        firsts = []
        for _ in range(41):
            r = dns.message.from_wire(udp(server, wire))
            (rrset,) = r.answer
            assert sorted(x.to_text() for x in rrset) == sorted(want) and rrset.ttl == 5
            firsts.append(rrset[0].to_text())
        assert sorted(firsts[:40]) == sorted(want) and firsts[40] == firsts[0]
    finally:
        server.stop()


def test_an_answer_too_big_for_the_datagram_is_truncated_by_whole_records(big):
    q = dns.message.make_query("hl.big.svc.cluster.local.", "A", use_edns=False)
    data = udp(big, q.to_wire())
    r = dns.message.from_wire(data)
    assert r.flags & dns.flags.TC
    fits = (512 - 12 - len(q.question[0].name.to_wire()) - 4) // 16
    assert len(data) == 12 + len(q.question[0].name.to_wire()) + 4 + fits * 16
    assert [len(rr) for rr in r.answer] == [fits]
    q = dns.message.make_query("hl.big.svc.cluster.local.", "A", use_edns=0, payload=4096)
    wire = q.to_wire()
    assert udp(big, wire) == tcp(big, wire)
    r = dns.message.from_wire(udp(big, wire))
    assert not r.flags & dns.flags.TC and [len(rr) for rr in r.answer] == [40]


def test_rotated_answers_hold_the_same_records_as_the_generic_path():
    server = Kdns("--manifests", str(CLUSTER))           # --loadbalance on: the default
    try:
        q = dns.message.make_query("web-hl.prod.svc.cluster.local.", "A", use_edns=False)
        wire = q.to_wire()
        firsts = set()
        for _ in range(6):
            over_udp = dns.message.from_wire(udp(server, wire))
            over_tcp = dns.message.from_wire(tcp(server, wire))
            assert sorted(x.to_text() for x in over_udp.answer[0]) == \
                sorted(x.to_text() for x in over_tcp.answer[0]) == \
                ["10.244.1.11", "10.244.1.12"]        # .13 is not ready
            firsts.add(over_udp.answer[0][0].to_text())
        assert firsts == {"10.244.1.11", "10.244.1.12"}
    finally:
        server.stop()
