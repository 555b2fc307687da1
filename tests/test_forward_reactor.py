"""kdns.forward's reactor, limits, policy, health, serve-stale and reply checks, against real
upstream sockets on 127.0.0.1 (tests/dnsstub.py, and a raw socket that answers when told to).

The cache's clock is one the test turns (Forwarder(clock=...)); no assertion is about time.
"""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from dnsstub import Stub, closed_port
from kdns.forward import Forwarder
from test_forward import Clock, ask, records

ZONE = [f"n{i}.example.com. 300 IN A 192.0.2.{i}" for i in range(1, 100)] + [
    "short.example.com. 2 IN A 192.0.2.200",
]


class Hole:
    """An upstream that reads every query and answers none until ``answer_all()``: queries pile
    up in flight without any thread on either side waiting for them one by one."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = self.sock.getsockname()
        self.got: list[tuple[bytes, tuple]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            with self._lock:
                self.got.append((data, addr))

    def count(self, name: str | None = None) -> int:
        with self._lock:
            got = list(self.got)
        return sum(1 for d, _ in got if name is None or
                   str(dns.message.from_wire(d).question[0].name).lower() == name)

    def answer_all(self) -> int:
        with self._lock:
            got, self.got = self.got, []
        for data, addr in got:
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            if q.question[0].rdtype == dns.rdatatype.A:
                r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "192.0.2.99"))
            self.sock.sendto(r.to_wire(), addr)
        return len(got)

    def close(self) -> None:
        self.sock.close()


def submit(fwd: Forwarder, name: str, client=None, rdtype: str = "A"):
    """Submit one query; returns (query, immediate reply or None, event, box for the later one)."""
    q = dns.message.make_query(name, rdtype)
    box: list[bytes] = []
    done = threading.Event()
    now = fwd.submit(q.to_wire(), client, False, lambda p: (box.append(p), done.set()))
    return q, now, done, box


@pytest.fixture
def clock():
    return Clock()


def test_thousands_in_flight_cost_no_thread_each():
    hole = Hole()
    fwd = Forwarder([hole.addr], max_concurrent=5000, max_client_forwards=5000, timeout=10,
                    deadline=30, initial_rto=10)
    threads_before = threading.active_count()
    try:
        pending = [submit(fwd, f"q{i}.example.org.", ("127.0.0.9", 4000)) for i in range(3000)]
        assert all(now is None for _, now, _, _ in pending)
        for _ in range(1000):                       # bounded: until every query reached the hole
            if hole.count() >= 3000:
                break
            threading.Event().wait(0.01)
        assert hole.count() == 3000
        assert sum(fwd.inflight) == 3000 and fwd.outstanding("127.0.0.9") == 3000
        assert threading.active_count() == threads_before
        assert hole.answer_all() == 3000
        for q, _, done, box in pending:
            assert done.wait(10)
            r = dns.message.from_wire(box[0])
            assert r.id == q.id and r.question == q.question
            assert records(r) == [f"{q.question[0].name} 300 IN A 192.0.2.99"]
        assert sum(fwd.inflight) == 0 and fwd.outstanding("127.0.0.9") == 0
    finally:
        fwd.close()
        hole.close()


def test_a_client_over_its_limit_gets_servfail_at_once_and_others_do_not():
    hole = Hole()
    fwd = Forwarder([hole.addr], max_client_forwards=2, timeout=10, deadline=30, initial_rto=10)
    try:
        flood = ("127.0.0.2", 5353)
        first = [submit(fwd, f"dead{i}.example.org.", flood) for i in range(2)]
        assert all(now is None for _, now, _, _ in first)
        _, now, _, _ = submit(fwd, "dead3.example.org.", flood)
        assert now is not None and dns.message.from_wire(now).rcode() == dns.rcode.SERVFAIL
        assert fwd.stats["shed"] == 1
        # another port of the same address is the same client
        _, now, _, _ = submit(fwd, "dead4.example.org.", ("127.0.0.2", 6000))
        assert dns.message.from_wire(now).rcode() == dns.rcode.SERVFAIL
        victim = submit(fwd, "ok.example.org.", ("127.0.0.1", 5353))
        assert victim[1] is None
        for _ in range(1000):
            if hole.count() >= 3:
                break
            threading.Event().wait(0.01)
        assert hole.count() == 3 and hole.count("dead3.example.org.") == 0
        hole.answer_all()
        for q, _, done, box in [*first, victim]:
            assert done.wait(10)
            assert records(dns.message.from_wire(box[0])) == [
                f"{q.question[0].name} 300 IN A 192.0.2.99"]
        # the slots are free again
        assert submit(fwd, "dead5.example.org.", flood)[1] is None
    finally:
        fwd.close()
        hole.close()


@pytest.fixture
def stubs():
    made = [Stub(ZONE) for _ in range(3)]
    yield made
    for s in made:
        s.close()


def test_policy_sequential_asks_the_first_healthy_upstream(stubs, clock):
    fwd = Forwarder([s.addr for s in stubs], clock=clock, policy="sequential")
    for i in range(1, 7):
        assert records(ask(fwd, f"n{i}.example.com.")) == [f"n{i}.example.com. 300 IN A 192.0.2.{i}"]
    assert [sum(s.count(name=f"n{i}.example.com") for i in range(1, 7)) for s in stubs] == [6, 0, 0]


def test_policy_round_robin_starts_each_query_at_the_next_upstream(stubs, clock):
    fwd = Forwarder([s.addr for s in stubs], clock=clock, policy="round_robin")
    for i in range(1, 7):
        assert records(ask(fwd, f"n{i}.example.com.")) == [f"n{i}.example.com. 300 IN A 192.0.2.{i}"]
    for k, s in enumerate(stubs):
        assert [i for i in range(1, 7) if s.count(name=f"n{i}.example.com")] == [k + 1, k + 4]


def test_policy_random_spreads_queries_over_every_upstream(stubs, clock):
    fwd = Forwarder([s.addr for s in stubs], clock=clock, policy="random")
    for i in range(1, 65):
        assert records(ask(fwd, f"n{i}.example.com.")) == [f"n{i}.example.com. 300 IN A 192.0.2.{i}"]
    counts = [sum(s.count(name=f"n{i}.example.com") for i in range(1, 65)) for s in stubs]
    assert sum(counts) == 64 and all(c >= 1 for c in counts)   # 3 * (2/3)^64 odds of a miss


def test_a_dead_upstream_is_marked_down_skipped_probed_and_comes_back(stubs, clock):
    first, second = stubs[0], stubs[1]
    fwd = Forwarder([first.addr, second.addr], clock=clock, policy="sequential")
    assert records(ask(fwd, "n1.example.com.")) == ["n1.example.com. 300 IN A 192.0.2.1"]
    assert (first.count(name="n1.example.com"), second.count(name="n1.example.com")) == (1, 0)
    first.mode = "drop"
    # times out at the first, answered by the second
    assert records(ask(fwd, "n2.example.com.")) == ["n2.example.com. 300 IN A 192.0.2.2"]
    assert (first.count(name="n2.example.com"), second.count(name="n2.example.com")) == (1, 1)
    assert fwd.health.down == [True, False]
    # down: skipped, the second is asked first
    assert records(ask(fwd, "n3.example.com.")) == ["n3.example.com. 300 IN A 192.0.2.3"]
    assert (first.count(name="n3.example.com"), second.count(name="n3.example.com")) == (0, 1)
    for _ in range(200):                    # bounded: probes (". NS") reach it while it is down
        if first.count(name=""):
            break
        threading.Event().wait(0.05)
    assert first.count(name="") >= 1 and all(t == "NS" for _, n, t in first.seen if n == "")
    first.mode = "answer"
    for _ in range(200):                    # bounded: a probe answered marks it up again
        if not fwd.health.down[0]:
            break
        threading.Event().wait(0.05)
    assert fwd.health.down == [False, False]
    assert records(ask(fwd, "n4.example.com.")) == ["n4.example.com. 300 IN A 192.0.2.4"]
    assert (first.count(name="n4.example.com"), second.count(name="n4.example.com")) == (1, 0)


def test_the_first_retry_follows_the_measured_rtt(clock):
    """A lost datagram to a single upstream is asked again, after the RTO the answers so far
    measured (SRTT + 4 RTTVAR, at least 100 ms; here a fast loopback stub)."""
    s = Stub(ZONE)
    dropped = []
    answer = s.reply

    def drop_second(data, transport):
        if dns.message.from_wire(data).question[0].name.to_text() == "n2.example.com." and not dropped:
            dropped.append(data)
            return None
        return answer(data, transport)
    s.reply = drop_second
    try:
        fwd = Forwarder([s.addr], clock=clock)
        ask(fwd, "n1.example.com.")
        assert fwd.health.srtt[0] is not None          # measured
        assert records(ask(fwd, "n2.example.com.")) == ["n2.example.com. 300 IN A 192.0.2.2"]
        assert len(dropped) == 1 and s.count(name="n2.example.com") == 1   # dropped, then answered
    finally:
        s.close()


@pytest.mark.parametrize("bad_reply", ["other-question", "garbage", "not-a-response"])
def test_a_reply_that_does_not_match_or_parse_is_dropped_and_the_next_upstream_asked(clock, bad_reply):
    bad = Stub([])

    def reply(data: bytes) -> bytes:
        if bad_reply == "garbage":
            return data[:2] + b"\x81\x80\x00\x01\x00\x05\x00\x00\x00\x00\x07example"
        q = dns.message.from_wire(data)
        if bad_reply == "not-a-response":
            return data                         # the query itself, QR=0
        other = dns.message.make_query("evil.example.net.", "A")
        r = dns.message.make_response(other)
        r.id = q.id
        r.answer.append(dns.rrset.from_text("evil.example.net.", 300, "IN", "A", "203.0.113.66"))
        return r.to_wire()
    bad.on_query = reply
    good = Stub(ZONE)
    try:
        fwd = Forwarder([bad.addr, good.addr], clock=clock)
        r = ask(fwd, "n5.example.com.")
        assert records(r) == ["n5.example.com. 300 IN A 192.0.2.5"]
        assert bad.count(name="n5.example.com") == 1 and good.count(name="n5.example.com") == 1
        assert fwd.stats["upstream_failures"] == 1
    finally:
        bad.close()
        good.close()


def test_serve_stale_answers_ttl_30_when_every_upstream_is_down(clock):
    s = Stub(ZONE)
    fwd = Forwarder([s.addr], clock=clock, serve_stale=3600, timeout=0.3, deadline=1.0)
    assert records(ask(fwd, "short.example.com.")) == ["short.example.com. 2 IN A 192.0.2.200"]
    s.mode = "drop"
    clock.now += 2                                   # expired
    r = ask(fwd, "short.example.com.")
    assert r.rcode() == dns.rcode.NOERROR
    assert records(r) == ["short.example.com. 30 IN A 192.0.2.200"]
    asked = s.count(name="short.example.com")
    # RFC 8767's failure recheck: for 30 s the stale answer comes at once, no upstream asked
    clock.now += 10
    assert records(ask(fwd, "short.example.com.")) == ["short.example.com. 30 IN A 192.0.2.200"]
    assert s.count(name="short.example.com") == asked and fwd.stats["stale"] == 2
    # never cached: nothing stale to serve
    assert ask(fwd, "n8.example.com.").rcode() == dns.rcode.SERVFAIL
    # the upstream is back: fresh answers again once the recheck time is over
    s.mode = "answer"
    clock.now += 21
    assert records(ask(fwd, "short.example.com.")) == ["short.example.com. 2 IN A 192.0.2.200"]
    s.close()
    # past the stale window: SERVFAIL
    clock.now += 2 + 3601
    assert ask(fwd, "short.example.com.").rcode() == dns.rcode.SERVFAIL


def test_serve_stale_is_off_by_default(clock):
    s = Stub(ZONE)
    fwd = Forwarder([s.addr], clock=clock)
    assert records(ask(fwd, "short.example.com.")) == ["short.example.com. 2 IN A 192.0.2.200"]
    s.close()
    clock.now += 2
    assert ask(fwd, "short.example.com.").rcode() == dns.rcode.SERVFAIL


def test_invalid_query_names_are_never_forwarded(clock):
    s = Stub(ZONE)
    try:
        fwd = Forwarder([s.addr], clock=clock)
        q = bytearray(dns.message.make_query("www.example.com.", "A", use_edns=False).to_wire())
        long_label = bytes(q[:12]) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"
        pointer = bytes(q[:12]) + b"\xc0\x00\x00\x01\x00\x01"
        too_long = bytes(q[:12]) + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01"   # 257 octets
        for bad in (long_label, pointer, too_long):
            assert fwd.forward(bad) is None
        assert s.count() == 0
    finally:
        s.close()


def test_allow_list_refuses_others_before_the_cache(clock):
    s = Stub(ZONE)
    try:
        fwd = Forwarder([s.addr], clock=clock, allow=["127.0.0.1/32"])
        q = dns.message.make_query("n9.example.com.", "A")
        ok = dns.message.from_wire(fwd.forward(q.to_wire(), client=("127.0.0.1", 1)))
        assert records(ok) == ["n9.example.com. 300 IN A 192.0.2.9"]
        no = dns.message.from_wire(fwd.forward(q.to_wire(), client=("127.0.0.3", 1)))
        assert no.rcode() == dns.rcode.REFUSED and not no.answer
        assert fwd.cached_until(q.to_wire(), ("127.0.0.3", 1)) is None
        assert fwd.cached_until(q.to_wire(), ("127.0.0.1", 1)) is not None
        assert s.count(name="n9.example.com") == 1
    finally:
        s.close()


def test_closed_port_upstream_fails_fast_to_the_next(clock):
    good = Stub(ZONE)
    try:
        fwd = Forwarder([closed_port(), good.addr], clock=clock, timeout=1.5, deadline=3.5)
        assert records(ask(fwd, "n10.example.com.")) == ["n10.example.com. 300 IN A 192.0.2.10"]
        assert fwd.health.down == [True, False]
    finally:
        good.close()
