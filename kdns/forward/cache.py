"""The forwarding cache: upstream answers normalised once, served to any client as bytes.

Key (qname lower-cased, qtype, qclass, DO bit). An entry lives for the smallest TTL in the
message (capped at MAX_POSITIVE_TTL), a negative answer for min(SOA TTL, SOA MINIMUM) (RFC 2308
§5; no SOA, no caching); served copies have their TTLs decremented, never extended. With
serve-stale (kdns.forward.stale) an entry is kept that much longer past its lifetime, but only
``fresh`` entries are ever served as answers of the cache itself.

A hit is a copy, a splice and a few TTL patches (kdns.rawwire does the byte walks), far cheaper
than a parse and a pack.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Callable

import cachetools

from kdns.rawwire import (Query, WireError, opt_rr, read_name, skip_name, name_to_wire_loose,
                          wire_to_name)

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, REFUSED = 0, 1, 2, 3, 5
T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_HINFO, T_MX, T_AAAA, T_SRV, T_DNAME, T_OPT = (
    1, 2, 5, 6, 12, 13, 15, 28, 33, 39, 41)

# What CoreDNS's cache plugin caps at (success 3600 s, denial 1800 s): an upstream's week-long TTL
# should not pin an answer here for a week.
MAX_POSITIVE_TTL = 3600
MAX_NEGATIVE_TTL = 1800


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


def serve(entry: Entry, q: Query, limit: int, now: float, ttl: int | None = None) -> bytes:
    """The cached answer as a reply to ``q``: its ID, RD and question spelling, TTLs decremented
    (or every TTL set to ``ttl``: a stale answer), OPT iff it sent one, cut to ``limit`` bytes at
    an RR boundary with TC=1 when it does not fit."""
    out = bytearray(entry.msg)
    out[0:2] = q.id
    # Relay the upstream's flags, but AA=0 (we are not the authority) and RD as the client sent it.
    out[2] = (out[2] & 0xFA) | ((q.flags >> 8) & 0x01)
    qend = 12 + len(q.question)
    if len(entry.msg) >= qend and out[12:qend].lower() == q.question.lower():
        out[12:qend] = q.question
    elapsed = int(now - entry.stored)
    if ttl is not None:
        for off in entry.ttl_offsets:
            struct.pack_into("!I", out, off, ttl)
    elif elapsed > 0:
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




def fresh(entry: Entry, now: float) -> bool:
    return now < entry.stored + entry.lifetime


class Cache:
    """A bounded TLRU of Entries, thread-safe (the UDP loops read it, the reactor writes it).
    ``keep`` seconds past its lifetime an entry is still held, for serve-stale; ``get`` returns
    fresh entries only, ``stale`` the others."""

    def __init__(self, size: int, clock: Callable[[], float], keep: float = 0.0):
        self.clock = clock
        self.keep = keep
        self._lock = threading.Lock()
        self._entries = cachetools.TLRUCache(max(1, size), self._expires, timer=clock)

    def _expires(self, key, entry: Entry, now: float) -> float:
        return entry.stored + entry.lifetime + self.keep

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or not fresh(entry, self.clock()):
            return None
        return entry

    def stale(self, key) -> Entry | None:
        """An entry past its lifetime but within ``keep`` of it (fresh ones too), else None."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key, entry: Entry) -> None:
        if entry.lifetime > 0:
            with self._lock:
                self._entries[key] = entry
