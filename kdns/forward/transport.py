"""Upstream transport: one reactor thread, a few UDP sockets per upstream, IDs matched as replies
come.

A forwarded query waiting for an upstream costs a dict slot and a timer, never a thread: the
worker pool this replaces spent its 32 threads sitting in the timeouts of a blackholed zone,
and every other client queued behind them (issue 12: 1 answer in 19 during such a flood).

Each upstream has SOCKETS_PER_UPSTREAM connected UDP sockets (connect(): an ICMP port
unreachable fails the exchange at once instead of timing out, and only the upstream's replies
are read), picked round robin with a fresh random ID per exchange, so an off-path spoofer has
to guess both the source port and the ID. A query that came in over TCP, or a truncated UDP
reply, is asked over a TCP connection of its own (rare; no pooling).

Everything here runs on the reactor's thread; other threads hand work in with ``call``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import socket
import struct
import threading
from typing import Callable, Sequence

log = logging.getLogger("kdns.forward")

SOCKETS_PER_UPSTREAM = 4
# A UDP reply is at most this big (we advertise 1232; a sloppy upstream may send more).
MAX_REPLY = 65535

Done = Callable[[bytes | None, str], None]    # (reply, "") or (None, why: "error" | "timeout")


class Reactor:
    """An asyncio event loop on a daemon thread of its own."""

    def __init__(self, name: str = "kdns-forward"):
        self.loop = asyncio.new_event_loop()
        # Work handed in from other threads: a deque and one wake-up per batch, not a self-pipe
        # write per query (that write was ~50 µs under GIL contention, measured).
        self._inbox: collections.deque = collections.deque()
        self._woken = False
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            # Closed here, once stopped: a loop left for the garbage collector at interpreter
            # exit may find its self-pipe socket finalised first, and its __del__ then prints a
            # traceback (ValueError: Invalid file descriptor: -1) after kdns's "stopped".
            self.loop.close()

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the reactor thread, soon (from any thread)."""
        self._inbox.append((fn, args))
        if not self._woken:
            self._woken = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:                 # the loop is closed: shutting down
                pass

    def _drain(self) -> None:
        # _woken goes false before the inbox is emptied: an item appended after that schedules
        # another drain, one appended before it is taken here.
        self._woken = False
        inbox = self._inbox
        while inbox:
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("internal error in the forwarding reactor")

    def later(self, delay: float, fn, *args) -> asyncio.TimerHandle:
        """Reactor thread only."""
        return self.loop.call_later(max(0.0, delay), fn, *args)

    def now(self) -> float:
        return self.loop.time()

    def stop(self) -> None:
        if self.loop.is_running():
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:                 # closed meanwhile: stopped already
                pass


class Exchange:
    """One query in flight at one upstream; ``cancel()`` forgets it (a late reply is ignored)."""
    __slots__ = ("channel", "qid", "done", "sent", "task")

    def __init__(self, channel, qid: int, done: Done, sent: float):
        self.channel = channel
        self.qid = qid
        self.done = done
        self.sent = sent
        self.task: asyncio.Task | None = None

    def cancel(self) -> None:
        if self.channel is not None:
            self.channel.forget(self)
            self.channel = None
        if self.task is not None:
            self.task.cancel()
            self.task = None


