"""DNS over TCP (RFC 7766): one reactor thread for every connection, bounded against slow clients.

A thread per connection with a per-recv() timeout let a client that drips one byte every few
seconds hold a slot forever, and a few hundred of them denied all TCP service (issue 13). Here
one selector thread owns every socket and a few workers answer:

- the whole length-prefixed message must arrive within ``message_timeout`` of its first byte,
  however it is dripped; an answer the client does not read within ``idle_timeout`` closes it;
- a connection with nothing in flight for ``idle_timeout`` is closed (RFC 7766 §6.2.3);
- past ``max_connections`` the oldest idle connection is closed to admit the new one
  (RFC 7766 §6.2.2), else the one whose current message has been arriving longest, since a
  slow drip is the attack; only when every connection is being answered is the new one closed;
- past ``max_per_client`` connections from one address, that client's oldest idle connection
  makes room, else the new one is closed: one host cannot take every slot.

The transport knows nothing of DNS: ``respond(message, local, peer) -> bytes | None`` answers
one message from ``peer`` that came in on the listening address ``local`` (None: nothing to send). It runs on a worker, because a forwarded name may wait on an upstream
for seconds; each connection has at most one message in flight, so answers keep their order
and an unread backlog never grows past one message.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("kdns.tcp")

MAX_MESSAGE = 65535
WORKERS = 8
_NEVER = float("inf")
_LISTENER, _WAKE = "listener", "wake"       # selector data of the sockets that are not connections
_WARN_EVERY = 60.0               # seconds between two log lines of one kind about hostile clients


@dataclass(frozen=True, slots=True)
class Limits:
    # Seconds with nothing in flight before a connection is closed: above CoreDNS forward's 10 s
    # connection expiry (NodeLocal DNSCache's pool), so the client, not kdns, closes an idle
    # connection and never sends a query down one kdns is closing.
    idle_timeout: float = 15.0
    message_timeout: float = 3.0     # seconds for one whole length-prefixed message to arrive
    max_connections: int = 256
    max_per_client: int = 32


class _Conn:
    __slots__ = ("sock", "client", "peer", "local", "inbuf", "outbuf", "since", "started", "busy", "events",
                 "closed")

    def __init__(self, sock: socket.socket, peer: tuple, now: float):
        self.sock = sock
        self.peer = peer[:2]
        self.client = peer[0]
        self.local = sock.getsockname()[:2]     # which listener: the server counts per socket
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.since = now              # last progress: accepted, or the last answer fully sent
        self.started: float | None = None   # when the first byte of the pending message came
        self.busy = False             # a message is with a worker
        self.events = 0
        self.closed = False

    def idle(self) -> bool:
        return not self.busy and not self.outbuf and not self.inbuf


class TCPServer:
    """Serve ``respond`` on the listening ``socks`` from one background thread."""

    def __init__(self, socks: list[socket.socket], respond: Callable[[bytes, tuple, tuple], bytes | None],
                 limits: Limits = Limits()):
        self.respond = respond
        self.limits = limits
        self._listeners = socks
        self._sel = selectors.DefaultSelector()
        self._conns: dict[socket.socket, _Conn] = {}
        self._per_client: dict[str, int] = {}
        self._done: deque = deque()            # (conn, answer) from the workers
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="kdns-tcp-answer")
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._warned: dict[str, float] = {}
        self._granularity = min(0.25, limits.message_timeout / 4, limits.idle_timeout / 4)
        self._next_sweep = _NEVER
        self.closed_by_limit = {"message_timeout": 0, "idle_timeout": 0, "max_connections": 0,
                                "max_per_client": 0, "bad_length": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for sock in self._listeners:
            sock.setblocking(False)
            self._sel.register(sock, selectors.EVENT_READ, _LISTENER)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._thread = threading.Thread(target=self._run, name="kdns-tcp", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(2.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def connections(self) -> int:
        return len(self._conns)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:                    # its buffer is full: a wake-up is already pending
            pass

    # ------------------------------------------------------------------ the reactor
    def _run(self) -> None:
        try:
            while not self._stopping:
                due = self._next_sweep
                timeout = None if due == _NEVER else max(0.0, due - time.monotonic())
                for key, mask in self._sel.select(timeout):
                    conn = key.data
                    if conn is _WAKE:
                        self._drain_wake()
                    elif conn is _LISTENER:
                        self._accept(key.fileobj)
                    elif not conn.closed:         # closed earlier in this batch: skip its event
                        if mask & selectors.EVENT_WRITE:
                            self._write(conn)
                        if mask & selectors.EVENT_READ and not conn.closed:
                            self._read(conn)
                while self._done:
                    conn, answer = self._done.popleft()
                    self._answered(conn, answer)
                now = time.monotonic()
                if now >= self._next_sweep:
                    soonest = self._sweep(now)
                    # Deadlines are checked a few times a second, not per event: a sweep walks
                    # every connection, and a new message's clock may start at any event.
                    self._next_sweep = min(soonest, now + self._granularity) if self._conns else _NEVER
        except Exception:                 # noqa: BLE001 - say so loudly; TCP is down from here
            if not self._stopping:
                log.exception("the TCP transport stopped")
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _sweep(self, now: float) -> float:
        """Close connections past a deadline; returns when the next deadline falls."""
        lim = self.limits
        soonest = float("inf")
        for conn in list(self._conns.values()):
            if conn.busy:
                continue
            if conn.started is not None:
                due, why = conn.started + lim.message_timeout, "message_timeout"
            else:
                due, why = conn.since + lim.idle_timeout, "idle_timeout"   # idle, or not reading
            if now >= due:
                self.closed_by_limit[why] += 1
                self._close(conn)
            else:
                soonest = min(soonest, due)
        return soonest

    # ------------------------------------------------------------------ accepting
    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):                     # a burst, without starving the connections
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:              # EMFILE and friends: say so, keep serving
                if self._stopping:
                    return                      # the listener was closed under us
                self._warn("accept", "cannot accept a TCP connection: %s", exc.strerror or exc)
                return
            client = addr[0]
            if self._per_client.get(client, 0) >= self.limits.max_per_client:
                victim = self._oldest(lambda c: c.client == client and c.idle())
                if victim is None:
                    self.closed_by_limit["max_per_client"] += 1
                    self._warn("per-client", "%s holds %d TCP connections (--tcp-max-per-client): "
                               "closing its new ones", client, self.limits.max_per_client)
                    sock.close()
                    continue
                self.closed_by_limit["max_per_client"] += 1
                self._close(victim)
            if len(self._conns) >= self.limits.max_connections and not self._make_room():
                self.closed_by_limit["max_connections"] += 1
                self._warn("total", "%d TCP connections, all being answered (--tcp-connections): "
                           "closing new ones", self.limits.max_connections)
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, addr, time.monotonic())
            self._conns[sock] = conn
            self._per_client[client] = self._per_client.get(client, 0) + 1
            self._set_events(conn, selectors.EVENT_READ)
            self._next_sweep = min(self._next_sweep, conn.since + self._granularity)

    def _make_room(self) -> bool:
        """Close one connection for a new one (RFC 7766 §6.2.2): the oldest idle one, else the
        slowest message still arriving. False when every connection is being answered."""
        victim = self._oldest(_Conn.idle)
        if victim is None:
            arriving = [c for c in self._conns.values() if c.started is not None and not c.busy]
            victim = min(arriving, key=lambda c: c.started, default=None)
        if victim is None:
            return False
        self.closed_by_limit["max_connections"] += 1
        self._warn("total", "%d TCP connections (--tcp-connections): closing the oldest idle "
                   "one (else the slowest to send its message) to admit a new one",
                   self.limits.max_connections)
        self._close(victim)
        return True

    def _oldest(self, which) -> _Conn | None:
        return min((c for c in self._conns.values() if which(c)), key=lambda c: c.since, default=None)

    # ------------------------------------------------------------------ reading and writing
    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(MAX_MESSAGE + 2 - len(conn.inbuf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(conn)
            return
        if not conn.inbuf:
            conn.started = time.monotonic()
        conn.inbuf += chunk
        self._next_message(conn)

    def _next_message(self, conn: _Conn) -> None:
        """Hand the next whole message to a worker, if one has arrived."""
        buf = conn.inbuf
        if len(buf) < 2:
            self._set_events(conn, selectors.EVENT_READ)
            return
        length = (buf[0] << 8) | buf[1]
        if length == 0:
            self.closed_by_limit["bad_length"] += 1
            self._close(conn)                   # nothing a DNS message can be: the stream is lost
            return
        if len(buf) < 2 + length:
            self._set_events(conn, selectors.EVENT_READ)
            return
        message = bytes(buf[2:2 + length])
        del buf[:2 + length]
        conn.started = None
        conn.busy = True
        self._set_events(conn, 0)               # read no more until this one is answered
        self._pool.submit(self._answer, conn, message)

    def _answer(self, conn: _Conn, message: bytes) -> None:
        try:
            answer = self.respond(message, conn.local, conn.peer)
        except Exception:                       # noqa: BLE001 - a bad message must not kill TCP
            log.exception("internal error answering a TCP query")
            answer = None
        self._done.append((conn, answer))
        self._wake()

    def _answered(self, conn: _Conn, answer: bytes | None) -> None:
        conn.busy = False
        if conn.closed:
            return
        conn.since = time.monotonic()
        if answer:
            conn.outbuf += len(answer).to_bytes(2, "big") + answer
            self._write(conn)
        else:
            self._resume(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        del conn.outbuf[:sent]
        if conn.outbuf:
            self._set_events(conn, selectors.EVENT_WRITE)
        else:
            conn.since = time.monotonic()
            self._resume(conn)

    def _resume(self, conn: _Conn) -> None:
        """Answered: back to reading; pipelined bytes already here start their clock now."""
        if conn.inbuf:
            conn.started = time.monotonic()
        self._next_message(conn)

    def _set_events(self, conn: _Conn, events: int) -> None:
        if conn.closed or events == conn.events:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, events, conn)
        elif events == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.events:
            self._sel.unregister(conn.sock)
            conn.events = 0
        del self._conns[conn.sock]
        left = self._per_client[conn.client] - 1
        if left:
            self._per_client[conn.client] = left
        else:
            del self._per_client[conn.client]
        try:
            conn.sock.close()
        except OSError:
            pass

    def _warn(self, kind: str, fmt: str, *args) -> None:
        """At most one line per kind a minute: a flood of hostile clients must not flood the log."""
        now = time.monotonic()
        if now - self._warned.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[kind] = now
            log.warning(fmt, *args)
