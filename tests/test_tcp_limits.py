"""TCP against hostile and slow clients (issue 13 item 2): kdns.tcp's deadlines and caps, each
attack reproduced at a small size against a real kdns with short limits set by flags.

Clients come from different loopback addresses (127.0.0.2, .3, ...) where a test needs them to
count as different clients. No assertion is about time: each says which connection is closed
and which is answered.
"""

from __future__ import annotations

import socket
import struct
import time

import dns.message
import dns.rcode
import pytest

from conftest import DATA, Kdns

NAME = "web.prod.svc.cluster.local."


def query_bytes(name: str = NAME) -> bytes:
    return dns.message.make_query(name, "A").to_wire()


def framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def connect(server: Kdns, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=(source, 0))
    return s


def ask(s: socket.socket, name: str = NAME) -> dns.message.Message:
    """One query on an open connection, its answer read whole."""
    q = dns.message.make_query(name, "A")
    s.sendall(framed(q.to_wire()))
    return read_answer(s)


def read_answer(s: socket.socket) -> dns.message.Message:
    head = recv_exact(s, 2)
    assert head is not None, "connection closed instead of answering"
    body = recv_exact(s, struct.unpack("!H", head)[0])
    assert body is not None, "connection closed in the middle of an answer"
    return dns.message.from_wire(body)


def recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def closed_by_server(s: socket.socket, timeout: float = 10.0) -> bool:
    """True when the server has closed ``s`` (EOF or reset) within ``timeout``."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def still_open(s: socket.socket) -> bool:
    """An open connection still answers."""
    try:
        return ask(s).rcode() == dns.rcode.NOERROR
    except (OSError, AssertionError):
        return False


def kdns(*limits: str) -> Kdns:
    return Kdns("--manifests", str(DATA / "cluster.yaml"), *limits)


@pytest.fixture
def slow_deadline():
    """Idle connections live long (so only the message deadline can close one); a message must
    come whole within half a second."""
    server = kdns("--tcp-message-timeout", "0.5", "--tcp-idle-timeout", "60")
    yield server
    server.stop()


def test_a_dripping_client_is_closed_by_the_message_deadline(slow_deadline):
    # The old per-recv() timeout was reset by every byte: a drip faster than it held the slot
    # forever. Here the whole message has a deadline; drip 1 byte every 0.2 s (the message
    # would take ~8 s) and the server must close the connection before the message completes.
    message = framed(query_bytes())
    s = connect(slow_deadline)
    closed = False
    for i in range(len(message) - 1):
        try:
            s.sendall(message[i:i + 1])
        except OSError:
            closed = True
            break
        if closed_by_server(s, 0.2):
            closed = True
            break
    s.close()
    assert closed, "a client dripping one byte at a time kept its connection"
    assert slow_deadline.query(NAME, tcp=True).rcode() == dns.rcode.NOERROR


def test_a_prompt_client_keeps_its_connection_across_queries(slow_deadline):
    s = connect(slow_deadline)
    for _ in range(5):
        assert ask(s).rcode() == dns.rcode.NOERROR
        time.sleep(0.2)                  # idle between messages is not a message in progress
    s.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout():
    server = kdns("--tcp-idle-timeout", "0.5")
    try:
        s = connect(server)
        assert ask(s).rcode() == dns.rcode.NOERROR
        assert closed_by_server(s, 10.0)
        s.close()
    finally:
        server.stop()


def test_past_the_cap_the_oldest_idle_connection_makes_room():
    # RFC 7766 §6.2.2: close the oldest idle connection to admit a new one, not refuse it.
    server = kdns("--tcp-connections", "4", "--tcp-max-per-client", "4")
    try:
        conns = []
        for i in range(4):
            s = connect(server, f"127.0.0.{2 + i}")
            assert ask(s).rcode() == dns.rcode.NOERROR       # accepted and answered, in order
            conns.append(s)
        newcomer = connect(server, "127.0.0.9")
        assert ask(newcomer).rcode() == dns.rcode.NOERROR
        assert closed_by_server(conns[0])                    # the oldest idle one went
        assert [still_open(s) for s in conns[1:]] == [True, True, True]
        for s in conns + [newcomer]:
            s.close()
    finally:
        server.stop()


def test_slow_clients_holding_every_slot_do_not_deny_service():
    # 4 slots, all held by clients in the middle of a message (the slowloris of issue 13, where
    # 260 of them denied all TCP service). The message deadline is long, so only making room
    # for the newcomer can save it: the slowest message in progress is closed.
    server = kdns("--tcp-connections", "4", "--tcp-max-per-client", "4",
                  "--tcp-message-timeout", "60", "--tcp-idle-timeout", "60")
    try:
        half = framed(query_bytes())[:7]
        slow = []
        for i in range(4):
            s = connect(server, f"127.0.0.{2 + i}")
            s.sendall(half)
            slow.append(s)
        time.sleep(0.3)                  # let the reactor see every partial message
        legit = connect(server, "127.0.0.9")
        assert ask(legit).rcode() == dns.rcode.NOERROR
        assert closed_by_server(slow[0])                     # the first to start dripping
        legit.close()
        for s in slow:
            s.close()
    finally:
        server.stop()


def test_one_client_cannot_take_every_slot():
    server = kdns("--tcp-connections", "10", "--tcp-max-per-client", "2",
                  "--tcp-message-timeout", "60", "--tcp-idle-timeout", "60")
    try:
        half = framed(query_bytes())[:7]
        hogs = [connect(server, "127.0.0.2") for _ in range(2)]
        for s in hogs:
            s.sendall(half)              # busy sending, not idle: nothing of theirs can go
        time.sleep(0.3)
        third = connect(server, "127.0.0.2")
        assert closed_by_server(third)                       # past its cap: refused
        other = connect(server, "127.0.0.3")
        assert ask(other).rcode() == dns.rcode.NOERROR       # another client is served
        for s in hogs + [third, other]:
            s.close()
    finally:
        server.stop()


def test_a_client_at_its_cap_reuses_its_oldest_idle_slot():
    server = kdns("--tcp-connections", "10", "--tcp-max-per-client", "2")
    try:
        first, second = connect(server, "127.0.0.2"), connect(server, "127.0.0.2")
        assert ask(first).rcode() == dns.rcode.NOERROR
        assert ask(second).rcode() == dns.rcode.NOERROR
        third = connect(server, "127.0.0.2")
        assert ask(third).rcode() == dns.rcode.NOERROR
        assert closed_by_server(first)
        assert still_open(second)
        for s in (first, second, third):
            s.close()
    finally:
        server.stop()


def test_trailing_garbage_inside_the_tcp_length_is_formerr(slow_deadline):
    wire = query_bytes()
    s = connect(slow_deadline)
    s.sendall(framed(wire + b"\xde\xad\xbe\xef"))
    head = recv_exact(s, 2)
    reply = recv_exact(s, struct.unpack("!H", head)[0])
    qid, flags = struct.unpack("!HH", reply[:4])
    assert qid == struct.unpack("!H", wire[:2])[0]
    assert flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    assert ask(s).rcode() == dns.rcode.NOERROR               # the stream is still in step
    s.close()


def test_a_zero_length_message_closes_the_connection(slow_deadline):
    s = connect(slow_deadline)
    s.sendall(b"\x00\x00")
    assert closed_by_server(s)
    s.close()


def test_limits_are_checked_at_start():
    from test_serve import run_serve

    r = run_serve("--tcp-connections", "4", "--tcp-max-per-client", "5")
    assert r.returncode == 2
    assert "kdns: --tcp-max-per-client 5: must be 1 to --tcp-connections (4)" in r.stderr
    r = run_serve("--tcp-message-timeout", "0")
    assert r.returncode == 2
    assert "--tcp-message-timeout 0: must be more than 0" in r.stderr


def test_connections_closed_by_a_limit_are_counted_in_metrics():
    import re
    import urllib.request

    from conftest import wait_for

    server = kdns("--tcp-connections", "10", "--tcp-max-per-client", "1",
                  "--tcp-message-timeout", "60", "--http", "127.0.0.1:0")
    try:
        assert wait_for(lambda: re.search(r"http on 127\.0\.0\.1:(\d+)", server.log()))
        port = int(re.search(r"http on 127\.0\.0\.1:(\d+)", server.log()).group(1))
        hog = connect(server, "127.0.0.2")
        hog.sendall(framed(query_bytes())[:5])           # a message in progress: not idle
        time.sleep(0.3)
        refused = connect(server, "127.0.0.2")
        assert closed_by_server(refused)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return resp.read().decode()

        body = scrape()
        assert 'kdns_tcp_closed_by_limit_total{limit="max_per_client"} 1.0' in body
        assert "kdns_tcp_connections 1.0" in body
        hog.close()
        refused.close()
    finally:
        server.stop()
