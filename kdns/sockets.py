"""The listening sockets: one UDP and one TCP socket per --listen address.

SO_REUSEPORT on a fixed port lets a new kdns bind while the old one still answers through its
lameduck (a rolling restart on one host, or a systemd restart): the kernel shares the traffic
between both until the old one closes. Not on port 0: an ephemeral port is ours alone, and two
tests each picking "any port" must never end up sharing one.
"""

from __future__ import annotations

import errno
import socket

from kdns.config import format_hostport

UDP_RCVBUF = 4 << 20


class ListenError(OSError):
    """A socket that cannot be bound; ``str()`` names the address and says what to do."""


def open_listeners(listen) -> tuple[list[socket.socket], list[socket.socket], list[tuple[str, int]]]:
    """(udp sockets, tcp sockets, bound (host, port)s), or ListenError with nothing left open."""
    udp_socks: list[socket.socket] = []
    tcp_socks: list[socket.socket] = []
    bound = []
    try:
        for host, asked in listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            for attempt in range(20):
                tcp = _socket(family, socket.SOCK_STREAM, asked != 0, tcp_socks)
                _bind(tcp, host, asked, "tcp")
                port = tcp.getsockname()[1]      # port 0: UDP takes the same number as TCP
                udp = _socket(family, socket.SOCK_DGRAM, asked != 0, udp_socks)
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
                try:
                    _bind(udp, host, port, "udp")
                    break
                except ListenError as exc:
                    # Port 0: the number free for TCP may be taken for UDP; pick another.
                    if asked != 0 or exc.errno != errno.EADDRINUSE or attempt == 19:
                        raise
                    for sock, into in ((tcp, tcp_socks), (udp, udp_socks)):
                        into.remove(sock)
                        sock.close()
            tcp.listen(1024)
            bound.append((host, port))
    except BaseException:
        for sock in udp_socks + tcp_socks:
            sock.close()
        raise
    return udp_socks, tcp_socks, bound


def _socket(family: int, kind: int, reuse_port: bool, into: list) -> socket.socket:
    sock = socket.socket(family, kind)
    into.append(sock)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def _bind(sock: socket.socket, host: str, port: int, proto: str) -> None:
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise ListenError(exc.errno, bind_problem(exc, host, port, proto)) from None


def bind_problem(exc: OSError, host: str, port: int, proto: str) -> str:
    """One line for a failed bind: the address, the reason, and what to do about it."""
    where = f"cannot listen on {format_hostport(host, port)} ({proto})"
    if exc.errno == errno.EADDRINUSE:
        return (f"{where}: address already in use: another process holds it (another DNS server "
                f"such as systemd-resolved or dnsmasq, or a kdns started without SO_REUSEPORT); "
                f"stop it or choose another --listen")
    if exc.errno == errno.EACCES:
        if 0 < port < 1024:
            return (f"{where}: permission denied: port {port} needs root or CAP_NET_BIND_SERVICE; "
                    f"use --listen {format_hostport(host, 5353 if port == 53 else 1024 + port)}")
        return f"{where}: permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: no interface of this machine has the address {host}; check --listen"
    return f"{where}: {exc.strerror or exc}"
