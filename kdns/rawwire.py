"""DNS messages as raw bytes, without dnslib: names, the question, EDNS, error replies.

One module for every byte-level walk, shared by the answer path (kdns.server) and the forwarder
(kdns.forward): a walk over bytes costs a few microseconds where a dnslib parse and pack costs
tens to hundreds.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from kdns.config import MAX_UDP_PAYLOAD

T_OPT = 41
C_IN = 1
# The EDNS payload size we advertise upstream and honour downstream (DNS Flag Day 2020).
UPSTREAM_UDP_SIZE = MAX_UDP_PAYLOAD


class WireError(ValueError):
    """A message we cannot walk (truncated, bad label, pointer loop)."""


def skip_name(msg: bytes, off: int, before: int | None = None) -> int:
    """Offset just after the (possibly compressed) name at ``off``. With ``before`` (the start
    of the record it owns), strictly: its pointer may only reach back into the question or an
    earlier record (never the header, never forward), and the name is at most 255 octets."""
    end = len(msg)
    first = off
    while True:
        if off >= end:
            raise WireError("name runs past the end of the message")
        n = msg[off]
        if n == 0:
            return off + 1
        if n >= 0xC0:
            if off + 2 > end:
                raise WireError("truncated compression pointer")
            if before is not None:
                target = ((n & 0x3F) << 8) | msg[off + 1]
                if target < 12 or target >= before:
                    raise WireError("compression pointer outside the earlier records")
            return off + 2
        if n & 0xC0:
            raise WireError("label longer than 63 octets (a label type other than 00)")
        off += n + 1
        if before is not None and off - first > MAX_NAME:
            raise WireError("name longer than 255 octets")


def read_name(msg: bytes, off: int) -> tuple[bytes, int]:
    """(uncompressed wire name, offset after the name as it sits at ``off``)."""
    labels = []
    after = -1
    jumps = 0
    end = len(msg)
    total = 0
    while True:
        if off >= end:
            raise WireError("name runs past the end of the message")
        n = msg[off]
        if n == 0:
            if after < 0:
                after = off + 1
            break
        if n & 0xC0 == 0xC0:
            if off + 2 > end:
                raise WireError("truncated compression pointer")
            if after < 0:
                after = off + 2
            jumps += 1
            if jumps > 64:
                raise WireError("compression pointer loop")
            off = ((n & 0x3F) << 8) | msg[off + 1]
            continue
        if n & 0xC0:
            raise WireError("bad label type")
        labels.append(msg[off:off + n + 1])
        total += n + 1
        if total > 254:
            raise WireError("name longer than 255 octets")
        off += n + 1
    return b"".join(labels) + b"\x00", after


def name_to_wire(name: str) -> bytes:
    name = name.rstrip(".")
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) <= 63:
            raise ValueError(f"{name!r}: bad label {label!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"{name!r}: longer than 255 octets")
    return bytes(out)


def wire_to_name(wire: bytes) -> str:
    """Presentation form, absolute ("www.example.com."); unusual bytes escaped as \\DDD."""
    parts = []
    off = 0
    while wire[off]:
        n = wire[off]
        label = wire[off + 1:off + 1 + n]
        parts.append("".join(chr(b) if 0x21 <= b <= 0x7E and b not in b'.\\"()' else f"\\{b:03d}"
                             for b in label))
        off += n + 1
    return ".".join(parts) + "."


@dataclass(slots=True)
class Query:
    """A client's query as read off the wire: what the answer path and forwarding need."""
    id: bytes            # 2 bytes, as sent
    flags: int           # 16-bit header flags
    question: bytes      # the question section as sent (name case preserved)
    name: bytes          # wire qname as sent (never compressed: see parse_query)
    qtype: int
    qclass: int
    edns: bool           # the query carried an OPT RR
    udp_size: int        # its advertised payload size (512 without EDNS)
    do: bool             # its DO bit
    edns_version: int = 0
    # The packet-cache key: the query after its ID, less any COOKIE option (RFC 7873: a server
    # that does not do cookies ignores them, so a fresh client cookie must not split the cache).
    packet_key: bytes = b""
    tsig: tuple[int, int] | None = None    # (start, end) of a TSIG RR (RFC 8945), if signed
    cookie: bool = False                   # a COOKIE option was cut out of packet_key
    qname: str = ""      # presentation text, set by kdns.wire.decode for the answer path

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)

    @property
    def key(self) -> tuple[bytes, int, int, bool]:
        # Length octets are <= 63, below b"A", so lower() only touches label letters.
        return (self.name.lower(), self.qtype, self.qclass, self.do)


OPT_COOKIE = 10          # RFC 7873
T_TSIG = 250
MAX_NAME = 255           # octets, RFC 1035 §2.3.4
MAX_LABEL = 63


