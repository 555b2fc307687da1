"""`kdns compare`: ask two DNS servers the same questions about every Service, report where they differ.

For a migration (docs/ops.md): the cluster's DNS today (CoreDNS behind kube-dns) and kdns behind
its own Service, both asked, from the Services kdns itself reads (the API, or manifests), for
each Service's A, AAAA and SRV, each named port's SRV, each cluster IP's PTR and each ready
headless endpoint's address record. Answers are
compared as sets of records (owner, type, data), with the rcode; TTLs are left out (kubeadm's
Corefile says 30, kdns defaults to 5), as is record order (both rotate). Exit 0: no difference;
1: differences (one line each); 2: bad flags or sources.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import sys
from typing import Iterable

from kdns import rawwire
from kdns.config import ConfigError, add_source_args, format_hostport, normalize_zone, parse_hostport

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "TXT": 16, "AAAA": 28, "SRV": 33}
NAMES = {v: k for k, v in TYPES.items()}
RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="ask two DNS servers about every Service and report the differences",
        description="Ask two DNS servers the same questions about every Service of the source "
                    "(A, AAAA, SRV, named-port SRV, PTR of cluster IPs, headless endpoints) and print "
                    "each difference. "
                    "Exit 0 when they agree, 1 when they differ.")
    p.add_argument("--server", action="append", required=True, metavar="HOST[:PORT]",
                   help="a DNS server to ask; give exactly two (e.g. the kube-dns and kdns Service IPs)")
    p.add_argument("--domain", default="cluster.local", help="cluster domain (default cluster.local)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                   help="per question and server, with one retry (default 2)")
    add_source_args(p, watch=False)
    return p


def questions(services: Iterable, zone: str, slices: Iterable = ()) -> list[tuple[str, str]]:
    """(name, type) pairs about every Service, in a stable order; with ``slices``, the A record
    of every ready endpoint of a headless Service too (by hostname, else dashed IP)."""
    out: list[tuple[str, str]] = []
    endpoints: dict = {}
    for sl in slices:
        if sl.address_type in ("IPv4", "IPv6"):
            for ep in sl.endpoints:
                if ep.ready and ep.addresses:
                    label = ep.hostname or ep.addresses[0].replace(".", "-").replace(":", "-")
                    endpoints.setdefault((sl.namespace, sl.service_name), set()).add(
                        (label, "A" if sl.address_type == "IPv4" else "AAAA"))
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        base = f"{svc.name}.{svc.namespace}.svc.{zone}."
        out += [(base, "A"), (base, "AAAA"), (base, "SRV")]
        for port in svc.ports:
            if port.name:
                out.append((f"_{port.name}._{(port.protocol or 'TCP').lower()}.{base}", "SRV"))
        for ip in svc.addresses:
            out.append((ipaddress.ip_address(ip).reverse_pointer + ".", "PTR"))
        if svc.headless:
            out += [(f"{label}.{base}", qtype) for label, qtype in sorted(endpoints.get(svc.key, ()))]
    return out


def _rdata(msg: bytes, rtype: int, off: int, rdlen: int) -> str:
    data = msg[off:off + rdlen]
    if rtype == 1 and rdlen == 4:
        return socket.inet_ntop(socket.AF_INET, data)
    if rtype == 28 and rdlen == 16:
        return socket.inet_ntop(socket.AF_INET6, data)
    if rtype in (2, 5, 12):
        return rawwire.wire_to_name(rawwire.read_name(msg, off)[0]).lower()
    if rtype == 33 and rdlen > 6:
        prio, weight, port = struct.unpack("!HHH", data[:6])
        return f"{prio} {weight} {port} {rawwire.wire_to_name(rawwire.read_name(msg, off + 6)[0]).lower()}"
    return data.hex()


def records(msg: bytes) -> tuple[str, frozenset[str]]:
    """(rcode, the answer section as 'owner TYPE data' strings, TTLs left out)."""
    if len(msg) < 12:
        raise rawwire.WireError("short response")
    rcode = msg[3] & 0x0F
    qd, an = struct.unpack("!HH", msg[4:8])
    off = 12
    for _ in range(qd):
        off = rawwire.skip_name(msg, off) + 4
    out = set()
    for _ in range(an):
        owner, off = rawwire.read_name(msg, off)
        rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        out.add(f"{rawwire.wire_to_name(owner).lower()} {NAMES.get(rtype, f'TYPE{rtype}')} "
                f"{_rdata(msg, rtype, off, rdlen)}")
        off += rdlen
    return (RCODES[rcode] if rcode < len(RCODES) else str(rcode)), frozenset(out)


def ask(server: tuple[str, int], name: str, qtype: str, timeout: float) -> tuple[str, frozenset[str]]:
    """One question over UDP (again over TCP when truncated); ('timeout', {}) if no answer."""
    query, qid = rawwire.build_query(rawwire.name_to_wire(name), TYPES[qtype])
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    for _ in range(2):
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            try:
                s.sendto(query, server)
                while True:
                    msg = s.recv(65535)
                    if msg[:2] == qid:
                        break
            except socket.timeout:
                continue
        if len(msg) > 2 and msg[2] & 0x02:                         # TC: ask over TCP
            with socket.create_connection(server, timeout=timeout) as t:
                t.sendall(struct.pack("!H", len(query)) + query)
                head = _recv(t, 2)
                msg = _recv(t, struct.unpack("!H", head)[0])
        return records(msg)
    return "timeout", frozenset()


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise rawwire.WireError("connection closed mid-message")
        buf += chunk
    return buf


def _show(answer: tuple[str, frozenset[str]]) -> str:
    rcode, rrs = answer
    return f"{rcode} [{', '.join(sorted(rrs))}]"


def run(args: argparse.Namespace, load_cluster) -> int:
    """``load_cluster(args)``: the Cluster from the source flags (as `kdns env` reads it)."""
    try:
        if len(args.server) != 2:
            raise ConfigError("give --server exactly twice: the two servers to compare")
        servers = [parse_hostport(text, 53) for text in args.server]
        zone = normalize_zone(args.domain)
    except ConfigError as exc:
        print(f"kdns compare: {exc}", file=sys.stderr)
        return 2
    cluster = load_cluster(args)
    if cluster is None:
        return 2
    asked = questions(cluster.services.values(), zone, cluster.slices.values())
    a, b = (format_hostport(*s) for s in servers)
    differ = 0
    for name, qtype in asked:
        first, second = (ask(s, name, qtype, args.timeout) for s in servers)
        if first != second:
            differ += 1
            print(f"differ: {name} {qtype}: {a} {_show(first)}; {b} {_show(second)}")
    print(f"kdns compare: {len(asked)} questions about {len(cluster.services)} Services: "
          f"{differ} differ" + ("" if differ else f"; {a} and {b} agree"), file=sys.stderr)
    return 1 if differ else 0
