"""The wire format of kdns's answers: which queries are answered, and the answer's bytes.

decode() applies miekg/dns's DefaultMsgAcceptFunc (used unchanged by CoreDNS, dns-behavior.md
§5) over kdns.rawwire's strict parse; encode() writes a Response straight to bytes: the owner
that is the question is a pointer to it (so the query's case comes for free), other names are
compressed against the question and earlier names, and truncation keeps whole RRs (§8).

No dnslib: a dnslib parse and pack cost ~200 µs of Python per miss, this path a few µs, and
writing every shape kdns answers (A, AAAA, SRV, CNAME, PTR, NS, SOA, TXT, opaque upstream rdata)
is less code than working around dnslib's truncation and compression.
"""

from __future__ import annotations

import socket
import struct

from kdns import answer as ans
from kdns import rawwire
from kdns.config import MAX_UDP_PAYLOAD

OP_QUERY = 0
CLASS_IN = 1
NOTAUTH = 9
TSIG_BADKEY = 17


class Drop(Exception):
    """Not worth an answer (a response, a runt): silently dropped, as CoreDNS does."""


class Reject(Exception):
    """A query answered with an error rcode before any lookup; ``packet`` is the reply and
    ``why`` says what was wrong with it (for a rate-limited log line)."""

    def __init__(self, packet: bytes, why: str = ""):
        super().__init__(why or "reject")
        self.packet = packet
        self.why = why


Query = rawwire.Query      # the answer path's query: rawwire's parse, plus ``qname`` (text)


def _header_reply(data: bytes, rcode: int) -> bytes:
    """A header-only reply for queries we cannot parse: same ID, opcode and RD, QR set."""
    qid, flags = struct.unpack("!HH", data[:4])
    flags = 0x8000 | (flags & 0x7900) | rcode       # keep opcode (0x7800) and RD (0x0100)
    return struct.pack("!HHHHHH", qid, flags, 0, 0, 0, 0)


def qname_text(name: bytes) -> str:
    """Wire name -> presentation text with a trailing dot. '.' and '\\' inside a label are
    escaped (\\046, \\092) so that a label holding a dot can never pass for two."""
    # Every miss pays for this: overwrite each length octet with a dot in one copy (no slice
    # and join per label), and take the slow path only when a label holds a '.' or a '\\'.
    out = bytearray(name)
    off = 0
    n = out[0]
    labels = 0
    while n:
        out[off] = 46
        off += n + 1
        n = out[off]
        labels += 1
    if not labels:
        return "."
    text = out[1:off]
    if 92 not in text and text.count(46) == labels - 1:
        return text.decode("latin-1") + "."
    return _escaped_text(name)


def _escaped_text(name: bytes) -> str:
    parts = []
    off = 0
    n = name[0]
    while n:
        parts.append(name[off + 1:off + 1 + n])
        off += n + 1
        n = name[off]
    text = b".".join(p.replace(b"\\", b"\\092").replace(b".", b"\\046") for p in parts)
    return text.decode("latin-1") + "."


def decode(data: bytes) -> Query:
    if len(data) < 12:
        raise Drop()
    flags = (data[2] << 8) | data[3]
    if flags & 0x8000:
        raise Drop()                                   # a response: never answer it
    if (flags >> 11) & 0xF != OP_QUERY:
        raise Reject(_header_reply(data, ans.NOTIMP))
    qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    if qd != 1 or an > 1 or ns > 1 or ar > 2:
        raise Reject(_header_reply(data, ans.FORMERR), "bad section counts")
    try:
        query = rawwire.parse_query(data)
    except rawwire.WireError as e:
        raise Reject(_header_reply(data, ans.FORMERR), str(e)) from None
    query.qname = qname_text(query.name)
    if query.qclass != CLASS_IN:
        raise Reject(encode(query, ans.Response(ans.REFUSED, authoritative=False), 512))
    if query.edns_version != 0:
        raise Reject(encode(query, ans.Response(ans.BADVERS, authoritative=False), 512))
    if query.tsig is not None:
        raise Reject(_tsig_badkey(data, query, query.tsig))
    return query