class _UdpSocket:
    """One connected UDP socket and the exchanges waiting on it, by ID."""

    def __init__(self, reactor: Reactor, addr: tuple[str, int]):
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.reactor = reactor
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        # Room for a burst of replies to thousands of queries in flight: the default buffer
        # (~200 KB) drops them while the reactor thread waits for the GIL.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setblocking(False)
        self.sock.connect(addr)
        self.pending: dict[int, Exchange] = {}
        reactor.loop.add_reader(self.sock.fileno(), self._readable)

    def send(self, build: Callable[[bytes], bytes], done: Done) -> Exchange:
        qid = secrets.randbits(16)
        while qid in self.pending:
            qid = secrets.randbits(16)
        ex = Exchange(self, qid, done, self.reactor.now())
        try:
            self.sock.send(build(struct.pack("!H", qid)))
        except OSError as e:
            log.debug("send to upstream failed: %s", e)
            ex.channel = None
            self.reactor.loop.call_soon(done, None, "error")
            return ex
        self.pending[qid] = ex
        return ex

    def forget(self, ex: Exchange) -> None:
        if self.pending.get(ex.qid) is ex:
            del self.pending[ex.qid]

    def _readable(self) -> None:
        for _ in range(64):               # a burst of replies, then let timers run
            try:
                data = self.sock.recv(MAX_REPLY)
            except BlockingIOError:
                return
            except OSError as e:
                # ICMP unreachable (or the like) on a connected socket: it is the upstream's,
                # not one query's, so every exchange waiting on this socket has failed.
                log.debug("upstream socket error: %s", e)
                pending, self.pending = self.pending, {}
                for ex in pending.values():
                    ex.channel = None
                    ex.done(None, "error")
                return
            if len(data) < 12:
                continue
            ex = self.pending.pop((data[0] << 8) | data[1], None)
            if ex is None:
                continue                  # late (its query is answered or given up) or spoofed
            ex.channel = None
            try:
                ex.done(data, "")
            except Exception:                     # one bad exchange must not stop the burst
                log.exception("internal error handling an upstream reply")

    def close(self) -> None:
        try:
            self.reactor.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()


class Transport:
    """UDP and TCP exchanges with the upstreams, by index."""

    def __init__(self, reactor: Reactor, upstreams: Sequence[tuple[str, int]]):
        self.reactor = reactor
        self.upstreams = tuple(upstreams)
        self._sockets: list[list[_UdpSocket]] = [[] for _ in self.upstreams]
        self._turn = [0] * len(self.upstreams)

    def udp(self, i: int, build: Callable[[bytes], bytes], done: Done) -> Exchange:
        """Send ``build(id)`` to upstream ``i``; ``done`` gets the reply with that ID."""
        socks = self._sockets[i]
        if len(socks) < SOCKETS_PER_UPSTREAM:
            try:
                socks.append(_UdpSocket(self.reactor, self.upstreams[i]))
            except OSError as e:
                if not socks:
                    log.debug("cannot open a socket to the upstream: %s", e)
                    ex = Exchange(None, 0, done, self.reactor.now())
                    self.reactor.loop.call_soon(done, None, "error")
                    return ex
        self._turn[i] = (self._turn[i] + 1) % len(socks)
        return socks[self._turn[i]].send(build, done)

    def tcp(self, i: int, msg: bytes, timeout: float, done: Done) -> Exchange:
        """``msg`` (its ID already in place) over a TCP connection of its own."""
        ex = Exchange(None, 0, done, self.reactor.now())
        ex.task = self.reactor.loop.create_task(self._tcp(ex, self.upstreams[i], msg, timeout))
        return ex

    async def _tcp(self, ex: Exchange, addr: tuple[str, int], msg: bytes, timeout: float) -> None:
        writer = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(addr[0], addr[1])
                writer.write(struct.pack("!H", len(msg)) + msg)
                await writer.drain()
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                reply = await reader.readexactly(size)
        except asyncio.CancelledError:
            return
        except TimeoutError:
            result: tuple = (None, "timeout")
        except (OSError, asyncio.IncompleteReadError) as e:
            log.debug("TCP exchange with the upstream failed: %s", e)
            result = (None, "error")
        else:
            result = (reply, "")
        finally:
            if writer is not None:
                writer.close()
        ex.task = None
        ex.done(*result)

    def close(self) -> None:
        for socks in self._sockets:
            for s in socks:
                s.close()
            socks.clear()


def exchange_once(addr: tuple[str, int], msg: bytes, timeout: float) -> bytes:
    """One blocking UDP exchange, outside the reactor (the startup loop probe): the first
    datagram whose ID is the query's. Raises OSError, socket.timeout."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.settimeout(timeout)
        s.send(msg)
        while True:
            reply = s.recv(MAX_REPLY)
            if reply[:2] == msg[:2]:
                return reply
