"""Ask a DNS server one question and read its reply as kdns.answer's tuples (`kdns explain --ask`).

A stub client over the raw bytes of kdns.rawwire (dnslib stays in kdns.wire): UDP with EDNS,
TCP when the reply is truncated. Records come back as (owner, type, ttl, rdata) in the shapes
kdns.answer.Response uses, so an asked answer and a computed one compare directly.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from kdns import rawwire

A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV, OPT = 1, 2, 5, 6, 12, 16, 28, 33, 41


class AskError(Exception):
    """The server did not answer usably (timeout, refused connection, a bad reply)."""


@dataclass(slots=True)
class Reply:
    rcode: int
    flags: int
    answer: list = field(default_factory=list)
    authority: list = field(default_factory=list)
    additional: list = field(default_factory=list)

    @property
    def aa(self) -> bool:
        return bool(self.flags & 0x0400)


def ask(host: str, port: int, qname: str, qtype: int, timeout: float = 3.0) -> Reply:
    query, qid = rawwire.build_query(rawwire.name_to_wire(qname), qtype)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(query, (host, port))
            while True:
                data, _ = s.recvfrom(65535)
                if data[:2] == qid:
                    break
        if len(data) >= 4 and data[2] & 0x02:          # TC: ask again over TCP
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.sendall(struct.pack("!H", len(query)) + query)
                size = struct.unpack("!H", _recv(s, 2))[0]
                data = _recv(s, size)
    except socket.timeout:
        raise AskError(f"no answer from {host}:{port} within {timeout:g}s") from None
    except OSError as exc:
        raise AskError(f"cannot ask {host}:{port}: {exc.strerror or exc}") from None
    try:
        return parse(data)
    except (rawwire.WireError, struct.error, IndexError, ValueError) as exc:
        raise AskError(f"{host}:{port} sent a reply kdns cannot read: {exc}") from None


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed mid-reply")
        buf += chunk
    return buf


def parse(msg: bytes) -> Reply:
    _, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        off = rawwire.skip_name(msg, off) + 4
    rcode = flags & 0xF
    sections: list[list] = [[], [], []]
    for i, count in enumerate((an, ns, ar)):
        for _ in range(count):
            owner, off = rawwire.read_name(msg, off)
            rtype, _cls, ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
            off += 10
            start, off = off, off + rdlen
            if rtype == OPT:
                rcode |= ((ttl >> 24) & 0xFF) << 4             # extended rcode (RFC 6891)
                continue
            sections[i].append((rawwire.wire_to_name(owner), rtype, ttl, _rdata(msg, start, rdlen, rtype)))
    return Reply(rcode, flags, *sections)


def _name_at(msg: bytes, off: int) -> str:
    return rawwire.wire_to_name(rawwire.read_name(msg, off)[0])


def _rdata(msg: bytes, off: int, size: int, rtype: int):
    raw = msg[off:off + size]
    if rtype == A:
        return str(ipaddress.IPv4Address(raw))
    if rtype == AAAA:
        return ipaddress.IPv6Address(raw).compressed
    if rtype in (CNAME, NS, PTR):
        return _name_at(msg, off)
    if rtype == SRV:
        prio, weight, port = struct.unpack("!HHH", raw[:6])
        return (prio, weight, port, _name_at(msg, off + 6))
    if rtype == SOA:
        mname = _name_at(msg, off)
        after = rawwire.skip_name(msg, off)
        rname = _name_at(msg, after)
        after = rawwire.skip_name(msg, after)
        return (mname, rname, *struct.unpack("!IIIII", msg[after:after + 20]))
    if rtype == TXT:
        out, i = [], 0
        while i < len(raw):
            n = raw[i]
            out.append(raw[i + 1:i + 1 + n].decode("utf-8", "replace"))
            i += n + 1
        return tuple(out)
    return raw.hex()
