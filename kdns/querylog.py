"""--log-queries: one line per answered query, in CoreDNS log plugin's common format

    {remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" {rcode} {>rflags} {rsize} {duration}
    127.0.0.1:52077 - 2548 "A IN webapp.default.svc.cluster.local. udp 50 false 1232" NOERROR qr,aa,rd 90 0.000083s

so the greps and log pipelines written for CoreDNS read kdns's lines too.

It works by wrapping the sockets, never the hot loop: with --log-queries kdns answers through
the one-datagram-per-call UDP loop on a socket whose recvfrom notes each query and whose sendto
logs it with its answer; TCP connections are wrapped the same way. Lines go to stderr in
batches (Writer), not through the logging module, whose per-record cost would exceed the
query's. With it off (the default) the server's sockets and loops are exactly what they are
without this module.
"""

from __future__ import annotations

import atexit
import json
import re
import socket
import struct
import sys
import threading
import time
from time import perf_counter

from kdns import rawwire
from kdns.logs import QUERY_LOGGER

TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
         28: "AAAA", 33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG",
         47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 52: "TLSA", 64: "SVCB", 65: "HTTPS", 99: "SPF",
         251: "IXFR", 252: "AXFR", 255: "ANY", 257: "CAA"}
CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
          "NXRRSET", "NOTAUTH", "NOTZONE")
# Header flag bits in CoreDNS's order (plugin/pkg/replacer appendFlags).
FLAGS = (("qr", 0x8000), ("aa", 0x0400), ("tc", 0x0200), ("rd", 0x0100), ("ra", 0x0080),
         ("z", 0x0040), ("ad", 0x0020), ("cd", 0x0010))
MAX_PENDING = 10000          # queries waiting for their answer (dropped ones never get one)
_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_-]*")


def _name(wire: bytes) -> str:
    """The query name, lower case, as CoreDNS prints it; the escaping path only for odd bytes."""
    labels, off = [], 0
    while wire[off]:
        n = wire[off]
        label = wire[off + 1:off + 1 + n]
        if not _PLAIN_LABEL.fullmatch(label):
            return rawwire.wire_to_name(wire).lower()
        labels.append(label)
        off += n + 1
    return b".".join(labels).decode("ascii").lower() + "."


class Writer:
    """Query lines, written in batches: a line per query through the logging module (a record,
    a lock and a write system call each) would cost more than answering the query. Whole lines
    go out at least every 0.2 s, when 256 are waiting, and at exit."""

    def __init__(self, stream=None, fmt: str = "text"):
        self.stream = stream or sys.stderr
        self.json = fmt == "json"
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._second = -1
        self._stamp = ""
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="kdns-querylog", daemon=True).start()
        atexit.register(self.flush)

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def write(self, text: str, fields) -> None:
        stamp = self._timestamp(time.time())
        if self.json:
            doc = {"time": stamp, "level": "info", "logger": QUERY_LOGGER, "msg": text, **fields()}
            self.lines.append(json.dumps(doc, ensure_ascii=False) + "\n")
        else:
            self.lines.append(f"{stamp} [INFO] {text}\n")
        if len(self.lines) >= 256:
            self._wake.set()

    def flush(self) -> None:
        with self._lock:
            lines, self.lines = self.lines, []
            if lines:
                try:
                    self.stream.write("".join(lines))
                    self.stream.flush()
                except (OSError, ValueError):
                    pass

    def _run(self) -> None:
        while True:
            self._wake.wait(0.2)
            self._wake.clear()
            self.flush()


WRITER: Writer | None = None


def _remote(addr) -> tuple[str, int]:
    host, port = addr[0], addr[1]
    return (f"[{host}]" if ":" in host else host), port


