"""The Forwarder: a client's query in, the upstreams' answer out, without ever blocking a thread
of the server's (dns-behavior.md §6).

``submit`` is called by the server's threads; it answers from the forwarding cache at once,
sheds at once, or hands the query to the reactor (kdns.forward.transport) and returns; the
reply goes out later through the caller's ``reply`` callback, from the reactor's thread.

Limits, both answered SERVFAIL at once so that the client moves on (CoreDNS forward answers an
overflow the same way): ``max_client_forwards`` forwarded queries outstanding per client address,
so one client flooding a dead zone cannot take the upstream slots of everyone else, and
``max_concurrent`` queries in flight per upstream (CoreDNS forward's max_concurrent).

Concurrent identical misses share one upstream job. A job asks the upstreams in the policy's
order (kdns.forward.health), the next one after an adaptive per-attempt timeout, keeping the
earlier attempts open (a late reply still wins); an upstream that refused the connection,
answered SERVFAIL/REFUSED/FORMERR, or sent a reply that does not parse or does not match the
question is not asked again for that job. When the deadline (below glibc's 5 s) passes or no
upstream is left: a stale answer (kdns.forward.stale) if serve-stale is on, else SERVFAIL.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from typing import Callable, Iterable, Sequence

from kdns import answer as ans
from kdns import wire
from kdns.config import MAX_UDP_PAYLOAD
from kdns.forward import chase
from kdns.forward.acl import DEFAULT_ALLOW, Allow
from kdns.forward.cache import (FORMERR, MAX_NEGATIVE_TTL, MAX_POSITIVE_TTL, REFUSED, SERVFAIL,
                                Cache, Entry, Record, answer_records, normalise, serve)
from kdns.forward.health import INITIAL_RTO, Health
from kdns.forward.loopprobe import LoopProbe
from kdns.forward.stale import STALE_TTL, Stale
from kdns.forward.transport import Reactor, Transport
from kdns.forward.upstreams import ForwardConfigError
from kdns.metrics import (FORWARD_DURATION, FORWARD_INFLIGHT, FORWARD_REFUSED, FORWARD_REQUESTS,
                          FORWARD_RESPONSES, FORWARD_SHED, FORWARD_STALE, RCODES)
from kdns.rawwire import (C_IN, Query, WireError, build_query, error_response, name_to_wire,
                          parse_query)

log = logging.getLogger("kdns.forward")

DEADLINE = 3.5              # everything for one query; glibc's resolver waits 5 s per try
MAX_CONCURRENT = 1000       # CoreDNS forward's default
MAX_CLIENT_FORWARDS = 100
SWEEP_INTERVAL = 1.0

Waiter = Callable[[Entry | None, bool], None]      # (entry or None, stale)


class _Attempt:
    __slots__ = ("i", "ex", "timer", "sent", "tcp", "over", "timed_out")

    def __init__(self, i: int, sent: float, tcp: bool):
        self.i, self.sent, self.tcp = i, sent, tcp
        self.ex = self.timer = None
        self.over = self.timed_out = False


class _Job:
    __slots__ = ("key", "question", "body", "tcp", "waiters", "start", "rotation", "turn",
                 "attempts", "deadline", "done")

    def __init__(self, key: tuple, name: bytes, cd: bool, tcp: bool, start: float):
        self.key = key
        qtype, qclass, do = key[1], key[2], key[3]
        msg, _ = build_query(name, qtype, qclass, do, cd)
        self.body = msg[2:]                       # the query after its ID: a fresh ID per attempt
        self.question = msg[12:12 + len(name) + 4]
        self.tcp = tcp
        self.waiters: list[tuple[str | None, Waiter]] = []
        self.start = start
        self.rotation: list[int] = []
        self.turn = 0
        self.attempts: list[_Attempt] = []
        self.deadline = None
        self.done = False


class Forwarder:
    """Thread-safe: ``submit``, ``forward``, ``resolve`` and ``cached_until`` may be called from
    any thread; the upstream work runs on the reactor's."""

    def __init__(self, upstreams: Sequence[tuple[str, int]], cache_size: int = 10000,
                 timeout: float = 1.5, deadline: float = DEADLINE,
                 clock: Callable[[], float] = time.monotonic, own_zones: Iterable[str] = (),
                 policy: str = "sequential", max_concurrent: int = MAX_CONCURRENT,
                 max_client_forwards: int = MAX_CLIENT_FORWARDS,
                 allow: Iterable[str] = DEFAULT_ALLOW, serve_stale: float = 0.0,
                 initial_rto: float = INITIAL_RTO,
                 caps: tuple[int, int] = (MAX_POSITIVE_TTL, MAX_NEGATIVE_TTL)):
        if not upstreams:
            raise ForwardConfigError("no upstream resolvers")
        self.upstreams = tuple(upstreams)
        self.timeout = timeout          # the longest one attempt at one upstream is waited for
        self.deadline = deadline        # everything for one query, all upstreams together
        self.clock = clock
        self.caps = caps                # --cache-ttl, --cache-denial-ttl
        self.max_concurrent = max(1, max_concurrent)
        self.max_client_forwards = max(1, max_client_forwards)
        # Names under these are answered from the snapshot; cached() leaves them alone, since
        # a fallthrough entry (an upstream PTR) must not outlive the snapshot's NXDOMAIN.
        self._own_zones = tuple(name_to_wire(z).lower() for z in own_zones)
        self.acl = Allow(allow)
        self._cache = Cache(cache_size, clock, keep=serve_stale)
        self.stale = Stale(self._cache, serve_stale)
        self._lock = threading.Lock()
        self._clients: dict[str, int] = {}       # client address -> forwarded queries outstanding
        self.reactor = Reactor()
        self.transport = Transport(self.reactor, self.upstreams)
        self.health = Health(self.reactor, self.transport, policy, cap=timeout, initial_rto=initial_rto)
        self.names = self.health.names
        self.inflight = [0] * len(self.upstreams)
        for i, name in enumerate(self.names):
            FORWARD_INFLIGHT.labels(name).set_function(lambda i=i: self.inflight[i])
        # prometheus children looked up once: labels() costs as much as the increment
        self._requests = [FORWARD_REQUESTS.labels(n) for n in self.names]
        self._durations = [FORWARD_DURATION.labels(n) for n in self.names]
        self._responses: dict[tuple[str, int], object] = {}
        self._jobs: dict[tuple, _Job] = {}       # reactor thread only
        self.reactor.call(self._sweep)
        self.stats = {"hits": 0, "misses": 0, "coalesced": 0, "upstream_queries": 0,
                      "upstream_failures": 0, "servfail": 0, "shed": 0, "stale": 0, "refused": 0}
        self.loop_probe = LoopProbe(self.upstreams, timeout)

    def close(self) -> None:
        self.reactor.call(self.transport.close)
        self.reactor.stop()

    # -- for the server ----------------------------------------------------------------------

    def allows(self, client) -> bool:
        """Whether ``client`` (a socket address) may have names forwarded (``--allow``)."""
        return self.acl.allows(client)

    def admits(self, client, name: bytes = b"") -> bool:
        """``allows``, counting a refusal (kdns_forward_refused_total). Our own loop probe
        (``name``, the query's wire name) is let through from anyone: it comes back from an
        upstream, which need not be a client --allow names, and must be seen to be reported."""
        if self.acl.allows(client) or self.loop_probe.matches(name):
            return True
        self._count("refused")
        FORWARD_REFUSED.inc()
        return False

    def submit(self, query: bytes, client=None, tcp: bool = False,
               reply: Callable[[bytes], None] | None = None) -> bytes | None:
        """The reply to a client's raw query now (a cache hit, REFUSED, SERVFAIL when shed),
        or None: then ``reply(packet)`` is called later, from the reactor's thread. Also None
        (and no reply ever) when the query cannot even be read."""
        try:
            q = parse_query(query)
        except WireError:
            return None
        if self.loop_probe.matches(q.name):
            return self.loop_probe.came_back(q)
        if not self.acl.allows(client):
            self._count("refused")
            FORWARD_REFUSED.inc()
            return error_response(q, REFUSED)
        now = self._ask(q.key, q.name, bool(q.flags & 0x0010), tcp, client,
                        lambda entry, stale: reply(self._packet(q, tcp, entry, stale)))
        if now is None:
            return None
        return self._packet(q, tcp, *now)

    def submit_chase(self, query: wire.Query, resp: ans.Response, limit: int, client,
                     reply: Callable[[bytes], None]) -> bytes | None:
        """The ExternalName chase's packet now, or None and ``reply(packet)`` later. A client
        outside ``--allow`` gets the CNAME alone: the in-zone answer without the recursion."""
        target, qtype = resp.chase
        if not self.acl.allows(client):
            return chase.packet(query, resp, SERVFAIL, (), limit)
        now = self._resolve(target, qtype, client,
                            lambda rcode, records: reply(chase.packet(query, resp, rcode, records, limit)))
        if now is None:
            return None
        return chase.packet(query, resp, *now, limit)

    def cached(self, query: bytes) -> bytes | None:
        """The reply from the forwarding cache alone, else None (see ``cached_until``)."""
        hit = self.cached_until(query)
        return hit[0] if hit is not None else None

    def cached_until(self, query: bytes, client=None) -> tuple[bytes, float] | None:
        """(reply, valid until) from the forwarding cache alone, else None: for the UDP loop,
        before any other parsing. Only plain queries (QR=0, QUERY, EDNS version 0) for names
        outside ``own_zones``, from clients ``--allow`` lets recurse; everything else takes the
        full path.

        The reply's bytes stay exactly the same (TTLs count down in whole seconds) until the
        ``clock()`` reading returned, so the caller may serve them again until then."""
        # QR=0, opcode QUERY, and no answer/authority records, at most one additional (the
        # OPT): anything the core would reject or look at twice goes the full way.
        if len(query) < 12 or query[2] & 0xF8 or query[6:10] != b"\x00\x00\x00\x00" \
                or query[10] or query[11] > 1:
            return None
        try:
            q = parse_query(query)
        except WireError:
            return None
        if q.edns_version or q.name.lower().endswith(self._own_zones) or not self.acl.allows(client):
            return None
        entry = self._cache.get(q.key)
        if entry is None:
            return None
        self.stats["hits"] += 1     # unlocked: a counter that may miss a beat, on the hot path
        now = self.clock()
        until = min(entry.stored + int(now - entry.stored) + 1, entry.stored + entry.lifetime)
        return serve(entry, q, min(q.udp_size, MAX_UDP_PAYLOAD), now), until

    # -- blocking forms (TCP connections have a thread each; tests) -------------------------

    def forward(self, query: bytes, tcp: bool = False, client=None) -> bytes | None:
        """The reply to a client's raw query; None if the query cannot even be read."""
        try:
            q = parse_query(query)
        except WireError:
            return None
        got = self._wait(lambda done: self.submit(query, client, tcp, done))
        return got if got is not None else error_response(q, SERVFAIL)

    def resolve(self, name: str, qtype: int, client=None) -> tuple[int, tuple[Record, ...]]:
        """(rcode, answer RRs) for an ExternalName chase; SERVFAIL and () when no upstream answers."""
        got = self._wait(lambda done: self._resolve(name, qtype, client,
                                                    lambda rcode, records: done((rcode, records))))
        return got if got is not None else (SERVFAIL, ())

    def chase(self, query: wire.Query, resp: ans.Response, limit: int, client=None) -> bytes:
        got = self._wait(lambda done: self.submit_chase(query, resp, limit, client, done))
        return got if got is not None else chase.packet(query, resp, SERVFAIL, (), limit)

    def _wait(self, start):
        box: list = []
        done = threading.Event()
        now = start(lambda value: (box.append(value), done.set()))
        if now is not None:
            return now
        done.wait(self.deadline + 5.0)
        return box[0] if box else None

    # -- the loop probe ----------------------------------------------------------------------

    def start_loop_probe(self, on_loop: Callable[[str], None], attempts: int = 3,
                         interval: float = 1.0) -> threading.Thread:
        """kdns.forward.loopprobe: ``on_loop`` gets the message if the probe comes back."""
        return self.loop_probe.start(on_loop, attempts, interval)

    @property
    def loop_detected(self) -> str | None:
        return self.loop_probe.detected

    # -- the caller's side -------------------------------------------------------------------

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def _packet(self, q: Query, tcp: bool, entry: Entry | None, stale: bool) -> bytes:
        if entry is None:
            self._count("servfail")
            return error_response(q, SERVFAIL)
        limit = 65535 if tcp else min(q.udp_size, MAX_UDP_PAYLOAD)
        return serve(entry, q, limit, self.clock(), STALE_TTL if stale else None)

    def _records(self, entry: Entry | None, stale: bool) -> tuple[int, tuple[Record, ...]]:
        if entry is None:
            return SERVFAIL, ()
        try:
            records = answer_records(entry, self.clock())
        except WireError:          # an rdata name we cannot follow: as good as no answer
            return SERVFAIL, ()
        if stale:
            records = tuple(dataclasses.replace(r, ttl=STALE_TTL) for r in records)
        return entry.rcode, records

    def _resolve(self, name: str, qtype: int, client, done) -> tuple | None:
        wire_name = name_to_wire(name)
        now = self._ask((wire_name.lower(), qtype, C_IN, False), wire_name, False, False, client,
                        lambda entry, stale: done(*self._records(entry, stale)))
        return None if now is None else self._records(*now)

    def _ask(self, key: tuple, name: bytes, cd: bool, tcp: bool, client,
             waiter: Waiter) -> tuple[Entry | None, bool] | None:
        """(entry, stale) to answer with now (entry None: shed, SERVFAIL), or None: the reactor
        calls ``waiter`` later."""
        entry = self._cache.get(key)
        if entry is not None:
            self._count("hits")
            return entry, False
        entry = self.stale.recently_failed(key)
        if entry is not None:
            self._count("stale")
            FORWARD_STALE.inc()
            return entry, True
        ip = None if client is None else client if isinstance(client, str) else client[0]
        if ip is not None:
            with self._lock:
                n = self._clients.get(ip, 0)
                if n >= self.max_client_forwards:
                    self.stats["shed"] += 1
                    FORWARD_SHED.labels("client").inc()
                    return None, False
                self._clients[ip] = n + 1
        self.reactor.call(self._start, key, name, cd, tcp, ip, waiter)
        return None

    def _release(self, ip: str | None) -> None:
        if ip is None:
            return
        with self._lock:
            n = self._clients.get(ip, 0) - 1
            if n > 0:
                self._clients[ip] = n
            else:
                self._clients.pop(ip, None)

    def outstanding(self, client) -> int:
        ip = client if isinstance(client, str) else client[0]
        with self._lock:
            return self._clients.get(ip, 0)

    # -- the reactor's side ------------------------------------------------------------------

    def _start(self, key: tuple, name: bytes, cd: bool, tcp: bool, ip: str | None,
               waiter: Waiter) -> None:
        job = self._jobs.get(key)
        if job is not None:
            self._count("coalesced")
            job.waiters.append((ip, waiter))
            return
        entry = self._cache.get(key)              # filled while this waited for the reactor
        if entry is not None:
            self._release(ip)
            self._call(waiter, entry, False)
            return
        job = _Job(key, name, cd, tcp, self.reactor.now())
        job.waiters.append((ip, waiter))
        job.rotation = self.health.order()
        self._jobs[key] = job
        self._count("misses")
        self._next(job)

    def _next(self, job: _Job, tcp_at: int | None = None) -> None:
        """Send the job's next attempt (over TCP to ``tcp_at`` after a truncated reply)."""
        if job.done:
            return
        remaining = job.start + self.deadline - self.reactor.now()
        if remaining <= 0.01:
            self._finish(job, None)
            return
        if tcp_at is not None:
            i, tcp = tcp_at, True
        else:
            rotation = job.rotation
            i = None
            for k in range(len(rotation)):
                at = (job.turn + k) % len(rotation)
                if self.inflight[rotation[at]] < self.max_concurrent:
                    i, job.turn = rotation[at], at + 1
                    break
            if i is None:
                if not job.attempts:
                    if rotation:             # every upstream left is full: shed, don't queue
                        self.stats["shed"] += 1
                        FORWARD_SHED.labels("upstream").inc()
                    self._finish(job, None)
                self._deadline(job)          # the open attempts or the deadline decide
                return
            tcp = job.tcp
        att = _Attempt(i, self.reactor.now(), tcp)
        job.attempts.append(att)
        self.inflight[i] += 1
        self.stats["upstream_queries"] += 1
        self._requests[i].inc()

        def done(reply: bytes | None, why: str) -> None:
            self._on_reply(job, att, reply, why)
        if tcp:
            self._deadline(job)
            att.ex = self.transport.tcp(i, secrets.token_bytes(2) + job.body,
                                        min(self.timeout, remaining), done)
        else:
            body = job.body
            att.ex = self.transport.udp(i, lambda qid: qid + body, done)
            att.timer = self.reactor.later(min(self.health.rto[i], remaining), self._on_timer, job, att)

    def _sweep(self) -> None:
        """Once a second: end any job past its deadline that no timer ended. None should exist;
        this is the net under a bug, so that a stuck job cannot hold its clients' slots forever."""
        late = self.reactor.now() - self.deadline - SWEEP_INTERVAL
        for job in [j for j in self._jobs.values() if j.start < late]:
            log.warning("a forwarded query outlived its deadline; ended by the sweep")
            self._finish(job, None)
        self.reactor.later(SWEEP_INTERVAL, self._sweep)

    def _deadline(self, job: _Job) -> None:
        """A timer for the job's deadline, for when no attempt's RTO timer will reach it (each
        UDP attempt's timer is capped at the deadline, and its firing ends the job there)."""
        if job.deadline is None:
            job.deadline = self.reactor.later(job.start + self.deadline - self.reactor.now(),
                                              self._finish, job, None)

    def _on_timer(self, job: _Job, att: _Attempt) -> None:
        if att.over or job.done:
            return
        att.timed_out = True                     # still open: a late reply is welcome
        self.stats["upstream_failures"] += 1
        self._response("timeout", att.i)
        self.health.timed_out(att.i)
        self._next(job)

    def _close(self, job: _Job, att: _Attempt) -> None:
        att.over = True
        self.inflight[att.i] -= 1
        if att.timer is not None:
            att.timer.cancel()
        job.attempts.remove(att)

    def _drop(self, job: _Job, i: int) -> None:
        """Upstream ``i`` cannot help with this job: not asked again for it."""
        if i in job.rotation:
            at = job.rotation.index(i)
            job.rotation.pop(at)
            if at < job.turn:
                job.turn -= 1

    def _on_reply(self, job: _Job, att: _Attempt, reply: bytes | None, why: str) -> None:
        if att.over or job.done:
            return
        self._close(job, att)
        i, to = att.i, self.names[att.i]
        if reply is None:
            if not att.timed_out:
                self.stats["upstream_failures"] += 1
                self._response(why, i)
            if why == "timeout":                 # a TCP exchange ran out of time
                self.health.timed_out(i)
            else:                                # refused, reset, unreachable
                self.health.failed(i)
                self._drop(job, i)
            self._next(job)
            return
        rtt = self.reactor.now() - att.sent
        self._durations[i].observe(rtt)
        entry = None
        if _matches(reply, job.question):
            try:
                entry = normalise(reply, self.clock(), self.caps)
            except WireError:
                pass
        if entry is None:
            # Garbage, or a reply to some other question under our ID: never relayed.
            self.stats["upstream_failures"] += 1
            self._response("mismatch", i)
            self._drop(job, i)
            self._next(job)
            return
        self._response(RCODES[entry.rcode], i)
        if reply[2] & 0x02 and not att.tcp:
            log.debug("%s truncated the reply; asking again over TCP", to)
            self.health.answered(i, rtt)
            self._next(job, tcp_at=i)
            return
        if entry.rcode in (SERVFAIL, REFUSED, FORMERR):
            # This upstream cannot help (lame, misconfigured, overloaded): try the next one.
            self.stats["upstream_failures"] += 1
            self.health.failed(i)
            self._drop(job, i)
            self._next(job)
            return
        self.health.answered(i, rtt)
        self._finish(job, entry)

    def _finish(self, job: _Job, entry: Entry | None) -> None:
        if job.done:
            return
        job.done = True
        self._jobs.pop(job.key, None)
        if job.deadline is not None:
            job.deadline.cancel()
        for att in list(job.attempts):
            if not att.timed_out:                # given up on at the deadline
                self.stats["upstream_failures"] += 1
                self._response("timeout", att.i)
            att.ex.cancel()
            self._close(job, att)
        stale = False
        if entry is not None:
            self._cache.put(job.key, entry)
            self.stale.succeeded(job.key)
        else:
            entry = self.stale.after_failure(job.key)
            if entry is not None:
                stale = True
                self._count("stale", len(job.waiters))
                FORWARD_STALE.inc(len(job.waiters))
        for ip, waiter in job.waiters:
            self._release(ip)
            self._call(waiter, entry, stale)

    def _response(self, rcode: str, i: int) -> None:
        child = self._responses.get((rcode, i))
        if child is None:
            child = self._responses[(rcode, i)] = FORWARD_RESPONSES.labels(rcode, self.names[i])
        child.inc()

    @staticmethod
    def _call(waiter: Waiter, entry: Entry | None, stale: bool) -> None:
        try:
            waiter(entry, stale)
        except Exception:                        # one client's reply must not stop the others
            log.exception("internal error replying to a forwarded query")


def _matches(reply: bytes, question: bytes) -> bool:
    # QR=1, one question, and the same question (case-insensitively: upstreams may 0x20-randomise).
    end = 12 + len(question)
    return (len(reply) >= end and reply[2] & 0x80 and reply[4:6] == b"\x00\x01"
            and reply[12:end].lower() == question.lower())

