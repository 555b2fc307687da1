"""Custom records from a hosts(5) file (--hosts, as CoreDNS's hosts plugin), answered first.

Each line is ``IP NAME [ALIAS...]``; ``#`` starts a comment. Every name gets the line's address
(A for IPv4, AAAA for IPv6, several lines add up, in file order), and every address a PTR to each
of its names (RFC 1035 §3.5 reverse names), as CoreDNS does. The answer engine looks names up
in ``Hosts.names`` and reverse names in ``Hosts.reverse``, both keyed by the question name as
it compares (lower case, trailing dot), so a lookup costs one dict probe.

Unlike CoreDNS, which skips lines it cannot read, a bad line is an error naming the file and
line: at startup nothing is served, on a reload the last good data stays (``Watcher``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

log = logging.getLogger("kdns.hosts")

_LABEL = re.compile(r"^[A-Za-z0-9_]([-A-Za-z0-9_]*[A-Za-z0-9_])?$")


class HostsError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Hosts:
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)    # 'db.internal.' -> IPs
    reverse: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # '5.0.0.10.in-addr.arpa.' -> names


def _name(text: str) -> str | None:
    name = text.rstrip(".").lower()
    if not name or len(name) > 253 or not all(_LABEL.match(label) and len(label) <= 63
                                              for label in name.split(".")):
        return None
    return name + "."


def parse(lines: Iterable[str], where: str) -> Hosts:
    """hosts(5) lines -> Hosts; HostsError names ``where`` and the line of every problem."""
    names: dict[str, dict[str, None]] = {}
    reverse: dict[str, dict[str, None]] = {}
    problems: list[str] = []
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            ip = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            problems.append(f"{where}:{number}: {fields[0]!r} is not an IP address")
            continue
        if len(fields) < 2:
            problems.append(f"{where}:{number}: {fields[0]} has no host name")
            continue
        text = ip.compressed
        rev = ip.reverse_pointer + "."
        for host in fields[1:]:
            name = _name(host)
            if name is None:
                problems.append(f"{where}:{number}: {host!r} is not a host name")
                continue
            names.setdefault(name, {})[text] = None
            reverse.setdefault(rev, {})[name] = None
    if problems:
        raise HostsError(problems)
    return Hosts({n: tuple(ips) for n, ips in names.items()},
                 {r: tuple(ns) for r, ns in reverse.items()})


def load(path: str | None, entries: Iterable[str] = ()) -> Hosts:
    """The file's records plus inline ``entries`` (hosts lines, e.g. from a Corefile)."""
    lines: list[tuple[str, list[str]]] = []
    if entries:
        lines.append(("--hosts-entry", list(entries)))
    if path:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines.append((path, f.read().splitlines()))
        except OSError as exc:
            raise HostsError([f"{path}: {exc.strerror or exc}"]) from None
    merged_names: dict[str, dict[str, None]] = {}
    merged_rev: dict[str, dict[str, None]] = {}
    problems: list[str] = []
    for where, text in lines:
        try:
            part = parse(text, where)
        except HostsError as exc:
            problems.extend(exc.problems)
            continue
        for name, ips in part.names.items():
            merged_names.setdefault(name, {}).update(dict.fromkeys(ips))
        for rev, ns in part.reverse.items():
            merged_rev.setdefault(rev, {}).update(dict.fromkeys(ns))
    if problems:
        raise HostsError(problems)
    return Hosts({n: tuple(v) for n, v in merged_names.items()},
                 {r: tuple(v) for r, v in merged_rev.items()})


class Watcher:
    """Reload the hosts file when its (mtime, size) changes; a bad edit keeps the last good
    data (CoreDNS's hosts plugin re-reads every 5 s; kdns polls at --reload)."""

    def __init__(self, path: str, entries: tuple[str, ...], publish: Callable[[Hosts], None],
                 interval: float):
        self.path, self.entries, self.publish, self.interval = path, entries, publish, interval
        self._seen = self._stamp()
        self._stop = threading.Event()

    def _stamp(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def start(self) -> None:
        threading.Thread(target=self._run, name="kdns-hosts", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def check(self) -> None:
        stamp = self._stamp()
        if stamp == self._seen:
            return
        self._seen = stamp
        try:
            hosts = load(self.path, self.entries)
        except HostsError as exc:
            for line in exc.problems:
                log.error("%s", line)
            log.error("hosts reload failed: still serving the last good %s", self.path)
            return
        self.publish(hosts)
        log.info("reloaded %s: %d names", self.path, len(hosts.names))
