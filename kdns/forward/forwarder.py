"""The Forwarder: a client's query in, the upstreams' answer out, without ever blocking a thread
of the server's (dns-behavior.md §6). One Forwarder is one upstream set: the default upstreams,
or one stub domain's (kdns.forward.zones picks which).

``submit`` is called by the server's threads; it answers from the forwarding cache at once,
sheds at once, or hands the query to the reactor (kdns.forward.transport), where a job asks
the upstreams (kdns.forward.jobs), and returns; the reply goes out later through the caller's
``reply`` callback, from the reactor's thread.

Limits, both answered SERVFAIL at once so that the client moves on (CoreDNS forward answers an
overflow the same way): ``max_client_forwards`` forwarded queries outstanding per client address,
so one client flooding a dead zone cannot take the upstream slots of everyone else, and
``max_concurrent`` queries in flight per upstream (CoreDNS forward's max_concurrent).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Iterable, Sequence

from kdns import answer as ans
from kdns import wire
from kdns.config import MAX_UDP_PAYLOAD
from kdns.forward import chase
from kdns.forward.acl import DEFAULT_ALLOW, Allow
from kdns.forward.cache import (MAX_NEGATIVE_TTL, MAX_POSITIVE_TTL, REFUSED, SERVFAIL, Cache,
                                Entry, Record, answer_records, serve)
from kdns.forward.health import INITIAL_RTO, Health
from kdns.forward.jobs import Jobs, Waiter
from kdns.forward.loopprobe import LoopProbe
from kdns.forward.stale import STALE_TTL, Stale
from kdns.forward.transport import Reactor, Transport
from kdns.forward.upstreams import ForwardConfigError
from kdns.metrics import (FORWARD_INFLIGHT, FORWARD_REFUSED, FORWARD_SHED, FORWARD_STALE,
                          shared_gauge, unshare_gauge)
from kdns.rawwire import C_IN, Query, WireError, error_response, name_to_wire, parse_query

log = logging.getLogger("kdns.forward")

DEADLINE = 3.5              # everything for one query; glibc's resolver waits 5 s per try
MAX_CONCURRENT = 1000       # CoreDNS forward's default
MAX_CLIENT_FORWARDS = 100


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
                 caps: tuple[int, int] = (MAX_POSITIVE_TTL, MAX_NEGATIVE_TTL),
                 reactor: Reactor | None = None, loop_probe: LoopProbe | None = None):
        """``reactor`` and ``loop_probe`` may be shared by several Forwarders (one per zone,
        kdns.forward.zones): then ``close`` leaves them to their owner."""
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
        self._own_reactor = reactor is None
        self.reactor = reactor or Reactor()
        self.transport = Transport(self.reactor, self.upstreams)
        self.health = Health(self.reactor, self.transport, policy, cap=timeout, initial_rto=initial_rto)
        self.names = self.health.names
        self.stats = {"hits": 0, "misses": 0, "coalesced": 0, "upstream_queries": 0,
                      "upstream_failures": 0, "servfail": 0, "shed": 0, "stale": 0, "refused": 0}
        self.jobs = Jobs(self.reactor, self.transport, self.health, self._cache, self.stale,
                         self.stats, self._count, self._release, clock, caps, timeout, deadline,
                         self.max_concurrent)
        self.inflight = self.jobs.inflight
        # An upstream in several zones' sets is one series (its `to`): their in-flight counts add.
        for i, name in enumerate(self.names):
            shared_gauge(FORWARD_INFLIGHT, name, self, lambda i=i: self.inflight[i], sum)
        self.loop_probe = loop_probe or LoopProbe(self.upstreams, timeout)

    # The server's questions for kdns.forward.zones, answered for one upstream set: every name
    # is this set's, and none is looked up before the cluster data.
    inside = None

    def takes(self, name) -> bool:
        return True

    def close(self) -> None:
        for name in self.names:
            unshare_gauge(FORWARD_INFLIGHT, name, self)
        self.health.close()
        self.reactor.call(self.transport.close)
        if self._own_reactor:
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
        return self.submit_query(q, client, tcp, reply)

    def submit_query(self, q: Query, client=None, tcp: bool = False,
                     reply: Callable[[bytes], None] | None = None) -> bytes | None:
        """``submit`` of a query already read (kdns.forward.zones reads it to route it)."""
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
        q = plain_query(query)
        return None if q is None else self.cached_for(q, client)

    def cached_for(self, q: Query, client=None) -> tuple[bytes, float] | None:
        """``cached_until`` of a query ``plain_query`` read."""
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
        self.reactor.call(self.jobs.start, key, name, cd, tcp, ip, waiter)
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


def plain_query(query: bytes) -> Query | None:
    """The query read, if it is one the forwarding cache may answer alone: QR=0, opcode QUERY,
    and no answer/authority records, at most one additional (the OPT). Anything the core would
    reject or look at twice goes the full way (None)."""
    if len(query) < 12 or query[2] & 0xF8 or query[6:10] != b"\x00\x00\x00\x00" \
            or query[10] or query[11] > 1:
        return None
    try:
        return parse_query(query)
    except WireError:
        return None
