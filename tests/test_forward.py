"""kdns.forward against real upstream servers on 127.0.0.1 (tests/dnsstub.py).

Time in the cache is a clock the test turns (Forwarder(clock=...)), so TTL expiry is exact
and no test waits for it.
"""

from __future__ import annotations

import threading

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from kdns import forward, rawwire
from kdns.forward import Forwarder, ForwardConfigError
from dnsstub import Stub, closed_port

ZONE = [
    "www.example.com. 300 IN A 192.0.2.53",
    "www.example.com. 300 IN AAAA 2001:db8::53",
    "short.example.com. 2 IN A 192.0.2.2",
    "alias.example.com. 60 IN CNAME www.example.com.",
    *[f"big.example.com. 300 IN A 198.51.100.{i}" for i in range(1, 61)],
    "a.example.com. 300 IN A 192.0.2.1",
    "b.example.com. 300 IN A 192.0.2.2",
    "c.example.com. 300 IN A 192.0.2.3",
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stub():
    s = Stub(ZONE)
    yield s
    s.hold.set()
    s.close()


@pytest.fixture
def clock():
    return Clock()


def ask(fwd: Forwarder, name: str, rdtype: str = "A", tcp: bool = False, edns: int | bool = 0,
        payload: int = 1232, want_dnssec: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload, want_dnssec=want_dnssec)
    wire = fwd.forward(q.to_wire(), tcp=tcp)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == q.id
    return r


def records(r: dns.message.Message, section: str = "answer") -> list[str]:
    """One zone-file line per record: "owner TTL IN TYPE rdata"."""
    return sorted(f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rd}"
                  for rrset in getattr(r, section) for rd in rrset)


