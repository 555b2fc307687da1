"""Upstream forwarding for names outside our zones, and its cache.

dns-behavior.md §6: a query under none of our zones goes to the upstream resolvers (``--upstream``,
else the nameservers of ``--resolv-conf``); the answer is relayed with the upstream's flags and
AA=0. §3.5: an ExternalName whose target is outside the zone is chased through the same
forwarder (``Forwarder.resolve``).

Transport: UDP with a per-attempt timeout, next upstream on failure, TCP when the UDP reply is
truncated; a query that came in over TCP goes upstream over TCP. Every forwarded query has one
overall deadline, shorter than a stub resolver's own timeout (glibc: 5 s), so that when every
upstream fails the client gets SERVFAIL rather than silence.

Cache (cachetools): key (qname lower-cased, qtype, qclass, DO bit). An entry lives for the
smallest TTL in the message (capped at MAX_POSITIVE_TTL), a negative answer for
min(SOA TTL, SOA MINIMUM) (RFC 2308 §5; no SOA, no caching); served copies have their TTLs
decremented, never extended. Concurrent identical misses share one upstream query.

The byte-level work (walk names, read the question and EDNS, build SERVFAIL) is kdns.rawwire's;
a cache hit here is a copy, a splice and a few TTL patches, far cheaper than a parse and a pack.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import cachetools

from kdns import answer as ans
from kdns import wire
from kdns.rawwire import (C_IN, Query, WireError, opt_rr, read_name,
                          skip_name, build_query, error_response, name_to_wire,
                          name_to_wire_loose, parse_query, wire_to_name)
from kdns.config import MAX_UDP_PAYLOAD, format_hostport as _fmt
from kdns.metrics import FORWARDS

log = logging.getLogger("kdns.forward")

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, REFUSED = 0, 1, 2, 3, 5
RCODE_NAMES = {NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN",
               4: "NOTIMP", REFUSED: "REFUSED"}
T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_HINFO, T_MX, T_AAAA, T_SRV, T_DNAME, T_OPT = (
    1, 2, 5, 6, 12, 13, 15, 28, 33, 39, 41)

# What CoreDNS's cache plugin caps at (success 3600 s, denial 1800 s): an upstream's week-long TTL
# should not pin an answer here for a week.
MAX_POSITIVE_TTL = 3600
MAX_NEGATIVE_TTL = 1800
# How long an upstream that failed is tried after the healthy ones.
DOWN_SECONDS = 10.0


class ForwardConfigError(ValueError):
    """A bad upstream configuration; the message is for the user."""


class ForwardingLoop(RuntimeError):
    """Our loop probe came back to us: an upstream forwards to kdns."""


@dataclass(frozen=True, slots=True)
class Entry:
    """An upstream answer, normalised for serving to any client: ID 0, OPT removed."""
    msg: bytes
    counts: tuple[int, int, int]       # answer, authority, additional (OPT not counted)
    rr_ends: tuple[int, ...]           # end offset of each RR, in message order
    ttl_offsets: tuple[int, ...]       # where each RR's TTL sits
    rcode: int
    lifetime: int                      # seconds this may be served from cache; 0 = not cacheable
    stored: float                      # clock reading when it arrived


def normalise(msg: bytes, now: float, caps: tuple[int, int] = (MAX_POSITIVE_TTL, MAX_NEGATIVE_TTL)) -> Entry:
    """Walk an upstream response: strip OPT, note TTL positions, work out the cache lifetime.
    ``caps`` (--cache-ttl, --cache-denial-ttl; CoreDNS cache's success and denial TTLs): no TTL
    is served, nor the entry kept, longer than the cap of its kind."""
    if len(msg) < 12:
        raise WireError("shorter than a DNS header")
    flags, qd, an, ns, ar = struct.unpack_from("!HHHHH", msg, 2)
    off = 12
    for _ in range(qd):
        off = skip_name(msg, off) + 4
    if off > len(msg):
        raise WireError("truncated question")
    rr_ends, ttl_offsets, ttls = [], [], []
    neg_ttl = -1
    kept = [0, 0, 0]
    cut = None
    for i in range(an + ns + ar):
        rstart = off
        off = skip_name(msg, off)
        if off + 10 > len(msg):
            raise WireError("truncated resource record")
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
        ttl_off = off + 4
        rdata = off + 10
        off = rdata + rdlen
        if off > len(msg):
            raise WireError("truncated rdata")
        section = 0 if i < an else 1 if i < an + ns else 2
        if rtype == T_OPT:
            # The client gets our own OPT (or none); RRs after the OPT are dropped with it so
            # that no compression pointer can point into removed bytes.
            cut = rstart
            break
        if ttl & 0x80000000:   # RFC 2181 §8: a TTL with the top bit set means zero
            ttl = 0
            msg = msg[:ttl_off] + b"\x00\x00\x00\x00" + msg[ttl_off + 4:]
        cap = caps[1] if (flags & 0x000F) == NXDOMAIN or not an else caps[0]
        if ttl > cap:
            ttl = cap
            msg = msg[:ttl_off] + struct.pack("!I", cap) + msg[ttl_off + 4:]
        kept[section] += 1
        rr_ends.append(off)
        ttl_offsets.append(ttl_off)
        ttls.append(ttl)
        if rtype == T_SOA and section == 1:
            _, p = read_name(msg, rdata)
            _, p = read_name(msg, p)
            if p + 20 <= off:
                minimum = struct.unpack_from("!I", msg, p + 16)[0]
                neg_ttl = min(ttl, minimum)
    if cut is None:
        cut = off
    rcode = flags & 0x000F
    body = bytearray(msg[:cut])
    body[0:2] = b"\x00\x00"
    struct.pack_into("!HHH", body, 6, *kept)
    tc = bool(flags & 0x0200)
    lifetime = 0
    if not tc:
        if rcode == NXDOMAIN or (rcode == NOERROR and kept[0] == 0):
            if neg_ttl >= 0:
                lifetime = min([neg_ttl, caps[1], *ttls])
        elif rcode == NOERROR:
            lifetime = min([caps[0], *ttls])
    return Entry(bytes(body), tuple(kept), tuple(rr_ends), tuple(ttl_offsets), rcode, lifetime, now)


def serve(entry: Entry, q: Query, limit: int, now: float) -> bytes:
    """The cached answer as a reply to ``q``: its ID, RD and question spelling, TTLs decremented,
    OPT iff it sent one, cut to ``limit`` bytes at an RR boundary with TC=1 when it does not fit."""
    out = bytearray(entry.msg)
    out[0:2] = q.id
    # Relay the upstream's flags, but AA=0 (we are not the authority) and RD as the client sent it.
    out[2] = (out[2] & 0xFA) | ((q.flags >> 8) & 0x01)
    qend = 12 + len(q.question)
    if len(entry.msg) >= qend and out[12:qend].lower() == q.question.lower():
        out[12:qend] = q.question
    elapsed = int(now - entry.stored)
    if elapsed > 0:
        for off in entry.ttl_offsets:
            ttl = struct.unpack_from("!I", out, off)[0]
            struct.pack_into("!I", out, off, max(0, ttl - elapsed))
    opt = opt_rr(q.do) if q.edns else b""
    budget = limit - len(opt)
    if len(out) > budget:
        keep = 0
        while keep < len(entry.rr_ends) and entry.rr_ends[keep] <= budget:
            keep += 1
        start = entry.rr_ends[keep - 1] if keep else (12 + _question_len(entry.msg))
        del out[start:]
        an = min(entry.counts[0], keep)
        ns = min(entry.counts[1], keep - an)
        struct.pack_into("!HHH", out, 6, an, ns, keep - an - ns)
        out[2] |= 0x02
    if opt:
        struct.pack_into("!H", out, 10, struct.unpack_from("!H", out, 10)[0] + 1)
        out += opt
    return bytes(out)


def _question_len(msg: bytes) -> int:
    qd = struct.unpack_from("!H", msg, 4)[0]
    off = 12
    for _ in range(qd):
        off = skip_name(msg, off) + 4
    return off - 12


@dataclass(frozen=True, slots=True)
class Record:
    """One upstream RR with names uncompressed, so it can be copied into another message."""
    name: str          # absolute presentation form
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes       # uncompressed wire rdata

    def to_wire(self) -> bytes:
        return (name_to_wire_loose(self.name) + struct.pack("!HHIH", self.rtype, self.rclass,
                                                            self.ttl, len(self.rdata)) + self.rdata)


# rdata layouts with names in them: (bytes before the first name, number of names, bytes after).
_NAMED_RDATA = {T_NS: (0, 1), T_CNAME: (0, 1), T_PTR: (0, 1), T_DNAME: (0, 1),
                T_MX: (2, 1), T_SRV: (6, 1), T_SOA: (0, 2)}


def answer_records(entry: Entry, now: float) -> tuple[Record, ...]:
    """The answer section of ``entry``, names uncompressed, TTLs decremented."""
    msg = entry.msg
    elapsed = max(0, int(now - entry.stored))
    off = 12 + _question_len(msg)
    records = []
    for _ in range(entry.counts[0]):
        owner, off = read_name(msg, off)
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
        rd = off + 10
        off = rd + rdlen
        rdata = msg[rd:off]
        layout = _NAMED_RDATA.get(rtype)
        if layout:
            head, count = layout
            parts = [msg[rd:rd + head]]
            p = rd + head
            for _ in range(count):
                n, p = read_name(msg, p)
                parts.append(n)
            parts.append(msg[p:off])
            rdata = b"".join(parts)
        records.append(Record(wire_to_name(owner), rtype, rclass, max(0, ttl - elapsed), rdata))
    return tuple(records)


# ---------------------------------------------------------------------------------------------
# Upstream selection
# ---------------------------------------------------------------------------------------------

def read_resolv_conf(path: str) -> list[tuple[str, int]]:
    """The ``nameserver`` lines of a resolv.conf, port 53 (the file has no syntax for others)."""
    servers = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.split("#", 1)[0].split(";", 1)[0].split()
            if len(words) >= 2 and words[0] == "nameserver":
                host = words[1]         # fe80::1%eth0 keeps its zone: connect() needs it
                try:
                    ipaddress.ip_address(host)
                except ValueError:
                    log.warning("%s: ignoring nameserver %r: not an IP address", path, words[1])
                    continue
                servers.append((host, 53))
    return servers


def _is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this machine (network namespace): can we bind to it?"""
    ip = ipaddress.ip_address(host)
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def is_own_address(upstream: tuple[str, int], listens: Iterable[tuple[str, int]]) -> bool:
    host, port = upstream
    up = ipaddress.ip_address(host)
    for lhost, lport in listens:
        if lport != port:
            continue
        lip = ipaddress.ip_address(lhost)
        if lip == up:
            return True
        if lip.is_unspecified and _is_local_address(host):
            return True
    return False


def choose_upstreams(explicit: Sequence[tuple[str, int]], resolv_conf: str,
                     listens: Sequence[tuple[str, int]],
                     missing_ok: bool = False) -> list[tuple[str, int]]:
    """``--upstream`` if given, else the nameservers of ``--resolv-conf`` (``""`` = none), minus
    kdns's own listen addresses. Raises ForwardConfigError when only our own addresses are left,
    or when the file cannot be read (unless ``missing_ok``: the default path on a machine
    without one)."""
    if explicit:
        source, candidates = "--upstream", list(explicit)
    elif resolv_conf:
        source = f"--resolv-conf {resolv_conf}"
        try:
            candidates = read_resolv_conf(resolv_conf)
        except FileNotFoundError:
            if not missing_ok:
                raise ForwardConfigError(f"{source}: cannot read: no such file") from None
            candidates = []
        except OSError as e:
            raise ForwardConfigError(f"{source}: cannot read: {e.strerror}") from None
    else:
        return []
    chosen, own = [], []
    for up in dict.fromkeys(candidates):
        (own if is_own_address(up, listens) else chosen).append(up)
    for host, port in own:
        log.warning("%s: not forwarding to %s: that is kdns's own listen address", source,
                    _fmt(host, port))
    if own and not chosen:
        raise ForwardConfigError(
            f"{source}: every upstream ({', '.join(_fmt(*u) for u in own)}) is kdns's own listen "
            "address, which would be a forwarding loop; give a real resolver with --upstream "
            "HOST[:PORT]")
    return chosen


# ---------------------------------------------------------------------------------------------
# The forwarder
# ---------------------------------------------------------------------------------------------

class _Flight:
    __slots__ = ("done", "entry")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Entry | None = None


class Forwarder:
    """Thread-safe: ``forward`` and ``resolve`` may be called from any number of threads."""

    def __init__(self, upstreams: Sequence[tuple[str, int]], cache_size: int = 10000,
                 timeout: float = 1.5, deadline: float = 3.5,
                 clock: Callable[[], float] = time.monotonic, own_zones: Iterable[str] = (),
                 caps: tuple[int, int] = (MAX_POSITIVE_TTL, MAX_NEGATIVE_TTL)):
        if not upstreams:
            raise ForwardConfigError("no upstream resolvers")
        self.upstreams = tuple(upstreams)
        self.timeout = timeout          # one attempt at one upstream
        self.deadline = deadline        # everything for one query, all upstreams together
        self.clock = clock
        self.caps = caps
        # Names under these are answered from the snapshot; cached() leaves them alone, since
        # a fallthrough entry (an upstream PTR) must not outlive the snapshot's NXDOMAIN.
        self._own_zones = tuple(name_to_wire(z).lower() for z in own_zones)
        self._lock = threading.Lock()
        self._cache = cachetools.TLRUCache(max(1, cache_size), _expires, timer=clock)
        self._flights: dict[tuple, _Flight] = {}
        self._down_until = [0.0] * len(self.upstreams)
        self.stats = {"hits": 0, "misses": 0, "coalesced": 0, "upstream_queries": 0,
                      "upstream_failures": 0, "servfail": 0}
        self._probe: bytes | None = None
        self._on_loop: Callable[[str], None] | None = None
        self.loop_detected: str | None = None

    # -- public ------------------------------------------------------------------------------

    def forward(self, query: bytes, tcp: bool = False) -> bytes | None:
        """The reply to a client's raw query; None if the query cannot even be read."""
        try:
            q = parse_query(query)
        except WireError:
            return None
        if self._probe is not None and q.name.lower() == self._probe:
            return self._probe_came_back(q)
        entry = self._lookup(q.key, q.name, q.flags, tcp)
        if entry is None:
            self._count("servfail")
            return error_response(q, SERVFAIL)
        return serve(entry, q, 65535 if tcp else min(q.udp_size, MAX_UDP_PAYLOAD), self.clock())

    def cached(self, query: bytes) -> bytes | None:
        """The reply from the forwarding cache alone, else None (see ``cached_until``)."""
        hit = self.cached_until(query)
        return hit[0] if hit is not None else None

    def cached_until(self, query: bytes) -> tuple[bytes, float] | None:
        """(reply, valid until) from the forwarding cache alone, else None: for the UDP loop,
        before any other parsing. Only plain queries (QR=0, QUERY, EDNS version 0) for names
        outside ``own_zones``; everything else takes the full path.

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
        if q.edns_version or q.name.lower().endswith(self._own_zones):
            return None
        with self._lock:
            entry = self._cache.get(q.key)
        if entry is None:
            return None
        self.stats["hits"] += 1     # unlocked: a counter that may miss a beat, on the hot path
        now = self.clock()
        until = min(entry.stored + int(now - entry.stored) + 1, entry.stored + entry.lifetime)
        return serve(entry, q, min(q.udp_size, MAX_UDP_PAYLOAD), now), until

    def resolve(self, name: str, qtype: int) -> tuple[int, tuple[Record, ...]]:
        """(rcode, answer RRs) for an ExternalName chase; SERVFAIL and () when no upstream answers."""
        wire = name_to_wire(name)
        entry = self._lookup((wire.lower(), qtype, C_IN, False), wire, 0x0100, False)
        if entry is None:
            return SERVFAIL, ()
        try:
            return entry.rcode, answer_records(entry, self.clock())
        except WireError:          # an rdata name we cannot follow: as good as no answer
            return SERVFAIL, ()

    def chase(self, query: wire.Query, resp: ans.Response, limit: int) -> bytes:
        """The packet for an ExternalName A/AAAA whose target is outside our zones (§3.5): the
        CNAME the answer engine made, then the target's records from upstream, TTLs as received.
        NXDOMAIN, NODATA or no upstream answer: NOERROR with the CNAME alone."""
        target, qtype = resp.chase
        rcode, records = self.resolve(target, qtype)
        if rcode == NOERROR:
            resp.answer.extend(r for r in map(_answer_tuple, records) if r is not None)
        return wire.encode(query, resp, limit)

    def start_loop_probe(self, on_loop: Callable[[str], None], attempts: int = 3,
                         interval: float = 1.0) -> threading.Thread:
        """CoreDNS's ``loop`` plugin: send HINFO <rand>.<rand>. to the upstreams. A query we send
        straight to an upstream never reaches our own sockets unless the upstream sends it back,
        so the first sight of it in ``forward`` is a loop; ``on_loop`` gets the message."""
        name = f"{secrets.randbelow(10**12)}.{secrets.randbelow(10**12)}."
        self._probe = name_to_wire(name)
        self._on_loop = on_loop

        def run() -> None:
            for _ in range(attempts):
                if self.loop_detected:
                    return
                msg, qid = build_query(self._probe, T_HINFO)
                for i, up in enumerate(self.upstreams):
                    try:
                        self._udp(up, msg, qid, self.timeout)
                    except (OSError, WireError):
                        pass
                    if self.loop_detected:
                        return
                time.sleep(interval)

        t = threading.Thread(target=run, name="kdns-loop-probe", daemon=True)
        t.start()
        return t

    # -- internals ---------------------------------------------------------------------------

    def _probe_came_back(self, q: Query) -> bytes:
        with self._lock:
            first = self.loop_detected is None
            if first:
                self.loop_detected = (
                    f"forwarding loop detected: kdns's probe query {wire_to_name(q.name)} HINFO, "
                    f"sent to the upstreams {', '.join(_fmt(*u) for u in self.upstreams)}, came back "
                    "to kdns. An upstream forwards to kdns (a node resolv.conf pointing at kdns or "
                    "at a local stub that does?); point --upstream at a real resolver")
        if first and self._on_loop is not None:
            self._on_loop(self.loop_detected)
        # Answering instead of forwarding again breaks the circle.
        return error_response(q, SERVFAIL)

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def _lookup(self, key: tuple, name: bytes, flags: int, tcp: bool) -> Entry | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self.stats["hits"] += 1
                return entry
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
                self.stats["misses"] += 1
            else:
                self.stats["coalesced"] += 1
        if not leader:
            flight.done.wait(self.deadline + 1.0)
            return flight.entry
        entry = None
        try:
            entry = self._fetch(name, key[1], key[2], key[3], bool(flags & 0x0010), tcp)
        finally:
            with self._lock:
                if entry is not None and entry.lifetime > 0:
                    self._cache[key] = entry
                del self._flights[key]
            flight.entry = entry
            flight.done.set()
        return entry

    def _order(self) -> list[int]:
        now = self.clock()
        return sorted(range(len(self.upstreams)), key=lambda i: (self._down_until[i] > now, i))

    def _fetch(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool,
               tcp: bool) -> Entry | None:
        """Ask the upstreams in turn until one answers or the deadline passes. An upstream that
        timed out stays in the rotation (a lost datagram must not fail the lookup: with a single
        nameserver glibc gives up on our SERVFAIL), one that refused or failed outright is not
        asked again for this query."""
        start = time.monotonic()
        rotation = self._order()
        turn = 0
        while rotation:
            remaining = self.deadline - (time.monotonic() - start)
            if remaining <= 0.01:
                break
            i = rotation[turn % len(rotation)]
            up = self.upstreams[i]
            msg, qid = build_query(name, qtype, qclass, do, cd)
            try:
                self._count("upstream_queries")
                if tcp:
                    reply = self._tcp(up, msg, qid, min(self.timeout, remaining))
                else:
                    reply = self._udp(up, msg, qid, min(self.timeout, remaining))
                    if reply[2] & 0x02:
                        log.debug("%s truncated the reply; asking again over TCP", _fmt(*up))
                        remaining = self.deadline - (time.monotonic() - start)
                        self._count("upstream_queries")
                        reply = self._tcp(up, msg, qid, max(0.05, min(self.timeout, remaining)))
                entry = normalise(reply, self.clock(), self.caps)
            except socket.timeout as e:
                self._failed(i, e, "timeout")
                turn += 1
                continue
            except (OSError, WireError) as e:
                self._failed(i, e, "error")
                rotation.remove(i)
                continue
            FORWARDS.labels(_fmt(*up), RCODE_NAMES.get(entry.rcode, str(entry.rcode))).inc()
            if entry.rcode in (SERVFAIL, REFUSED, FORMERR):
                # This upstream cannot help (lame, misconfigured, overloaded): try the next one.
                self._failed(i, f"rcode {entry.rcode}")
                rotation.remove(i)
                continue
            self._down_until[i] = 0.0
            return entry
        return None

    def _failed(self, i: int, why, result: str | None = None) -> None:
        if result is not None:                   # an rcode was already counted by the caller
            FORWARDS.labels(_fmt(*self.upstreams[i]), result).inc()
        self._count("upstream_failures")
        log.debug("upstream %s failed: %s", _fmt(*self.upstreams[i]), why)
        self._down_until[i] = self.clock() + DOWN_SECONDS

    @staticmethod
    def _matches(reply: bytes, query: bytes, qid: bytes) -> bool:
        # Same ID, QR=1 and the same question (case-insensitively: upstreams may 0x20-randomise).
        if len(reply) < len(query) - 11 or reply[0:2] != qid or not reply[2] & 0x80:
            return False
        qlen = len(query) - 12 - 11
        return reply[4:6] == b"\x00\x01" and reply[12:12 + qlen].lower() == query[12:12 + qlen].lower()

    def _udp(self, up: tuple[str, int], msg: bytes, qid: bytes, timeout: float) -> bytes:
        family = socket.AF_INET6 if ":" in up[0] else socket.AF_INET
        end = time.monotonic() + timeout
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            # connect(): an ICMP port-unreachable then fails recv at once instead of timing out.
            s.connect(up)
            s.send(msg)
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise socket.timeout("timed out")
                s.settimeout(left)
                reply = s.recv(65535)
                if self._matches(reply, msg, qid):
                    return reply

    def _tcp(self, up: tuple[str, int], msg: bytes, qid: bytes, timeout: float) -> bytes:
        end = time.monotonic() + timeout
        with socket.create_connection(up, timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(msg)) + msg)
            size = struct.unpack("!H", _recv_exactly(s, 2, end))[0]
            reply = _recv_exactly(s, size, end)
        if not self._matches(reply, msg, qid):
            raise WireError("TCP reply does not match the query")
        return reply


def _recv_exactly(s: socket.socket, n: int, end: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = end - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        s.settimeout(left)
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("upstream closed the TCP connection")
        buf += chunk
    return bytes(buf)


def _answer_tuple(r: Record) -> ans.RR | None:
    """A Record as the answer engine's (owner, type, ttl, rdata) for kdns.wire to pack. Only what
    an address chase can bring back: a CNAME chain and its addresses (a DNAME's synthesised
    CNAME is enough without it)."""
    if r.rclass != C_IN:
        return None
    if r.rtype == T_A and len(r.rdata) == 4:
        return (r.name, T_A, r.ttl, socket.inet_ntop(socket.AF_INET, r.rdata))
    if r.rtype == T_AAAA and len(r.rdata) == 16:
        return (r.name, T_AAAA, r.ttl, socket.inet_ntop(socket.AF_INET6, r.rdata))
    if r.rtype == T_CNAME:
        return (r.name, T_CNAME, r.ttl, wire_to_name(r.rdata))
    return None


def _expires(key, entry: Entry, now: float) -> float:
    return entry.stored + entry.lifetime
