"""The upstream side of forwarding: one job per question, asked of the upstreams in turn, on
the reactor's thread (kdns.forward.transport) only.

A job asks the upstreams in the policy's order (kdns.forward.health), the next one after an
adaptive per-attempt timeout, keeping the earlier attempts open (a late reply still wins); an
upstream that refused the connection, answered SERVFAIL/REFUSED/FORMERR, or sent a reply that
does not parse or does not match the question is not asked again for that job. Concurrent
identical misses share one job. At most ``max_concurrent`` queries are in flight per upstream
(CoreDNS forward's max_concurrent): beyond, the job is shed. When the deadline (below glibc's
5 s) passes or no upstream is left: a stale answer (kdns.forward.stale) if serve-stale is on,
else None, which the caller answers SERVFAIL.
"""

from __future__ import annotations

import logging
import secrets
from typing import Callable

from kdns.forward.cache import FORMERR, REFUSED, SERVFAIL, Cache, Entry, normalise
from kdns.forward.health import Health
from kdns.forward.stale import Stale
from kdns.forward.transport import Reactor, Transport
from kdns.metrics import (FORWARD_DURATION, FORWARD_REQUESTS, FORWARD_RESPONSES, FORWARD_SHED,
                          FORWARD_STALE, RCODES)
from kdns.rawwire import WireError, build_query

log = logging.getLogger("kdns.forward")

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


class Jobs:
    """The jobs in flight and the per-upstream in-flight counts. ``stats`` is the Forwarder's:
    its reactor-only counters are written here unlocked, the ones the callers' threads share go
    through ``count(what, n=1)``; ``release(ip)`` gives a waiter's per-client slot back;
    ``clock`` stamps cache entries."""

    def __init__(self, reactor: Reactor, transport: Transport, health: Health, cache: Cache,
                 stale: Stale, stats: dict, count: Callable[..., None], release: Callable[[str | None], None],
                 clock: Callable[[], float], caps: tuple[int, int], timeout: float,
                 deadline: float, max_concurrent: int):
        self.reactor, self.transport, self.health = reactor, transport, health
        self.cache, self.stale, self.stats, self.count = cache, stale, stats, count
        self.release, self.clock, self.caps = release, clock, caps
        self.timeout, self.deadline, self.max_concurrent = timeout, deadline, max_concurrent
        self.names = health.names
        self.inflight = [0] * len(self.names)
        # prometheus children looked up once: labels() costs as much as the increment
        self._requests = [FORWARD_REQUESTS.labels(n) for n in self.names]
        self._durations = [FORWARD_DURATION.labels(n) for n in self.names]
        self._responses: dict[tuple[str, int], object] = {}
        self._jobs: dict[tuple, _Job] = {}
        reactor.call(self._sweep)

    def start(self, key: tuple, name: bytes, cd: bool, tcp: bool, ip: str | None,
              waiter: Waiter) -> None:
        job = self._jobs.get(key)
        if job is not None:
            self.count("coalesced")
            job.waiters.append((ip, waiter))
            return
        entry = self.cache.get(key)               # filled while this waited for the reactor
        if entry is not None:
            self.release(ip)
            _call(waiter, entry, False)
            return
        job = _Job(key, name, cd, tcp, self.reactor.now())
        job.waiters.append((ip, waiter))
        job.rotation = self.health.order()
        self._jobs[key] = job
        self.count("misses")
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
            self.cache.put(job.key, entry)
            self.stale.succeeded(job.key)
        else:
            entry = self.stale.after_failure(job.key)
            if entry is not None:
                stale = True
                self.count("stale", len(job.waiters))
                FORWARD_STALE.inc(len(job.waiters))
        for ip, waiter in job.waiters:
            self.release(ip)
            _call(waiter, entry, stale)

    def _response(self, rcode: str, i: int) -> None:
        child = self._responses.get((rcode, i))
        if child is None:
            child = self._responses[(rcode, i)] = FORWARD_RESPONSES.labels(rcode, self.names[i])
        child.inc()


def _call(waiter: Waiter, entry: Entry | None, stale: bool) -> None:
    try:
        waiter(entry, stale)
    except Exception:                            # one client's reply must not stop the others
        log.exception("internal error replying to a forwarded query")


def _matches(reply: bytes, question: bytes) -> bool:
    # QR=1, one question, and the same question (case-insensitively: upstreams may 0x20-randomise).
    end = 12 + len(question)
    return (len(reply) >= end and reply[2] & 0x80 and reply[4:6] == b"\x00\x01"
            and reply[12:end].lower() == question.lower())