def test_answer_is_relayed_with_client_id_and_aa_cleared(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    r = ask(fwd, "www.example.com.")
    assert r.rcode() == dns.rcode.NOERROR
    assert records(r) == ["www.example.com. 300 IN A 192.0.2.53"]
    assert not r.flags & dns.flags.AA      # the stub set AA; we are not the authority
    assert r.flags & dns.flags.QR and r.flags & dns.flags.RD and r.flags & dns.flags.RA
    assert r.edns == 0


def test_question_case_echoed_and_cache_shared_across_case(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    ask(fwd, "www.example.com.")
    q = dns.message.make_query("WwW.ExAmple.COM.", "A")
    r = dns.message.from_wire(fwd.forward(q.to_wire()))
    assert str(r.question[0].name) == "WwW.ExAmple.COM."
    assert stub.count() == 1


def test_no_edns_in_no_opt_out(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    r = ask(fwd, "www.example.com.", edns=False)
    assert r.edns == -1
    assert records(r) == ["www.example.com. 300 IN A 192.0.2.53"]


def test_cache_decrements_ttl_and_expires_at_the_ttl(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    ask(fwd, "www.example.com.")
    clock.now += 100
    assert records(ask(fwd, "www.example.com.")) == ["www.example.com. 200 IN A 192.0.2.53"]
    clock.now += 199
    assert records(ask(fwd, "www.example.com.")) == ["www.example.com. 1 IN A 192.0.2.53"]
    assert stub.count() == 1
    clock.now += 1                        # 300 s after the answer: its TTL is used up
    assert records(ask(fwd, "www.example.com.")) == ["www.example.com. 300 IN A 192.0.2.53"]
    assert stub.count() == 2


def test_cache_lifetime_is_the_smallest_ttl_in_the_message(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    r = ask(fwd, "alias.example.com.")
    # the stub does not chase; the CNAME (60 s) alone bounds the entry
    assert records(r) == ["alias.example.com. 60 IN CNAME www.example.com."]
    clock.now += 59
    ask(fwd, "alias.example.com.")
    assert stub.count() == 1
    clock.now += 1
    ask(fwd, "alias.example.com.")
    assert stub.count() == 2


def test_cache_key_includes_qtype_and_do_bit(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    ask(fwd, "www.example.com.", "A")
    ask(fwd, "www.example.com.", "AAAA")
    ask(fwd, "www.example.com.", "A", want_dnssec=True)
    ask(fwd, "www.example.com.", "A")
    assert stub.count() == 3


def test_negative_answer_cached_for_soa_minimum(stub, clock):
    # SOA TTL 600, MINIMUM 30 -> RFC 2308 §5: cache min(600, 30) = 30 s
    fwd = Forwarder([stub.addr], clock=clock)
    r = ask(fwd, "nope.example.com.")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert [rrset.rdtype for rrset in r.authority] == [dns.rdatatype.SOA]
    clock.now += 29
    assert ask(fwd, "nope.example.com.").rcode() == dns.rcode.NXDOMAIN
    assert stub.count() == 1
    clock.now += 1
    ask(fwd, "nope.example.com.")
    assert stub.count() == 2


def test_negative_cache_uses_soa_ttl_when_smaller(clock):
    s = Stub(ZONE, soa="example.com. 10 IN SOA ns.example.com. h.example.com. 1 7200 1800 86400 300")
    try:
        fwd = Forwarder([s.addr], clock=clock)
        r = ask(fwd, "www.example.com.", "MX")          # NODATA
        assert r.rcode() == dns.rcode.NOERROR and not r.answer
        clock.now += 9
        ask(fwd, "www.example.com.", "MX")
        assert s.count() == 1
        clock.now += 1
        ask(fwd, "www.example.com.", "MX")
        assert s.count() == 2
    finally:
        s.close()


def test_negative_answer_without_soa_is_not_cached(clock):
    s = Stub(ZONE, soa=None)
    try:
        fwd = Forwarder([s.addr], clock=clock)
        assert ask(fwd, "nope.example.com.").rcode() == dns.rcode.NXDOMAIN
        ask(fwd, "nope.example.com.")
        assert s.count() == 2
    finally:
        s.close()


def test_cache_is_bounded(stub, clock):
    fwd = Forwarder([stub.addr], cache_size=2, clock=clock)
    for name in ("a", "b", "c"):
        ask(fwd, f"{name}.example.com.")
    assert len(fwd._cache) == 2
    for name in ("a", "b", "c"):
        ask(fwd, f"{name}.example.com.")
    assert stub.count() > 3


def test_concurrent_identical_misses_make_one_upstream_query(stub, clock):
    # initial_rto: no retransmission while the upstream holds the answer on purpose
    fwd = Forwarder([stub.addr], clock=clock, timeout=10, deadline=10, initial_rto=10)
    stub.hold.clear()
    results: list[dns.message.Message] = []
    lock = threading.Lock()

    def client():
        r = ask(fwd, "www.example.com.")
        with lock:
            results.append(r)

    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    # Release the upstream only once nine clients are waiting on the first one's query.
    for _ in range(1000):
        if fwd.stats["coalesced"] == 9:
            break
        threading.Event().wait(0.01)
    assert fwd.stats["coalesced"] == 9
    stub.hold.set()
    for t in threads:
        t.join(10)
    assert len(results) == 10
    assert all(records(r) == ["www.example.com. 300 IN A 192.0.2.53"] for r in results)
    assert stub.count() == 1


def test_truncated_udp_reply_is_retried_over_tcp(stub, clock):
    stub.truncate.add("big.example.com")
    fwd = Forwarder([stub.addr], clock=clock)
    r = ask(fwd, "big.example.com.", payload=1232)
    assert len(r.answer[0]) == 60 and not r.flags & dns.flags.TC
    assert (stub.count("udp"), stub.count("tcp")) == (1, 1)


def test_reply_too_big_for_the_client_is_cut_at_a_record_with_tc(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    full = ask(fwd, "big.example.com.", tcp=True)
    assert len(full.answer[0]) == 60
    # No EDNS: 512 bytes. 12 header + 21 question + n * 16 (compressed A) <= 512 -> 29 records.
    q = dns.message.make_query("big.example.com.", "A", use_edns=False)
    wire = fwd.forward(q.to_wire())
    assert len(wire) <= 512
    r = dns.message.from_wire(wire)
    assert r.flags & dns.flags.TC and len(r.answer[0]) == 29
    assert stub.count() == 1


def test_tcp_query_goes_upstream_over_tcp(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    assert records(ask(fwd, "www.example.com.", tcp=True)) == ["www.example.com. 300 IN A 192.0.2.53"]
    assert (stub.count("udp"), stub.count("tcp")) == (0, 1)


@pytest.mark.parametrize("failure", ["drop", "servfail", "refused", "closed"])
def test_failover_to_the_second_upstream(stub, clock, failure):
    if failure == "closed":
        first = closed_port()
        bad = None
    else:
        bad = Stub(ZONE)
        bad.mode = failure
        first = bad.addr
    try:
        fwd = Forwarder([first, stub.addr], clock=clock, timeout=0.5)
        assert records(ask(fwd, "www.example.com.")) == ["www.example.com. 300 IN A 192.0.2.53"]
        if bad:
            assert bad.count(name="www.example.com") == 1
        assert stub.count(name="www.example.com") == 1
        # the failed upstream is now marked down and tried last (only its health probe, ". NS",
        # goes there)
        ask(fwd, "a.example.com.")
        if bad:
            assert bad.count(name="a.example.com") == 0
    finally:
        if bad:
            bad.close()


def test_servfail_when_every_upstream_fails(clock):
    dead = [Stub(ZONE), Stub(ZONE)]
    for s in dead:
        s.mode = "drop"
    try:
        fwd = Forwarder([s.addr for s in dead] + [closed_port()], clock=clock, timeout=0.3,
                        deadline=1.0)
        r = ask(fwd, "www.example.com.")
        assert r.rcode() == dns.rcode.SERVFAIL
        assert r.edns == 0 and str(r.question[0].name) == "www.example.com."
        # silent upstreams are asked in turn until the deadline (at most deadline/timeout + 1
        # times in all), the refusing one once; then SERVFAIL, and nothing cached
        www = "www.example.com"
        assert all(s.count(name=www) >= 1 for s in dead) and sum(s.count(name=www) for s in dead) <= 5
        assert fwd.stats["upstream_failures"] == fwd.stats["upstream_queries"]
        assert fwd.stats["servfail"] == 1 and len(fwd._cache) == 0
    finally:
        for s in dead:
            s.close()


def test_resolve_for_externalname_chase(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    rcode, rrs = fwd.resolve("www.example.com.", forward.T_A)
    assert rcode == forward.NOERROR
    assert [(r.name, r.rtype, r.ttl, r.rdata) for r in rrs] == [
        ("www.example.com.", forward.T_A, 300, bytes([192, 0, 2, 53]))]
    clock.now += 10
    rcode, rrs = fwd.resolve("WWW.example.com", forward.T_A)
    assert rrs[0].ttl == 290 and stub.count() == 1
    assert fwd.resolve("nope.example.com.", forward.T_AAAA) == (forward.NXDOMAIN, ())


def test_resolve_uncompresses_names_in_rdata(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    rcode, rrs = fwd.resolve("alias.example.com.", forward.T_CNAME)
    assert rcode == forward.NOERROR
    (rr,) = rrs
    assert rr.rdata == rawwire.name_to_wire("www.example.com.")
    parsed = dns.message.from_wire(
        b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00" + rr.to_wire())
    assert parsed.answer[0].to_text() == "alias.example.com. 60 IN CNAME www.example.com."


def test_resolve_servfail_when_no_upstream_answers(clock):
    fwd = Forwarder([closed_port()], clock=clock)
    assert fwd.resolve("www.example.com.", forward.T_A) == (forward.SERVFAIL, ())


def test_cached_only_lookup_never_asks_upstream(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    q = dns.message.make_query("www.example.com.", "A")
    assert fwd.cached(q.to_wire()) is None
    assert stub.count() == 0
    ask(fwd, "www.example.com.")
    r = dns.message.from_wire(fwd.cached(q.to_wire()))
    assert r.id == q.id and records(r) == ["www.example.com. 300 IN A 192.0.2.53"]
    assert stub.count() == 1


def test_loop_probe_coming_back_is_reported(clock):
    """The upstream forwards whatever it gets back into kdns (as a node resolv.conf pointing at
    kdns would): the probe arrives at forward(), which reports the loop and breaks the circle."""
    looped = threading.Event()
    messages = []
    upstream = Stub([])
    fwd = Forwarder([upstream.addr], clock=clock, timeout=2)
    upstream.on_query = lambda data: fwd.forward(data)

    def on_loop(message):
        messages.append(message)
        looped.set()
    try:
        fwd.start_loop_probe(on_loop, interval=0.1)
        assert looped.wait(10)
        assert "forwarding loop detected" in messages[0] and upstream.addr[0] in messages[0]
        assert len(messages) == 1
    finally:
        upstream.close()


def test_no_loop_reported_for_a_real_upstream(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    t = fwd.start_loop_probe(lambda m: None, attempts=2, interval=0.05)
    t.join(10)
    assert not t.is_alive()
    assert fwd.loop_detected is None
    assert stub.count() == 2 and stub.seen[0][2] == "HINFO"


def test_malformed_query_gives_none(stub, clock):
    fwd = Forwarder([stub.addr], clock=clock)
    assert fwd.forward(b"\x12\x34\x01") is None
    assert stub.count() == 0


def test_upstreams_from_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# generated\nsearch example.com\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\n"
                    "nameserver not-an-ip\noptions ndots:5\nnameserver 192.0.2.1 ; dup\n")
    assert forward.choose_upstreams([], str(conf), [("127.0.0.1", 5353)]) == [
        ("192.0.2.1", 53), ("fe80::1%eth0", 53)]


def test_explicit_upstreams_win_over_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.1\n")
    assert forward.choose_upstreams([("192.0.2.9", 5300)], str(conf), []) == [("192.0.2.9", 5300)]


def test_own_listen_address_is_never_an_upstream(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\nnameserver 192.0.2.1\n")
    assert forward.choose_upstreams([], str(conf), [("127.0.0.1", 53)]) == [("192.0.2.1", 53)]
    # a wildcard listen owns every local address on its port
    assert forward.choose_upstreams([("127.0.0.2", 53), ("192.0.2.1", 53)], "",
                                    [("0.0.0.0", 53)]) == [("192.0.2.1", 53)]
    # same address, other port: a different server
    assert forward.choose_upstreams([("127.0.0.1", 5300)], "", [("127.0.0.1", 53)]) == [
        ("127.0.0.1", 5300)]


def test_refuses_when_only_own_addresses_are_left(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\n")
    with pytest.raises(ForwardConfigError, match=r"resolv\.conf.*127\.0\.0\.1:53.*own listen"):
        forward.choose_upstreams([], str(conf), [("0.0.0.0", 53)])


def test_unreadable_resolv_conf_is_a_clear_error(tmp_path):
    with pytest.raises(ForwardConfigError, match=r"--resolv-conf .*missing: cannot read: no such file"):
        forward.choose_upstreams([], str(tmp_path / "missing"), [])


def test_empty_resolv_conf_setting_means_no_forwarding():
    assert forward.choose_upstreams([], "", []) == []


def test_missing_default_resolv_conf_means_no_forwarding(tmp_path):
    assert forward.choose_upstreams([], str(tmp_path / "missing"), [], missing_ok=True) == []


def test_cached_leaves_own_zones_and_odd_queries_to_the_full_path(clock):
    s = Stub(["9.9.244.10.in-addr.arpa. 300 IN PTR node-9.example.net.", *ZONE])
    try:
        fwd = Forwarder([s.addr], clock=clock, own_zones=("cluster.local", "in-addr.arpa"))
        ptr = dns.message.make_query("9.9.244.10.in-addr.arpa.", "PTR")
        fwd.forward(ptr.to_wire())                   # a fallthrough: forwarded and cached
        assert fwd.cached(ptr.to_wire()) is None     # ... but the snapshot must decide first
        assert dns.message.from_wire(fwd.forward(ptr.to_wire())).answer
        assert s.count() == 1
        ask(fwd, "www.example.com.")
        q = dns.message.make_query("www.example.com.", "A")
        assert fwd.cached(q.to_wire()) is not None
        q.flags |= dns.flags.QR                      # a response: never answered
        assert fwd.cached(q.to_wire()) is None
        q = dns.message.make_query("www.example.com.", "A", use_edns=1)   # BADVERS is the core's
        assert fwd.cached(q.to_wire()) is None
        q = dns.message.make_query("www.example.com.", "A")
        q.set_opcode(dns.opcode.NOTIFY)
        assert fwd.cached(q.to_wire()) is None
        wire = bytearray(dns.message.make_query("www.example.com.", "A").to_wire())
        wire[7] = 1                                  # ANCOUNT 1 (and no such record): FORMERR's
        assert fwd.cached(bytes(wire)) is None
    finally:
        s.close()


def test_a_lost_datagram_is_asked_again_of_a_single_upstream(clock):
    """One nameserver that drops the first query: asked again within the deadline, answered."""
    s = Stub(ZONE)
    dropped = []
    answer = s.reply

    def drop_first(data, transport):
        if not dropped:
            dropped.append(data)
            return None
        return answer(data, transport)
    s.reply = drop_first
    try:
        fwd = Forwarder([s.addr], clock=clock, timeout=0.3, deadline=3)
        assert records(ask(fwd, "www.example.com.")) == ["www.example.com. 300 IN A 192.0.2.53"]
        assert len(dropped) == 1
    finally:
        s.close()


def test_a_refusing_upstream_is_asked_once_per_query(clock):
    bad = Stub(ZONE)
    bad.mode = "refused"
    try:
        fwd = Forwarder([bad.addr, closed_port()], clock=clock, timeout=0.3, deadline=3)
        assert ask(fwd, "www.example.com.").rcode() == dns.rcode.SERVFAIL
        assert bad.count() == 1 and fwd.stats["upstream_queries"] == 2
    finally:
        bad.close()


def test_garbage_never_escapes_as_anything_but_wire_error(stub, clock):
    """Bounded, seeded mutation of real queries and replies through the byte-level parsers."""
    import random

    rng = random.Random(5)
    fwd = Forwarder([stub.addr], clock=clock)
    query = dns.message.make_query("www.example.com.", "A", use_edns=0).to_wire()
    fwd.forward(query)
    big = dns.message.make_query("big.example.com.", "A").to_wire()
    reply = fwd.forward(big, tcp=True)
    for _ in range(3000):
        for seed in (query, reply):
            data = bytearray(seed)
            for _ in range(rng.randint(1, 6)):
                op = rng.random()
                pos = rng.randrange(len(data))
                if op < 0.6:
                    data[pos] = rng.randrange(256)
                elif op < 0.8:
                    del data[pos:]
                    if len(data) < 2:
                        data = bytearray(seed)
                else:
                    data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            data = bytes(data)
            try:
                rawwire.parse_query(data)
            except rawwire.WireError:
                pass
            try:
                entry = forward.normalise(data, 0.0)
                forward.serve(entry, rawwire.parse_query(query), 512, 1.0)
                forward.answer_records(entry, 1.0)
            except rawwire.WireError:
                pass
            fwd.cached(data)          # None or bytes; never an exception
