"""python -m kdns.bench.stub PORT [--blackhole SUFFIX] [--fresh SUFFIX] [--ttl N]: the "internet" of the forwarding
benchmark, on 127.0.0.1.

Every A question gets one A record (192.0.2.1, TTL ``--ttl``), other types NOERROR and no data,
and names under ``--blackhole`` no answer at all: a zone whose servers are dead, the target of a
random-subdomain flood. One blocking recvfrom/sendto loop on raw bytes, so that the upstream is
not what limits the servers forwarding to it (tens of thousands of answers a second here).
"""

from __future__ import annotations

import argparse
import socket
import struct


def _name_end(msg: bytes) -> int:
    off = 12
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n > 63:
            raise ValueError("compressed or bad name")
        off += n + 1


def answer(msg: bytes, blackhole: bytes, ttl: int, fresh: bytes = b"") -> bytes | None:
    if len(msg) < 17 or msg[2] & 0x80:
        return None
    try:
        end = _name_end(msg)
    except (IndexError, ValueError):
        return None
    name = msg[12:end].lower()
    if blackhole and name.endswith(blackhole):
        return None
    if fresh and name.endswith(fresh):
        ttl = 0
    qtype = struct.unpack_from("!H", msg, end)[0]
    question = msg[12:end + 4]
    rd = msg[2] & 0x01
    if qtype == 1:
        head = msg[:2] + bytes((0x80 | rd, 0x80)) + struct.pack("!HHHH", 1, 1, 0, 0)
        return head + question + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + bytes((192, 0, 2, 1))
    return msg[:2] + bytes((0x80 | rd, 0x80)) + struct.pack("!HHHH", 1, 0, 0, 0) + question


def wire_suffix(suffix: str) -> bytes:
    labels = [label for label in suffix.strip(".").lower().split(".") if label]
    return b"".join(bytes((len(label),)) + label.encode() for label in labels) + b"\x00" if labels else b""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdns.bench.stub")
    p.add_argument("port", type=int)
    p.add_argument("--blackhole", default="", metavar="SUFFIX")
    p.add_argument("--ttl", type=int, default=300)
    p.add_argument("--fresh", default="", metavar="SUFFIX", help="names under here get TTL 0 "
                   "(never cached: every query of them goes upstream)")
    args = p.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", args.port))
    blackhole = wire_suffix(args.blackhole)
    fresh = wire_suffix(args.fresh)
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, addr = recvfrom(4096)
        reply = answer(data, blackhole, args.ttl, fresh)
        if reply is not None:
            sendto(reply, addr)


if __name__ == "__main__":
    raise SystemExit(main())
