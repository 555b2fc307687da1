"""Slowloris against kdns's TCP (issue 13 item 2), bounded: N connections from N loopback
addresses, each dripping one byte of a query at a time (and reconnecting when closed, as an
attacker would), while a well-behaved client asks one TCP query at a time. Reports how many of
the client's queries were answered, and how many connections the attackers had to reopen.
The issue's figure before kdns.tcp: 260 such connections denied all TCP service."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from kdns.bench import cluster as gen, servers
from kdns.bench.servers import Running


def _source(i: int) -> str:
    return f"127.0.{1 + i // 250}.{2 + i % 250}"


def run(connections: int, tmp: Path, *, seconds: float = 10.0, seed: int = 1) -> dict:
    model = gen.generate(100, 1000, seed=seed)
    d = tmp / "slowloris-manifests"
    gen.write_manifests(model, d)
    svc = next(s for s in model.services if not s.headless)
    port = servers.free_port()
    spec = servers.kdns(d, port, (svc.fqdn, "A"), None, name="kdns-slowloris",
                        extra=["--lameduck", "0"] if servers.kdns_accepts("--lameduck") else None)
    wire = dns.message.make_query(svc.fqdn, "A").to_wire()
    message = struct.pack("!H", len(wire)) + wire
    out = {"connections": connections, "seconds": seconds}
    with Running(spec, tmp) as kdns:
        attackers: list[list] = []

        def open_one(i: int):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(_source(i), 0))
                s.setblocking(False)
                return s
            except OSError:
                return None

        for i in range(connections):
            attackers.append([i, open_one(i), 0])
        opened = sum(1 for a in attackers if a[1] is not None)
        ok = failed = reopened = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for a in attackers:
                i, s, at = a
                if s is None:
                    a[1], a[2] = open_one(i), 0
                    reopened += 1
                    continue
                try:
                    s.send(message[at:at + 1])
                    a[2] = (at + 1) % len(message)
                    if s.recv(1, socket.MSG_PEEK) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    a[1] = None
            try:
                r = dns.query.tcp(dns.message.make_query(svc.fqdn, "A"), "127.0.0.1", port=port, timeout=1.0)
                if r.rcode() == dns.rcode.NOERROR and r.answer:
                    ok += 1
                else:
                    failed += 1
            except Exception:            # noqa: BLE001 - any failure of the client counts
                failed += 1
            time.sleep(0.5)
        for a in attackers:
            if a[1] is not None:
                a[1].close()
        out.update(opened=opened, client_ok=ok, client_failed=failed, reopened=reopened,
                   alive=kdns.proc.poll() is None)
    return out


def lines(r: dict) -> str:
    return (f"  {r['connections']} dripping connections ({r['opened']} opened at first, "
            f"{r['reopened']:,} reopened after kdns closed them) for {r['seconds']:g} s: a "
            f"well-behaved TCP client got {r['client_ok']}/{r['client_ok'] + r['client_failed']} "
            f"answers; kdns {'still running' if r['alive'] else 'DIED'}")