def line(addr, query: bytes, response: bytes, proto: str, seconds: float):
    """The common-format line of one exchange, and () -> its fields (for --log-format json)."""
    remote, port = _remote(addr)
    qid = struct.unpack("!H", query[:2])[0] if len(query) >= 2 else 0
    try:
        q = rawwire.parse_query(query)
        qtype = TYPES.get(q.qtype, f"TYPE{q.qtype}")
        qclass = CLASSES.get(q.qclass, f"CLASS{q.qclass}")
        name = _name(q.name)
        do, bufsize = q.do, (65535 if proto == "tcp" else q.udp_size)
    except (rawwire.WireError, IndexError):
        qtype = qclass = name = "-"
        do, bufsize = False, 512
    if len(response) >= 4:
        flags = struct.unpack("!H", response[2:4])[0]
        rc = flags & 0x0F
        rcode = RCODES[rc] if rc < len(RCODES) else str(rc)
        rflags = ",".join(n for n, bit in FLAGS if flags & bit)
    else:
        rcode, rflags = "-", "-"
    duration = f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    text = (f'{remote}:{port} - {qid} "{qtype} {qclass} {name} {proto} {len(query)} '
            f'{"true" if do else "false"} {bufsize}" {rcode} {rflags} {len(response)} {duration}')
    def fields() -> dict:
        return {"remote": remote.strip("[]"), "port": port, "id": qid, "type": qtype, "class": qclass,
                "name": name, "proto": proto, "size": len(query), "do": do, "bufsize": bufsize,
                "rcode": rcode, "rflags": rflags, "rsize": len(response), "duration": seconds}
    return text, fields


def emit(addr, query: bytes, response: bytes, proto: str, start: float) -> None:
    text, fields = line(addr, query, response, proto, perf_counter() - start)
    WRITER.write(text, fields)


class UDPSocket:
    """A UDP socket that logs each answer it sends with the query it answers (matched by the
    client's address and the message ID, so answers from a worker thread match too)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._pending: dict = {}

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def __hash__(self):
        return hash(self._sock)

    def __eq__(self, other):
        return self._sock is getattr(other, "_sock", other)

    def recvfrom(self, size: int):
        data, addr = self._sock.recvfrom(size)
        if len(self._pending) >= MAX_PENDING:
            for key in list(self._pending)[:MAX_PENDING // 4]:
                self._pending.pop(key, None)
        self._pending[(addr, data[:2])] = (data, perf_counter())
        return data, addr

    def sendto(self, packet: bytes, addr):
        sent = self._sock.sendto(packet, addr)
        waiting = self._pending.pop((addr, packet[:2]), None)
        if waiting is not None:
            emit(addr, waiting[0], packet, "udp", waiting[1])
        return sent


class TCPConnection:
    """An accepted TCP connection that logs each length-prefixed answer with its query."""

    def __init__(self, conn: socket.socket, addr):
        self._conn = conn
        self._addr = addr
        self._inbuf = b""
        self._queries: list = []

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def recv(self, size: int) -> bytes:
        chunk = self._conn.recv(size)
        self._inbuf += chunk
        while len(self._inbuf) >= 2:
            (n,) = struct.unpack("!H", self._inbuf[:2])
            if len(self._inbuf) < 2 + n:
                break
            self._queries.append((self._inbuf[2:2 + n], perf_counter()))
            self._inbuf = self._inbuf[2 + n:]
        return chunk

    def sendall(self, data: bytes) -> None:
        self._conn.sendall(data)
        if self._queries:
            query, start = self._queries.pop(0)
            emit(self._addr, query, data[2:], "tcp", start)


class TCPListener:
    def __init__(self, sock: socket.socket):
        self._sock = sock

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def accept(self):
        conn, addr = self._sock.accept()
        return TCPConnection(conn, addr), addr


def install(server, fmt: str = "text") -> None:
    """Log every query ``server`` answers (call after bind, before start): its UDP sockets are
    wrapped and answered one datagram per call, its TCP listeners hand out logging connections."""
    global WRITER
    WRITER = Writer(fmt=fmt)
    server.batch = 1
    wrapped = []
    for sock in server._udp:
        proxy = UDPSocket(sock)
        server._listeners[proxy] = server._listeners[sock]
        wrapped.append(proxy)
    server._udp = wrapped
    server._tcp = [TCPListener(sock) for sock in server._tcp]
