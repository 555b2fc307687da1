"""Many queries in flight at once: the recvmmsg/sendmmsg loop (the default) and the one
recvfrom/sendto per query loop (--udp-batch 1) must give every sender exactly its own answers.

Queries are written to the socket without waiting, so kdns finds dozens queued per recvmmsg;
among them are packets that get no answer (a runt, a response), one that gets FORMERR, and names
answered later by a worker (a forwarded name, an ExternalName chase), which split a sendmmsg run.
"""

from __future__ import annotations

import select
import socket
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from dnsstub import Stub
from kdnsproc import DATA, KdnsProcess

UPSTREAM = ["www.example.com. 300 IN A 192.0.2.53", "www.example.com. 300 IN AAAA 2001:db8::53"]
CASES = {c["id"]: c for c in yaml.safe_load((DATA / "cases.yaml").read_text())}
BURST = ["clusterip-a", "dualstack-aaaa", "case-insensitive-a", "nx-service", "nodata-namespace",
         "srv-named-port", "headless-a", "headless-hostname-a", "externalname-a-chased",
         "out-of-zone-forwarded"]
RUNT = b"\x12\x34\x01"
FORMERR_QUERY = b"\x56\x78\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00"   # QDCOUNT 2


def lines(section) -> list[str]:
    return sorted(f"{rrset.name} {ttl(rrset)} IN {dns.rdatatype.to_text(rrset.rdtype)} {rd}"
                  for rrset in section for rd in rrset)


def ttl(rrset) -> int:
    """The upstream's records come from the forwarding cache, whose TTLs count down from 300 as
    the test runs (exactly, tests/test_forward.py); cluster records keep theirs."""
    if rrset.name.to_text() == "www.example.com." and 290 <= rrset.ttl <= 300:
        return 300
    return rrset.ttl


def expect(case_id: str, r: dns.message.Message) -> None:
    case = CASES[case_id]
    assert dns.rcode.to_text(r.rcode()) == case["rcode"], case_id
    assert lines(r.answer) == sorted(case["answer"]), case_id
    serial = str(r.authority[0][0].serial) if r.authority else ""
    assert lines(r.authority) == sorted(a.replace("SERIAL", serial) for a in case["authority"]), case_id
    assert bool(r.flags & dns.flags.AA) == (case_id != "out-of-zone-forwarded"), case_id
    assert not r.flags & dns.flags.TC, case_id


@pytest.fixture(scope="module")
def upstream():
    s = Stub(UPSTREAM)
    yield s
    s.close()


def serve(upstream, batch: str, listen: str = "127.0.0.1:0") -> KdnsProcess:
    return KdnsProcess("--manifests", str(DATA / "cluster.yaml"), "--pod-ip", "10.244.0.10",
                       "--reload", "0", "--upstream", f"127.0.0.1:{upstream.port}",
                       "--udp-batch", batch, listen=listen)


@pytest.fixture(scope="module", params=["64", "1"], ids=["recvmmsg", "recvfrom"])
def kdns(request, upstream):
    k = serve(upstream, request.param)
    yield k
    k.stop()


def burst(family: int, host: str, port: int, packets: list[bytes], want: int,
          timeout: float = 10.0) -> dict[int, dns.message.Message]:
    """Write every packet, then read answers until ``want`` have come (or ``timeout``)."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for p in packets:
            sock.sendto(p, (host, port))
        answers: dict[int, dns.message.Message] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < want and select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
            data = sock.recv(65535)
            r = dns.message.from_wire(data)
            assert r.id not in answers, f"two answers for ID {r.id}"
            answers[r.id] = r
        return answers


def queries(rounds: int, first_id: int = 1000) -> dict[int, str]:
    """``rounds`` copies of every BURST case, interleaved, each with its own ID."""
    return {first_id + i: BURST[i % len(BURST)] for i in range(rounds * len(BURST))}


def wire(case_id: str, qid: int) -> bytes:
    case = CASES[case_id]
    q = dns.message.make_query(case["name"], case["qtype"])
    q.id = qid
    return q.to_wire()


def test_a_burst_from_one_socket_gets_every_answer_once(kdns):
    asked = queries(rounds=12)
    packets = [wire(case_id, qid) for qid, case_id in asked.items()]
    # junk in the middle of the burst: no answer for a runt or a response, FORMERR for the rest
    response = dns.message.make_response(dns.message.make_query("web.prod.svc.cluster.local.", "A"))
    packets[5:5] = [RUNT, response.to_wire(), FORMERR_QUERY]
    answers = burst(socket.AF_INET, "127.0.0.1", kdns.port, packets, want=len(asked) + 1)
    assert answers.pop(0x5678).rcode() == dns.rcode.FORMERR
    assert sorted(answers) == sorted(asked)
    for qid, r in answers.items():
        expect(asked[qid], r)


def test_answers_go_back_to_the_socket_that_asked(kdns):
    """Thirty clients with their queries interleaved in kdns's queue: each gets its own three."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(30)]
    try:
        for rnd in range(3):
            for n, s in enumerate(socks):
                case_id = BURST[(n + rnd) % len(BURST)]
                s.sendto(wire(case_id, n * 10 + rnd), ("127.0.0.1", kdns.port))
        for n, s in enumerate(socks):
            got = {}
            deadline = time.monotonic() + 10
            while len(got) < 3 and select.select([s], [], [], max(0.0, deadline - time.monotonic()))[0]:
                r = dns.message.from_wire(s.recv(65535))
                got[r.id] = r
            assert sorted(got) == [n * 10, n * 10 + 1, n * 10 + 2]
            for rnd in range(3):
                expect(BURST[(n + rnd) % len(BURST)], got[n * 10 + rnd])
    finally:
        for s in socks:
            s.close()


def test_a_burst_over_ipv6(upstream):
    k = serve(upstream, "64", listen="[::1]:0")
    try:
        asked = queries(rounds=5, first_id=2000)
        answers = burst(socket.AF_INET6, "::1", k.port, [wire(c, q) for q, c in asked.items()],
                        want=len(asked))
        assert sorted(answers) == sorted(asked)
        for qid, r in answers.items():
            expect(asked[qid], r)
    finally:
        k.stop()


@pytest.mark.parametrize("value", ["0", "1025", "x"])
def test_udp_batch_out_of_range_is_refused(value):
    k = KdnsProcess("--udp-batch", value, wait=False)
    assert k.wait_exit() == 2
    assert "--udp-batch" in k.log()
