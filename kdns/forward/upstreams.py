"""Which upstream resolvers: ``--upstream``, else the nameservers of ``--resolv-conf``, never
kdns's own listen addresses (a forwarding loop)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Iterable, Sequence

from kdns.config import format_hostport as _fmt

log = logging.getLogger("kdns.forward")


class ForwardConfigError(ValueError):
    """A bad upstream configuration; the message is for the user."""


def read_resolv_conf(path: str) -> list[tuple[str, int]]:
    """The ``nameserver`` lines of a resolv.conf, port 53 (the file has no syntax for others)."""
    servers = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.split("#", 1)[0].split(";", 1)[0].split()
            if len(words) >= 2 and words[0] == "nameserver":
                host = words[1]         # fe80::1%eth0 keeps its zone: connect() needs it
                try:
                    ipaddress.ip_address(host)
                except ValueError:
                    log.warning("%s: ignoring nameserver %r: not an IP address", path, words[1])
                    continue
                servers.append((host, 53))
    return servers


def _is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this machine (network namespace): can we bind to it?"""
    ip = ipaddress.ip_address(host)
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def is_own_address(upstream: tuple[str, int], listens: Iterable[tuple[str, int]]) -> bool:
    host, port = upstream
    up = ipaddress.ip_address(host)
    for lhost, lport in listens:
        if lport != port:
            continue
        lip = ipaddress.ip_address(lhost)
        if lip == up:
            return True
        if lip.is_unspecified and _is_local_address(host):
            return True
    return False


def choose_upstreams(explicit: Sequence[tuple[str, int]], resolv_conf: str,
                     listens: Sequence[tuple[str, int]],
                     missing_ok: bool = False, flag: str = "--upstream") -> list[tuple[str, int]]:
    """``--upstream`` if given, else the nameservers of ``--resolv-conf`` (``""`` = none), minus
    kdns's own listen addresses. Raises ForwardConfigError when only our own addresses are left,
    or when the file cannot be read (unless ``missing_ok``: the default path on a machine
    without one)."""
    if explicit:
        source, candidates = flag, list(explicit)
    elif resolv_conf:
        source = f"--resolv-conf {resolv_conf}"
        try:
            candidates = read_resolv_conf(resolv_conf)
        except FileNotFoundError:
            if not missing_ok:
                raise ForwardConfigError(f"{source}: cannot read: no such file") from None
            candidates = []
        except OSError as e:
            raise ForwardConfigError(f"{source}: cannot read: {e.strerror}") from None
    else:
        return []
    chosen, own = [], []
    for up in dict.fromkeys(candidates):
        (own if is_own_address(up, listens) else chosen).append(up)
    for host, port in own:
        log.warning("%s: not forwarding to %s: that is kdns's own listen address", source,
                    _fmt(host, port))
    if own and not chosen:
        raise ForwardConfigError(
            f"{source}: every upstream ({', '.join(_fmt(*u) for u in own)}) is kdns's own listen "
            "address, which would be a forwarding loop; give a real resolver with "
            + ("--upstream HOST[:PORT]" if flag == "--upstream" else f"{flag}=HOST[:PORT]"))
    return chosen


