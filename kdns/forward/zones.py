"""Per-zone forwarding (stub domains, ``--forward ZONE=HOST...``): which upstream set a name goes to.

One Forwarder per upstream set, each with everything the default upstreams have (its own
forwarding cache, health checks and probes, policy, max_concurrent, per-client limit,
serve-stale), all on one reactor thread, behind one ``--allow`` and one loop probe sent to
every upstream. A name goes to:

1. the longest ``--forward`` zone that holds it (CoreDNS picks the server block of the longest
   matching zone the same way);
2. else, inside a ``--forward-except`` zone, nowhere: SERVFAIL. CoreDNS forward hands an
   excepted name to the next plugin, and at the end of the chain (where forward sits in every
   Corefile kdns reads) that is ``plugin.NextOrFailure``'s SERVFAIL;
3. else the default upstreams (``--upstream`` / ``--resolv-conf``); with none, the server
   answers as it does without forwarding (REFUSED, or its own answer for a fallthrough or a
   chase): ``takes`` says which.

Names are matched on their wire form, label by label (a dot inside a label is not a boundary).
The server offers this object the names it would forward (``resp.forward``, ``fallthrough``,
``chase``), so the hot path for in-zone answers never sees it; only stub zones inside a served
zone (``--forward-inside-cluster-zone``) are looked up before the cluster data (``inside``).
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Sequence

from kdns import answer as ans
from kdns import wire
from kdns.forward import chase
from kdns.forward.acl import DEFAULT_ALLOW, Allow
from kdns.forward.cache import REFUSED, SERVFAIL
from kdns.forward.forwarder import Forwarder, plain_query
from kdns.forward.loopprobe import LoopProbe
from kdns.forward.transport import Reactor
from kdns.metrics import FORWARD_REFUSED
from kdns.rawwire import Query, WireError, error_response, name_to_wire_loose, parse_query

EXCEPTED = object()          # route(): a --forward-except name (SERVFAIL)

Upstreams = Sequence[tuple[str, int]]


class Zones:
    """``default``: the default upstreams (may be empty); ``stubs``: (zone, upstreams) pairs,
    zones lower case without the trailing dot; ``excepted``: --forward-except zones; ``inside``:
    the stub zones at or inside a served zone (answered before the cluster data). ``options``
    are the Forwarder's, the same for every set."""

    def __init__(self, default: Upstreams, stubs: Sequence[tuple[str, Upstreams]] = (),
                 excepted: Iterable[str] = (), inside: Iterable[str] = (),
                 allow: Iterable[str] = DEFAULT_ALLOW, timeout: float = 1.5, **options):
        self.reactor = Reactor()
        every = list(dict.fromkeys([*default, *(u for _, ups in stubs for u in ups)]))
        self.loop_probe = LoopProbe(every, timeout)
        allow = tuple(allow)
        self.acl = Allow(allow)

        def make(upstreams: Upstreams) -> Forwarder:
            return Forwarder(upstreams, allow=allow, timeout=timeout, reactor=self.reactor,
                             loop_probe=self.loop_probe, **options)
        self.default = make(default) if default else None
        self.stubs = {zone: make(ups) for zone, ups in stubs}
        self.forwarders = ([self.default] if self.default else []) + list(self.stubs.values())
        self.clock: Callable[[], float] = self.forwarders[0].clock if self.forwarders else None
        self._by_wire = {_wire(z): f for z, f in self.stubs.items()}
        self._excepted = {_wire(z) for z in excepted}
        inside_wire = {_wire(z) for z in inside}
        self._inside = {w: f for w, f in self._by_wire.items() if w in inside_wire}
        self._inside_suffixes = tuple(self._inside)
        # The server asks ``inside(qname wire)`` before answering, only when there is one.
        self.inside = self._is_inside if self._inside else None
        self.stats = {"refused": 0, "excepted": 0}
        self._lock = threading.Lock()

    def close(self) -> None:
        for f in self.forwarders:
            f.close()
        self.reactor.stop()

    # -- routing -----------------------------------------------------------------------------

    def route(self, name: bytes):
        """The Forwarder for a wire name, EXCEPTED, or None (no default upstreams)."""
        name = name.lower()
        stubs, excepted = self._by_wire, self._excepted
        i, out = 0, None
        while True:
            tail = name[i:]
            if stubs:
                f = stubs.get(tail)
                if f is not None:
                    return f                     # the first hit, walking up, is the longest
            if out is None and tail in excepted:
                out = EXCEPTED
            n = name[i] if i < len(name) else 0
            if n == 0:
                return out or self.default
            i += n + 1

    def _is_inside(self, name: bytes) -> bool:
        # Most names end in none of those zones' wire forms: one C-level test settles them; a
        # byte-suffix hit is confirmed label by label (it may not start at a label boundary).
        if not name.lower().endswith(self._inside_suffixes):
            return False
        f = self.route(name)
        return f is not None and f is not EXCEPTED and f in self._inside.values()

    def takes(self, name: bytes | str) -> bool:
        """Whether a name the server would forward goes anywhere here (else the server gives
        its answer without an upstream). ``name``: wire form, or text (a chase's target)."""
        if self.default is not None:
            return True
        if isinstance(name, str):
            try:
                name = name_to_wire_loose(name)
            except (UnicodeError, ValueError):
                return False
        return self.loop_probe.matches(name) or self.route(name) is not None

    # -- the Forwarder's interface, for the server -------------------------------------------

    def allows(self, client) -> bool:
        return self.acl.allows(client)

    def admits(self, client, name: bytes = b"") -> bool:
        if self.acl.allows(client) or self.loop_probe.matches(name):
            return True
        self._count("refused")
        FORWARD_REFUSED.inc()
        return False

    def cached_until(self, query: bytes, client=None) -> tuple[bytes, float] | None:
        q = plain_query(query)
        if q is None:
            return None
        f = self.route(q.name)
        if f is None or f is EXCEPTED:
            return None
        return f.cached_for(q, client)

    def _routed(self, query: bytes, client):
        """(the parsed query, the Forwarder of its zone), or (None, the reply to give now:
        None for an unreadable query, the loop probe's own, or an unrouted name's)."""
        try:
            q = parse_query(query)
        except WireError:
            return None, None
        if self.loop_probe.matches(q.name):
            return None, self.loop_probe.came_back(q)
        f = self.route(q.name)
        if f is None or f is EXCEPTED:
            return None, self._unrouted(q, f, client)
        return q, f

    def submit(self, query: bytes, client=None, tcp: bool = False,
               reply: Callable[[bytes], None] | None = None) -> bytes | None:
        q, f = self._routed(query, client)
        return f if q is None else f.submit_query(q, client, tcp, reply)

    def forward(self, query: bytes, tcp: bool = False, client=None) -> bytes | None:
        q, f = self._routed(query, client)
        return f if q is None else f.forward(query, tcp, client)

    def submit_chase(self, query: wire.Query, resp: ans.Response, limit: int, client,
                     reply: Callable[[bytes], None]) -> bytes | None:
        f = self._chase_route(resp)
        if f is None or f is EXCEPTED:
            return chase.packet(query, resp, SERVFAIL, (), limit)   # the CNAME alone
        return f.submit_chase(query, resp, limit, client, reply)

    def chase(self, query: wire.Query, resp: ans.Response, limit: int, client=None) -> bytes:
        f = self._chase_route(resp)
        if f is None or f is EXCEPTED:
            return chase.packet(query, resp, SERVFAIL, (), limit)
        return f.chase(query, resp, limit, client)

    def start_loop_probe(self, on_loop: Callable[[str], None], attempts: int = 3,
                         interval: float = 1.0) -> threading.Thread:
        return self.loop_probe.start(on_loop, attempts, interval)

    @property
    def loop_detected(self) -> str | None:
        return self.loop_probe.detected

    # -- helpers -----------------------------------------------------------------------------

    def _chase_route(self, resp: ans.Response):
        try:
            return self.route(name_to_wire_loose(resp.chase[0]))
        except (UnicodeError, ValueError):
            return self.default

    def _unrouted(self, q: Query, f, client) -> bytes:
        if not self.acl.allows(client):
            self._count("refused")
            FORWARD_REFUSED.inc()
            return error_response(q, REFUSED)
        if f is EXCEPTED:
            self._count("excepted")
            return error_response(q, SERVFAIL)
        return error_response(q, REFUSED)        # no upstream for it (takes() said so first)

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1


def _wire(zone: str) -> bytes:
    return name_to_wire_loose(zone).lower()