def _tsig_badkey(data: bytes, query: Query, span: tuple[int, int]) -> bytes:
    """RFC 8945 §5.2.1: kdns knows no TSIG key, so a signed query gets NOTAUTH with an unsigned
    TSIG RR (same key and algorithm, MAC size 0, error BADKEY), never an unsigned answer."""
    start, end = span
    try:
        key, off = rawwire.read_name(data, start)
        off += 10                                      # type, class, TTL, rdlength
        algorithm, off = rawwire.read_name(data, off)
        signed = data[off:off + 8]                     # time signed (48 bits) and fudge
        (mac_size,) = struct.unpack_from("!H", data, off + 8)
        original_id = data[off + 10 + mac_size:off + 12 + mac_size]
        if len(signed) != 8 or len(original_id) != 2 or off + 12 + mac_size > end:
            raise rawwire.WireError("truncated TSIG")
    except (rawwire.WireError, struct.error):
        return _header_reply(data, ans.FORMERR)
    rdata = algorithm + signed + b"\x00\x00" + original_id + struct.pack("!HH", TSIG_BADKEY, 0)
    tsig = key + struct.pack("!HHIH", rawwire.T_TSIG, 255, 0, len(rdata)) + rdata
    opt = _opt(0, query.do) if query.edns else b""
    flags = 0x8000 | (query.flags & 0x0100) | NOTAUTH
    head = query.id + struct.pack("!HHHHH", flags, 1, 0, 0, 2 if opt else 1)
    return head + query.question + opt + tsig


def udp_limit(query: Query) -> int:
    """RFC 6891 §6.2.5: at least 512; the advertised size, capped at MAX_UDP_PAYLOAD."""
    return min(query.udp_size, MAX_UDP_PAYLOAD) if query.edns else 512


def _opt(rcode: int, do: bool) -> bytes:
    # Our own payload size; DO echoed; extended rcode carries BADVERS (RFC 6891 §6.1.3).
    return b"\x00\x00\x29" + struct.pack("!HBBHH", MAX_UDP_PAYLOAD, rcode >> 4, 0,
                                         0x8000 if do else 0, 0)


_RR = struct.Struct("!HHIH")
_SRV = struct.Struct("!HHH")
_SOA_TIMES = struct.Struct("!IIIII")
_QUESTION = b"\xc0\x0c"        # a pointer to the question's name, at offset 12


_WIRE_NAMES: dict[str, bytes] = {}      # text -> wire: the same few names recur in answers
_SOA_PIECES: dict[tuple, bytes] = {}    # (zone offset, ttl, times) -> the zone's SOA RR
_MEMO_MAX = 4096


def _name_wire(name: str) -> bytes:
    """Presentation text (absolute or not) -> uncompressed wire name; \\DDD escapes undone."""
    wire = _WIRE_NAMES.get(name)
    if wire is not None:
        return wire
    if "\\" in name:
        wire = rawwire.name_to_wire_loose(name)
    elif name.rstrip("."):
        wire = b"".join(len(p).to_bytes(1, "big") + p for p in
                        (label.encode("latin-1") for label in name.rstrip(".").split("."))) + b"\x00"
    else:
        wire = b"\x00"
    if len(_WIRE_NAMES) >= _MEMO_MAX:
        _WIRE_NAMES.clear()
    _WIRE_NAMES[name] = wire
    return wire


def _soa_piece(zone_at: int, ttl: int, times: tuple) -> bytes:
    """The zone's SOA RR (kdns.answer._soa's shape) with its owner at ``zone_at`` in the
    question: owner, MNAME ns.dns.<zone> and RNAME hostmaster.<zone> all point there, so the
    piece is the same for every query that spells the zone at that offset, made once."""
    key = (zone_at, ttl, times)
    piece = _SOA_PIECES.get(key)
    if piece is None:
        zone = (0xC000 | zone_at).to_bytes(2, "big")
        rdata = b"\x02ns\x03dns" + zone + b"\x0ahostmaster" + zone + _SOA_TIMES.pack(*times)
        piece = zone + _RR.pack(ans.SOA, 1, ttl, len(rdata)) + rdata
        if len(_SOA_PIECES) >= _MEMO_MAX:
            _SOA_PIECES.clear()
        _SOA_PIECES[key] = piece
    return piece


