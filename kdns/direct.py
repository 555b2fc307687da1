"""The miss path's shortcut: an address question for a Service or endpoint name, straight to bytes.

Most packet-cache misses in a live cluster are one shape: A or AAAA for ``<svc>.<ns>.svc.<zone>``
or ``<ep>.<svc>.<ns>.svc.<zone>`` (the cold names of a big cluster, the first question after a
Service changed). kdns.answer and kdns.wire answer every shape through plain tuples and a
generic writer; for this one the answer is a run of fixed-size RRs owned by the question
pointer, or one SOA piece, so it is written here from pieces (kdns.wire's memoised RR heads and
SOA pieces) with no intermediate Response, no compression table and no re-read of the packet
for its metric labels. Measured in-process on a 10,000-Service / 100,000-endpoint cluster, this
halves the CPU of a cold A miss (see docs/bench.md).

It answers exactly what the generic path answers, byte for byte (tests/test_direct.py asks the
same names over UDP, which comes here, and TCP, which never does): anything else — another
type, another zone, hosts entries, ExternalNames, a --fallthrough zone, an answer that would be
truncated — returns None and takes the generic path.
"""

from __future__ import annotations

import socket
import struct

from kdns import wire
from kdns.answer import AAAA, A, NOERROR, NXDOMAIN, SERVFAIL
from kdns.snapshot import Snapshot

_HEAD = struct.Struct("!HHHHH")
_INET = {A: socket.AF_INET, AAAA: socket.AF_INET6}
_PTON = socket.inet_pton
_OPT = {False: wire._opt(0, False), True: wire._opt(0, True)}
# zones tuple -> the cluster domain's suffix (".cluster.local.") when no other served zone sits
# inside it (then a name that ends with it is the domain's, as names.split's longest match
# would say); None otherwise, and this path steps aside.
_SUFFIXES: dict[tuple, str | None] = {}


def _suffix(snap: Snapshot) -> str | None:
    zones = snap.zones
    suffix = _SUFFIXES.get(zones, "")
    if suffix == "":
        domain = snap.config.domain
        nested = any(z != domain and z.endswith("." + domain) for z in zones)
        suffix = None if nested or domain not in zones else "." + domain + "."
        if len(_SUFFIXES) > 64:
            _SUFFIXES.clear()
        _SUFFIXES[zones] = suffix
    return suffix


def address(snap: Snapshot, query: wire.Query, limit: int) -> tuple[bytes, int, list, int] | None:
    """(packet, rcode, deps, records) for an A/AAAA question of a Service or endpoint name, or
    None when the generic path must answer. ``deps`` are those kdns.answer would name."""
    qtype = query.qtype
    if (qtype != A and qtype != AAAA) or snap.hosts is not None:
        return None
    suffix = _suffix(snap)
    lower = query.qname.lower()
    if suffix is None or not lower.endswith(suffix):
        return None
    labels = lower[:-len(suffix)].split(".")
    n = len(labels)
    if (n != 3 and n != 4) or labels[-1] != "svc":
        return None
    namespace = labels[-2]
    node = None
    if namespace not in snap.namespaces:
        deps = [namespace]
    else:
        # Under the Service key alone: a namespace's change also drops every entry of a Service
        # key in it (PacketCache.sync), which spares each entry an index slot in the namespace's
        # (a dict of thousands of keys in a big namespace).
        key = (namespace, labels[-3])
        deps = [key]
        rec = snap.services.get(key)
        if rec is not None and rec.node is not None:
            if n == 3:
                node = rec.node
                if node.cname:
                    return None                 # ExternalName: a CNAME and maybe a chase
            elif not rec.node.cname:            # nothing below an ExternalName
                node = rec.endpoints.get(labels[0])
    config = snap.config
    ttl = config.ttl
    records = 0
    if node is None:
        if not snap.synced:
            rcode = SERVFAIL                    # never a NXDOMAIN before the first full listing
        else:
            if config.fallthrough and config.falls_through(lower):
                return None                     # the forwarder's to answer
            rcode = NXDOMAIN
        body = None
    else:
        rcode = NOERROR
        want6 = qtype == AAAA
        addrs = node.addrs
        if len(addrs) == 1:                     # most names: one address, no list to build
            ip = addrs[0]
            if (":" in ip) == want6:
                records = 1
                body = wire._address_head(qtype, ttl) + _PTON(_INET[qtype], ip)
        else:
            family = _INET[qtype]
            head = wire._address_head(qtype, ttl)
            parts = [head + _PTON(family, ip) for ip in addrs if (":" in ip) == want6]
            records = len(parts)
            body = b"".join(parts)
    if records == 0:                            # NXDOMAIN, or NODATA (RFC 2308): the zone's SOA
        zone_at = 12 + len(query.name) - len(config.domain) - 2
        body = wire._soa_piece(zone_at, min(ttl, 300),
                               (snap.version & 0xFFFFFFFF, 7200, 1800, 86400, ttl))
    opt = _OPT[query.do] if query.edns else b""
    question = query.question
    if 12 + len(question) + len(body) + len(opt) > limit:
        return None                             # the generic path truncates by whole RRs
    flags = 0x8400 | (query.flags & 0x0100) | rcode
    packet = b"".join((query.id, _HEAD.pack(flags, 1, records, 0 if records else 1,
                                            1 if opt else 0), question, body, opt))
    return packet, rcode, deps, records
