"""The ExternalName chase (dns-behavior.md §3.5): an ExternalName whose target is outside our
zones is answered with the CNAME the answer engine made, then the target's records as the
upstreams gave them (TTLs as received). NXDOMAIN, NODATA or no upstream answer: NOERROR with
the CNAME alone."""

from __future__ import annotations

import socket

from kdns import answer as ans
from kdns import wire
from kdns.forward.cache import NOERROR, T_A, T_AAAA, T_CNAME, Record
from kdns.rawwire import C_IN, wire_to_name


def packet(query: wire.Query, resp: ans.Response, rcode: int, records: tuple[Record, ...],
           limit: int) -> bytes:
    """The chase's reply: ``resp`` (the CNAME) plus what the upstream said about the target."""
    if rcode == NOERROR:
        resp.answer.extend(r for r in map(_answer_tuple, records) if r is not None)
    return wire.encode(query, resp, limit)


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


