"""A scriptable upstream DNS server for tests: real UDP and TCP sockets on 127.0.0.1.

It serves zone-file lines, answers NXDOMAIN/NODATA with an SOA, and can be told to drop,
hold, truncate or fail, and it counts every query it sees, so tests can assert how many
upstream queries kdns made and over which transport.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

from dnslib import QTYPE, RCODE, RR, DNSRecord


class Stub:
    def __init__(self, zone: list[str], soa: str | None = "example.com. 600 IN SOA ns.example.com. "
                 "hostmaster.example.com. 1 7200 1800 86400 30", host: str = "127.0.0.1",
                 port: int = 0):
        self.records = [RR.fromZone(line)[0] for line in zone]
        self.soa = RR.fromZone(soa)[0] if soa else None
        self.mode = "answer"          # answer | drop | servfail | refused
        self.truncate: set[str] = set()   # names whose UDP answer is TC=1, empty
        self.hold = threading.Event()     # cleared: answers wait until it is set
        self.hold.set()
        self.seen: list[tuple[str, str, str]] = []   # (transport, qname lower, qtype)
        self.on_query = None              # callable(bytes) -> bytes | None, replaces answering
        self._lock = threading.Lock()
        stub = self

        class UDP(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                reply = stub.reply(data, "udp")
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCP(socketserver.BaseRequestHandler):
            def handle(self):
                while True:
                    head = _recv(self.request, 2)
                    if not head:
                        return
                    data = _recv(self.request, struct.unpack("!H", head)[0])
                    reply = stub.reply(data, "tcp")
                    if reply is None:
                        return
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        class UDPServer(socketserver.ThreadingUDPServer):
            daemon_threads = True
            allow_reuse_address = True

        class TCPServer(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        for attempt in range(50):
            # UDP picks a free port; TCP must get the same number, which another process may hold.
            self.udp = UDPServer((host, port), UDP)
            self.port = self.udp.server_address[1]
            try:
                self.tcp = TCPServer((host, self.port), TCP)
                break
            except OSError:
                self.udp.server_close()
                if port or attempt == 49:
                    raise
        self.addr = (host, self.port)
        for server in (self.udp, self.tcp):
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def count(self, transport: str | None = None, name: str | None = None) -> int:
        with self._lock:
            return sum(1 for t, n, _ in self.seen
                       if (transport is None or t == transport) and (name is None or n == name))

    def reply(self, data: bytes, transport: str) -> bytes | None:
        req = DNSRecord.parse(data)
        qname = str(req.q.qname).lower().rstrip(".")
        with self._lock:
            self.seen.append((transport, qname, QTYPE.get(req.q.qtype)))
        if self.on_query is not None:
            return self.on_query(data)
        self.hold.wait(10)
        if self.mode == "drop":
            return None
        reply = req.reply()
        reply.header.aa = 1
        if self.mode in ("servfail", "refused"):
            reply.header.rcode = RCODE.SERVFAIL if self.mode == "servfail" else RCODE.REFUSED
            return reply.pack()
        if transport == "udp" and qname in self.truncate:
            reply.header.tc = 1
            return reply.pack()
        owners = [rr for rr in self.records if str(rr.rname).lower().rstrip(".") == qname]
        matching = [rr for rr in owners if rr.rtype == req.q.qtype]
        if not matching:    # a CNAME answers every type (not chased: the stub is no resolver)
            matching = [rr for rr in owners if rr.rtype == QTYPE.CNAME]
        for rr in matching:
            reply.add_answer(rr)
        if not matching:
            if not owners:
                reply.header.rcode = RCODE.NXDOMAIN
            if self.soa is not None:
                reply.add_auth(self.soa)
        return reply.pack()

    def close(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


def closed_port() -> tuple[str, int]:
    """A UDP/TCP port on 127.0.0.1 with nothing listening (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()