class _Writer:
    """A message being written, with the compression table of the names already in it."""

    __slots__ = ("out", "known", "query")

    def __init__(self, out: bytearray, query: Query):
        self.out = out
        self.known: dict[bytes, int] | None = None     # lower-case wire suffix -> offset
        self.query = query

    def _table(self) -> dict[bytes, int]:
        known = {}
        name = self.query.name
        low = name.lower()
        pos = 0
        while name[pos]:
            known[low[pos:]] = 12 + pos
            pos += name[pos] + 1
        self.known = known
        return known

    def name(self, text: str, compress: bool = True) -> None:
        wire = _name_wire(text)
        known = self.known if self.known is not None else self._table()
        low = wire.lower()
        out = self.out
        base = len(out)
        pos = 0
        while wire[pos]:
            if compress:
                target = known.get(low[pos:])
                if target is not None:
                    out += wire[:pos]
                    out += (0xC000 | target).to_bytes(2, "big")
                    break
            if base + pos < 0x4000:
                known.setdefault(low[pos:], base + pos)
            pos += wire[pos] + 1
        else:
            out += wire

    def _zone_at(self, owner: str) -> int | None:
        """Where ``owner`` sits in the question as a whole-label suffix of it, or None."""
        qname = self.query.qname
        if not qname.endswith(owner) or (len(qname) > len(owner) and qname[-len(owner) - 1] != "."):
            return None
        return 12 + len(self.query.name) - (len(owner) + 1 if owner != "." else 1)

    def rr(self, item: ans.RR) -> None:
        owner, rtype, ttl, data = item
        out = self.out
        if rtype == ans.SOA and data[0] == "ns.dns." + owner and data[1] == "hostmaster." + owner \
                and "\\" not in owner:
            zone_at = self._zone_at(owner)
            if zone_at is not None and zone_at < 0x4000:
                out += _soa_piece(zone_at, ttl, tuple(data[2:]))
                return
        if owner == self.query.qname:
            out += _QUESTION
        else:
            self.name(owner)
        if rtype == ans.A:
            out += _RR.pack(rtype, 1, ttl, 4)
            out += socket.inet_pton(socket.AF_INET, data)
            return
        if rtype == ans.AAAA:
            out += _RR.pack(rtype, 1, ttl, 16)
            out += socket.inet_pton(socket.AF_INET6, data)
            return
        at = len(out)
        out += _RR.pack(rtype, 1, ttl, 0)
        start = len(out)
        if isinstance(data, (bytes, bytearray)):
            out += data                                  # opaque rdata relayed from upstream
        elif rtype == ans.SRV:
            prio, weight, port, target = data
            out += _SRV.pack(prio, weight, port)
            self.name(target, compress=False)            # RFC 2782: the target is not compressed
        elif rtype in (ans.CNAME, ans.PTR, ans.NS):
            self.name(data)
        elif rtype == ans.TXT:
            for s in data:
                raw = s.encode() if isinstance(s, str) else s
                out.append(len(raw))
                out += raw
        elif rtype == ans.SOA:
            mname, rname, *times = data
            self.name(mname)
            self.name(rname)
            out += _SOA_TIMES.pack(*times)
        else:
            raise ValueError(f"no rdata for type {rtype}")
        struct.pack_into("!H", out, at + 8, len(out) - start)


_ADDRESS_HEADS: dict[tuple[int, int], bytes] = {}    # (type, ttl) -> owner pointer + RR header


def _address_head(rtype: int, ttl: int) -> bytes:
    head = _ADDRESS_HEADS.get((rtype, ttl))
    if head is None:
        if len(_ADDRESS_HEADS) >= _MEMO_MAX:
            _ADDRESS_HEADS.clear()
        head = _ADDRESS_HEADS[(rtype, ttl)] = _QUESTION + _RR.pack(rtype, 1, ttl, 4 if rtype == ans.A else 16)
    return head


def encode(query: Query, resp: ans.Response, limit: int) -> bytes:
    """Pack ``resp`` for ``query`` within ``limit`` bytes, keeping the longest prefix of whole
    RRs (answer, authority, additional) that fits; TC=1 when any RR was left out (§8)."""
    rcode = resp.rcode
    out = bytearray(12)
    out += query.question
    opt = _opt(rcode, query.do) if query.edns else b""
    budget = limit - len(opt)
    writer = None
    qname = query.qname
    counts = [0, 0, 0]
    tc = 0
    for i, section in enumerate((resp.answer, resp.authority, resp.additional)):
        for item in section:
            mark = len(out)
            rtype = item[1]
            if item[0] == qname and (rtype == ans.A or rtype == ans.AAAA):
                # The common answer: an address owned by the question, no table needed.
                out += _address_head(rtype, item[2])
                out += socket.inet_pton(socket.AF_INET if rtype == ans.A else socket.AF_INET6, item[3])
            else:
                if writer is None:
                    writer = _Writer(out, query)
                writer.rr(item)
            if len(out) > budget:
                # Every later name could point into what is cut: stop here (a prefix of RRs).
                del out[mark:]
                tc = 0x0200
                break
            counts[i] += 1
        if tc:
            break
    flags = 0x8000 | tc | (0x0400 if resp.authoritative else 0) | (query.flags & 0x0100) | (rcode & 0xF)
    struct.pack_into("!2sHHHHH", out, 0, query.id, flags, 1, counts[0], counts[1],
                     counts[2] + (1 if opt else 0))
    out += opt
    return bytes(out)


def servfail(query: Query) -> bytes:
    return encode(query, ans.Response(ans.SERVFAIL, authoritative=False), udp_limit(query))