def parse_query(msg: bytes) -> Query:
    """Read a query strictly; WireError (answered FORMERR) on anything malformed.

    Strict where leniency would be a hazard: a compression pointer in the question is refused,
    since the only bytes before the question are the header, so a pointer there reads the ID as
    a name (``c000``) and two queries with different IDs would share a cache entry. Labels over
    63 octets, names over 255, options running past their OPT RR, a second OPT, a TSIG that is
    not the last record and bytes after the last record are refused too (knot and CoreDNS
    answer FORMERR)."""
    # Written for speed: the UDP loop calls this on every packet-cache miss.
    size = len(msg)
    if size < 17:
        raise WireError("shorter than a DNS header and a question")
    flags, qd, an, ns, ar = _HEADER.unpack_from(msg, 2)
    if qd != 1:
        raise WireError(f"QDCOUNT {qd}, expected 1")
    off = 12
    try:
        n = msg[12]
        while n:
            if n > MAX_LABEL:
                raise WireError("compression pointer in the question" if n >= 0xC0 else
                                "label longer than 63 octets (a label type other than 00)")
            off += n + 1
            n = msg[off]
    except IndexError:
        raise WireError("name runs past the end of the message") from None
    qend = off + 1
    if qend - 12 > MAX_NAME:
        raise WireError("name longer than 255 octets")
    if qend + 4 > size:
        raise WireError("truncated question")
    qtype, qclass = _TYPE_CLASS.unpack_from(msg, qend)
    off = qend + 4
    question_end = off
    edns, udp_size, do, version = False, 512, False, 0
    key = None
    tsig = None
    count = an + ns + ar
    for i in range(count):
        rstart = off
        off = skip_name(msg, off, rstart)
        if off + 10 > size:
            raise WireError("truncated resource record")
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(msg, off)
        rdata = off + 10
        off = rdata + rdlen
        if off > size:
            raise WireError("truncated rdata")
        if rtype == T_OPT:
            if edns or i < an + ns or msg[rstart] != 0:
                raise WireError("OPT RR not alone, not in the additional section, or not at the root")
            edns, udp_size, do = True, max(512, rclass), bool(ttl & 0x8000)
            version = (ttl >> 16) & 0xFF
            key = _options_without_cookie(msg, rdata, off)
        elif rtype == T_TSIG:
            if i != count - 1:
                raise WireError("TSIG RR is not the last record")
            tsig = (rstart, off)
    if off != size:
        raise WireError("bytes after the last record")
    return Query(msg[0:2], flags, msg[12:question_end], msg[12:qend], qtype, qclass, edns,
                 udp_size, do, version, msg[2:] if key is None else key, tsig, key is not None)


def _options_without_cookie(msg: bytes, start: int, end: int) -> bytes | None:
    """The packet key (query after the ID) with a COOKIE option cut out of the OPT RR whose
    rdata is msg[start:end]; None when there is no cookie. WireError if options overrun."""
    p = start
    cut = None
    while p < end:
        if p + 4 > end:
            raise WireError("truncated EDNS option")
        code, length = _TYPE_CLASS.unpack_from(msg, p)
        nxt = p + 4 + length
        if nxt > end:
            raise WireError("EDNS option runs past its OPT RR")
        if code == OPT_COOKIE and cut is None:
            cut = (p, nxt)
        p = nxt
    if cut is None:
        return None
    rdlen = end - start - (cut[1] - cut[0])
    return msg[2:start - 2] + rdlen.to_bytes(2, "big") + msg[start:cut[0]] + msg[cut[1]:]


_HEADER = struct.Struct("!HHHHH")
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")


def opt_rr(do: bool) -> bytes:
    # root owner, TYPE OPT, CLASS = payload size, TTL = ext-rcode 0, version 0, DO flag; no options.
    return b"\x00" + struct.pack("!HHBBHH", T_OPT, UPSTREAM_UDP_SIZE, 0, 0, 0x8000 if do else 0, 0)


def build_query(name: bytes, qtype: int, qclass: int = C_IN, do: bool = False,
                cd: bool = False) -> tuple[bytes, bytes]:
    """(a recursive query with a fresh random ID and EDNS, its ID)."""
    qid = secrets.token_bytes(2)
    flags = 0x0100 | (0x0010 if cd else 0)
    msg = (qid + struct.pack("!HHHHH", flags, 1, 0, 0, 1) + name + struct.pack("!HH", qtype, qclass)
           + opt_rr(do))
    return msg, qid


def error_response(q: Query, rcode: int) -> bytes:
    """Header (client's ID, opcode and RD; QR, RA), the question, OPT iff the query had one."""
    opcode_rd = (q.flags >> 8) & 0x79
    head = q.id + bytes((0x80 | opcode_rd, 0x80 | rcode)) + struct.pack(
        "!HHHH", 1, 0, 0, 1 if q.edns else 0)
    return head + q.question + (opt_rr(q.do) if q.edns else b"")


def error_for(msg: bytes, rcode: int) -> bytes | None:
    """An error answer to a raw query, or None when it cannot even be read."""
    try:
        return error_response(parse_query(msg), rcode)
    except WireError:
        return None



def name_to_wire_loose(name: str) -> bytes:
    """name_to_wire for names that came from wire_to_name (\\DDD escapes undone)."""
    if name in (".", ""):
        return b"\x00"
    out = bytearray()
    for label in _split_escaped(name.rstrip(".")):
        out.append(len(label))
        out += label
    return bytes(out) + b"\x00"


def _split_escaped(name: str) -> list[bytes]:
    labels, cur, i = [], bytearray(), 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 3 < len(name) and name[i + 1:i + 4].isdigit():
            cur.append(int(name[i + 1:i + 4]))
            i += 4
            continue
        if c == ".":
            labels.append(bytes(cur))
            cur = bytearray()
        else:
            cur.append(ord(c))
        i += 1
    labels.append(bytes(cur))
    return labels
