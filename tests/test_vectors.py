"""Every DNS vector of cases.yaml (a copy lives in tests/data) against a real kdns over UDP/TCP.

Expectations are compared exactly: rcode, every section (as sets of zone-file lines, CNAME
first), flags and TTLs. Quirk cases assert the recommended (RFC-consistent) answer.
"""

from __future__ import annotations

import re

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
import yaml

from conftest import DATA

CASES = yaml.safe_load((DATA / "cases.yaml").read_text())
# Cases that need an upstream resolver belong to the forwarding tests (test_forward*.py).
NEEDS_UPSTREAM = {"out-of-zone-forwarded", "externalname-a-chased"}


def expand(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        m = re.search(r"\{(\d+)\.\.(\d+)\}", line)
        if m:
            out.extend(line[:m.start()] + str(i) + line[m.end():]
                       for i in range(int(m.group(1)), int(m.group(2)) + 1))
        else:
            out.append(line)
    return out


def normalize(line: str, keep_case: bool) -> str:
    parts = line.split()
    if parts[3] == "SOA":
        parts[6] = "SERIAL"
    text = " ".join(parts)
    return text if keep_case else text.lower()


def section_lines(section) -> list[str]:
    out = []
    for rrset in section:
        if rrset.rdtype == dns.rdatatype.OPT:
            continue
        for rdata in rrset:
            out.append(f"{rrset.name} {rrset.ttl} {dns.rdataclass.to_text(rrset.rdclass)} "
                       f"{dns.rdatatype.to_text(rrset.rdtype)} {rdata.to_text()}")
    return out


def run_case(server, case) -> dns.message.Message:
    edns = case.get("edns", {"udp_size": 1232})
    qclass = case.get("qclass", "IN")
    tcp = case.get("transport") == "tcp" or case["qtype"] in ("AXFR", "IXFR")
    if edns is None:
        q = dns.message.make_query(case["name"], case["qtype"], qclass, use_edns=False)
    else:
        q = dns.message.make_query(case["name"], case["qtype"], qclass,
                                   use_edns=edns.get("version", 0), payload=edns.get("udp_size", 1232))
    return server.send(q, tcp=tcp), q


@pytest.mark.parametrize("case", [c for c in CASES if c["id"] not in NEEDS_UPSTREAM], ids=lambda c: c["id"])
def test_vector(vectors_server, case):
    server = vectors_server(**case.get("config", {}))
    resp, q = run_case(server, case)
    keep_case = "case" in case["id"]

    assert dns.rcode.to_text(resp.rcode()) == case["rcode"]
    assert resp.id == q.id
    assert resp.question == q.question
    assert resp.question[0].name.to_text() == q.question[0].name.to_text()     # spelling echoed
    assert resp.flags & dns.flags.QR
    assert not resp.flags & dns.flags.RA
    assert bool(resp.flags & dns.flags.RD) == bool(q.flags & dns.flags.RD)
    if case["rcode"] in ("NOERROR", "NXDOMAIN", "SERVFAIL"):
        assert resp.flags & dns.flags.AA
    # An OPT RR in the response iff the query had one.
    assert (resp.edns >= 0) == (q.edns >= 0)

    got = [normalize(l, keep_case) for l in section_lines(resp.answer)]
    want = [normalize(l, keep_case) for l in expand(case.get("answer", []))]
    if case.get("answer_match") == "subset":
        assert set(got) <= set(want)
        assert len(got) == len(set(got))
    else:
        assert sorted(got) == sorted(want)
    if "answer_count" in case:
        assert len(got) == case["answer_count"]
    if any(" CNAME " in w.upper() for w in want):
        assert resp.answer[0].rdtype == dns.rdatatype.CNAME      # CNAME precedes its target's records
    if "tc" in case:
        assert bool(resp.flags & dns.flags.TC) == case["tc"]
    else:
        assert not resp.flags & dns.flags.TC

    got_auth = sorted(normalize(l, keep_case) for l in section_lines(resp.authority))
    assert got_auth == sorted(normalize(l, keep_case) for l in case.get("authority", []))
    got_add = sorted(normalize(l, keep_case) for l in section_lines(resp.additional))
    assert got_add == sorted(normalize(l, keep_case) for l in case.get("additional", []))


def test_truncated_answer_is_complete_over_tcp(vectors_server):
    server = vectors_server()
    resp = server.query("big.prod.svc.cluster.local.", "A", tcp=True, edns=False)
    assert not resp.flags & dns.flags.TC
    assert sorted(section_lines(resp.answer)) == sorted(
        expand(["big.prod.svc.cluster.local. 5 IN A 10.244.100.{1..60}"]))


def test_truncated_udp_fits_512(vectors_server):
    server = vectors_server()
    q = dns.message.make_query("big.prod.svc.cluster.local.", "A", use_edns=False)
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(q.to_wire(), ("127.0.0.1", server.port))
        data = s.recv(65535)
    assert len(data) == 508           # 12 header + 32 question + 29 x 16 (dns-behavior.md §8)


def test_external_name_without_upstream_is_cname_alone(vectors_server):
    resp = vectors_server().query("ext.prod.svc.cluster.local.", "A")
    assert resp.rcode() == dns.rcode.NOERROR
    assert section_lines(resp.answer) == ["ext.prod.svc.cluster.local. 5 IN CNAME www.example.com."]
    assert resp.authority == []


def test_out_of_zone_without_upstream_is_refused(vectors_server):
    resp = vectors_server().query("www.example.com.", "A")
    assert resp.rcode() == dns.rcode.REFUSED
    assert resp.answer == [] and resp.authority == []
    assert not resp.flags & dns.flags.AA
