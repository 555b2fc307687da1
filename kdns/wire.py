"""The wire format: the only module that imports dnslib.

decode() checks a packet the way miekg/dns's DefaultMsgAcceptFunc does (used unchanged by
CoreDNS, dns-behavior.md §5); encode() packs a Response with EDNS0 and truncation that keeps
whole RRs (§8: dnslib's own truncate() drops the whole answer, so we do not use it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import AAAA, CNAME, DNSHeader, DNSLabel, DNSQuestion, DNSRecord, EDNS0, NS, PTR, RR, SOA, SRV, TXT
from dnslib import A as A_

from kdns import answer as ans
from kdns.config import MAX_UDP_PAYLOAD

OP_QUERY = 0
CLASS_IN = 1


class Drop(Exception):
    """Not worth an answer (a response, a runt): silently dropped, as CoreDNS does."""


class Reject(Exception):
    """A query answered with an error rcode before any lookup; ``packet`` is the reply."""

    def __init__(self, packet: bytes):
        super().__init__("reject")
        self.packet = packet


@dataclass(slots=True)
class Query:
    id: int
    rd: bool
    qname: str                 # as sent, trailing dot, RFC 1035 escapes for odd bytes
    qtype: int
    qclass: int
    edns: tuple[int, bool] | None    # (advertised UDP payload size, DO) or None without OPT
    record: DNSRecord          # the parsed query; its question is echoed verbatim


def _header_reply(data: bytes, rcode: int) -> bytes:
    """A header-only reply for queries we cannot parse: same ID, opcode and RD, QR set."""
    qid, flags = struct.unpack("!HH", data[:4])
    flags = 0x8000 | (flags & 0x7900) | rcode       # keep opcode (0x7800) and RD (0x0100)
    return struct.pack("!HHHHHH", qid, flags, 0, 0, 0, 0)


def _qname_text(label: DNSLabel) -> str:
    # Escape '.' and '\\' inside labels so that a label holding a dot can never pass for two.
    parts = [raw.decode("latin-1").replace("\\", "\\092").replace(".", "\\046") for raw in label.label]
    return ".".join(parts) + "."


def decode(data: bytes) -> Query:
    if len(data) < 12:
        raise Drop()
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    if flags & 0x8000:
        raise Drop()                                   # a response: never answer it
    if (flags >> 11) & 0xF != OP_QUERY:
        raise Reject(_header_reply(data, ans.NOTIMP))
    if qd != 1 or an > 1 or ns > 1 or ar > 2:
        raise Reject(_header_reply(data, ans.FORMERR))
    try:
        rec = DNSRecord.parse(data)
    except Exception:                                  # dnslib raises several types on bad input
        raise Reject(_header_reply(data, ans.FORMERR)) from None
    opts = [rr for rr in rec.ar if rr.rtype == ans.OPT]
    if len(opts) > 1:
        raise Reject(_header_reply(data, ans.FORMERR))   # RFC 6891 §6.1.1
    edns = None
    version = 0
    if opts:
        opt = opts[0]
        edns = (opt.rclass, bool(opt.ttl & 0x8000))
        version = (opt.ttl >> 16) & 0xFF
    q = rec.q
    query = Query(qid, bool(flags & 0x0100), _qname_text(q.qname), q.qtype, q.qclass, edns, rec)
    if q.qclass != CLASS_IN:
        raise Reject(encode(query, ans.Response(ans.REFUSED, authoritative=False), 512))
    if version != 0:
        raise Reject(encode(query, ans.Response(ans.BADVERS, authoritative=False), 512))
    return query


def udp_limit(query: Query) -> int:
    """RFC 6891 §6.2.5: at least 512; the advertised size, capped at MAX_UDP_PAYLOAD."""
    if query.edns is None:
        return 512
    return max(512, min(query.edns[0], MAX_UDP_PAYLOAD))


def _rdata(rtype: int, data):
    if rtype == ans.A:
        return A_(data)
    if rtype == ans.AAAA:
        return AAAA(data)
    if rtype == ans.SRV:
        prio, weight, port, target = data
        return SRV(prio, weight, port, target)
    if rtype == ans.CNAME:
        return CNAME(data)
    if rtype == ans.PTR:
        return PTR(data)
    if rtype == ans.NS:
        return NS(data)
    if rtype == ans.TXT:
        return TXT([s.encode() for s in data])
    if rtype == ans.SOA:
        mname, rname, *times = data
        return SOA(mname, rname, times)
    raise ValueError(f"no rdata for type {rtype}")


def encode(query: Query, resp: ans.Response, limit: int) -> bytes:
    """Pack ``resp`` for ``query`` within ``limit`` bytes, dropping whole RRs from the end."""
    rcode = resp.rcode
    header = DNSHeader(id=query.id, qr=1, aa=int(resp.authoritative), rd=int(query.rd), ra=0,
                       rcode=rcode & 0xF)
    qlabel = query.record.q.qname
    qtext = query.qname

    def rr(item) -> RR:
        owner, rtype, ttl, data = item
        # The question's own label keeps the owner byte-for-byte as sent (case preserved).
        return RR(qlabel if owner == qtext else owner, rtype, ttl=ttl, rdata=_rdata(rtype, data))

    sections = ([rr(x) for x in resp.answer], [rr(x) for x in resp.authority],
                [rr(x) for x in resp.additional])
    opt = None
    if query.edns is not None:
        # Our own payload size; DO echoed; extended rcode carries BADVERS (RFC 6891 §6.1.3).
        opt = EDNS0(udp_len=MAX_UDP_PAYLOAD, ext_rcode=rcode >> 4, flags="do" if query.edns[1] else "")
    total = sum(len(s) for s in sections)

    def pack(keep: int) -> bytes:
        rec = DNSRecord(header, q=DNSQuestion(qlabel, query.qtype, query.qclass))
        left = keep
        for i, section in enumerate(sections):
            take = section[:max(0, left)]
            left -= len(take)
            (rec.rr, rec.auth, rec.ar)[i].extend(take)
        if opt is not None:
            rec.ar.append(opt)
        rec.header.tc = int(keep < total)
        return bytes(rec.pack())

    packet = pack(total)
    if len(packet) <= limit:
        return packet
    lo, hi = 0, total - 1           # the largest prefix of RRs that fits, by bisection
    best = pack(0)
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = pack(mid)
        if len(candidate) <= limit:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def servfail(query: Query) -> bytes:
    return encode(query, ans.Response(ans.SERVFAIL, authoritative=False), udp_limit(query))
