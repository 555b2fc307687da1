"""Who may recurse (``--allow CIDR``): the clients whose out-of-zone queries are forwarded.

The default must not make kdns an open resolver when its port is reachable from the internet
(an amplifier, and a way to read what our upstreams cache): loopback and the private ranges,
which hold every pod and node network a cluster normally uses.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                 "100.64.0.0/10", "fc00::/7", "fe80::/10")
_MEMO_SIZE = 4096      # distinct client addresses remembered; a cluster has a few thousand pods


class AllowError(ValueError):
    pass


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise AllowError(f"--allow {text!r}: not a CIDR (like 10.0.0.0/8 or fd00::/8)") from None


class Allow:
    """``allows(addr)`` for a socket address (host, port, ...) or a bare host; None (a caller
    inside kdns, like the ExternalName chase of a TCP test) is allowed."""

    def __init__(self, cidrs: Iterable[str] = DEFAULT_ALLOW):
        self.networks = tuple(parse_cidr(c) for c in cidrs)
        self._memo: dict[str, bool] = {}

    def allows(self, addr) -> bool:
        if addr is None:
            return True
        host = addr if isinstance(addr, str) else addr[0]
        ok = self._memo.get(host)
        if ok is None:
            ok = self._check(host)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[host] = ok
        return ok

    def _check(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self.networks)

    def describe(self) -> str:
        return ", ".join(str(n) for n in self.networks)
