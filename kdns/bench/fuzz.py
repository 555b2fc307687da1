"""A bounded fuzz of kdns over UDP: mutated datagrams, in and out of zone (issue 13).

Seeds are well-formed queries (in-zone Services, endpoints, SRV, PTR, names outside the zone,
with and without EDNS); each datagram sent is one seed put through one to three mutations (bit
flips, random bytes, truncation, trailing junk, header counts and flags, label lengths past 63,
names past 255 octets, compression pointers that loop or point past the end, a second OPT, an
EDNS version, random types and classes), or pure noise. They go out in windows of ``window``,
each window's replies collected before the next, so no answer is lost to a full socket buffer.

Reported: datagrams sent, replies and their rcodes, replies whose ID is not the query's or that
dnspython cannot parse, log lines and bytes kdns wrote meanwhile (and how many were tracebacks),
RSS before and after, and the canary: a valid in-zone query asked between windows, which must
keep getting its exact answer.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode

from kdns.bench import cluster as gen, servers
from kdns.bench.servers import Running

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          9: "NOTAUTH", 16: "BADVERS"}
OUTSIDE = ("example.com.", "www.example.org.", "a.b.c.d.e.f.test.", "localhost.", ".")
QTYPES = (1, 28, 33, 12, 16, 5, 2, 6, 255, 252, 65)


def seeds(model: gen.Cluster, rng: random.Random, count: int = 400) -> list[bytes]:
    """Well-formed queries over the cluster's names and some outside it."""
    names: list[str] = []
    for svc in model.services[:200]:
        names.append(svc.fqdn)
        names.extend(f"{srv}." if not srv.endswith(".") else srv for srv, _ in svc.srv_names()[:1])
        names.extend(svc.endpoint_fqdn(ep) for ep in svc.endpoints[:1])
    names += [gen.ptr_name(svc.cluster_ip) for svc in model.services[:50] if svc.cluster_ip != "None"]
    names += [f"nosuch{i}.default.svc.cluster.local." for i in range(20)]
    names += list(OUTSIDE)
    out = []
    for _ in range(count):
        name = rng.choice(names)
        q = dns.message.make_query(name, rng.choice(QTYPES), use_edns=rng.choice((False, 0)),
                                   want_dnssec=rng.random() < 0.2)
        out.append(q.to_wire())
    return out


def _flip(b: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)


def _byte(b: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] = rng.randrange(256)


def _truncate(b: bytearray, rng: random.Random) -> None:
    del b[rng.randrange(len(b)):]


def _junk(b: bytearray, rng: random.Random) -> None:
    b += rng.randbytes(rng.randint(1, 64))


def _header(b: bytearray, rng: random.Random) -> None:
    field = rng.randrange(2, 12, 2)             # flags, or one of the four counts
    b[field:field + 2] = struct.pack("!H", rng.choice((0, 1, 2, 3, 0xFFFF, rng.randrange(65536))))


def _long_label(b: bytearray, rng: random.Random) -> None:
    # A label of 64-127 bytes (past the 63 limit), in the question.
    n = rng.randint(64, 127)
    b[12:12] = bytes([n]) + b"x" * n


def _long_name(b: bytearray, rng: random.Random) -> None:
    # Many 63-byte labels: a name past 255 octets.
    labels = b"".join(b"\x3f" + b"y" * 63 for _ in range(rng.randint(5, 8)))
    b[12:12] = labels


def _pointer(b: bytearray, rng: random.Random) -> None:
    at = rng.randrange(12, max(13, len(b) - 1))
    target = rng.choice((at, 12, len(b) + 10, rng.randrange(0x3FFF)))   # loop, back, past end
    b[at:at + 2] = struct.pack("!H", 0xC000 | (target & 0x3FFF))


def _double_opt(b: bytearray, rng: random.Random) -> None:
    b += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    ar = struct.unpack("!H", b[10:12])[0]
    b[10:12] = struct.pack("!H", (ar + 1) & 0xFFFF)


def _edns_version(b: bytearray, rng: random.Random) -> None:
    b += b"\x00\x00\x29\x04\xd0\x00" + bytes([rng.randint(1, 255)]) + b"\x00\x00\x00"
    b[10:12] = b"\x00\x01"


def _type_class(b: bytearray, rng: random.Random) -> None:
    end = _question_end(b)
    if end:
        b[end - 4:end] = struct.pack("!HH", rng.randrange(65536), rng.choice((1, 3, 4, 254, 255, rng.randrange(65536))))


def _question_end(b: bytes) -> int:
    i = 12
    while i < len(b) and b[i] and b[i] < 64:
        i += 1 + b[i]
    return i + 5 if i + 5 <= len(b) else 0


MUTATIONS = (_flip, _byte, _truncate, _junk, _header, _long_label, _long_name, _pointer,
             _double_opt, _edns_version, _type_class)


def mutate(seed: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.03:
        return rng.randbytes(rng.randint(0, 600))           # pure noise
    b = bytearray(seed)
    for _ in range(rng.randint(1, 3)):
        if not b:
            break
        rng.choice(MUTATIONS)(b, rng)
    return bytes(b)


def run(datagrams: int, tmp: Path, *, seed: int = 1, window: int = 128, canary_every: int = 2000,
        services: int = 1000) -> dict:
    """Start kdns on a generated cluster, fuzz it, return the figures."""
    rng = random.Random(seed)
    model = gen.generate(services, services * 10, seed=seed)
    d = tmp / "fuzz-manifests"
    gen.write_manifests(model, d)
    canary_svc = next(s for s in model.services if not s.headless)
    canary = (canary_svc.fqdn, "A")
    port = servers.free_port()
    spec = servers.kdns(d, port, canary, None, name="kdns-fuzz",
                        extra=["--lameduck", "0"] if servers.kdns_accepts("--lameduck") else None)
    pool = seeds(model, rng)
    out: dict = {"datagrams": datagrams, "services": services, "window": window}
    with Running(spec, tmp) as kdns:
        time.sleep(1.0)
        log_before = kdns.log_path.read_bytes()
        out["rss_before_mb"] = kdns.rss_kb() / 1024
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.connect(("127.0.0.1", port))
        rcodes: dict[str, int] = {}
        replies = unparsable = wrong_id = droppable = 0
        canary_ok = canary_failed = 0
        started = time.monotonic()
        sent = 0
        ids: dict[int, int] = {}             # IDs asked and not answered yet: late replies count
        while sent < datagrams:
            batch = [mutate(rng.choice(pool), rng) for _ in range(min(window, datagrams - sent))]
            for pkt in batch:
                if len(pkt) < 12 or pkt[2] & 0x80:
                    droppable += 1           # a runt or a response (QR set): never answered
                if len(pkt) >= 2:
                    qid = struct.unpack("!H", pkt[:2])[0]
                    ids[qid] = ids.get(qid, 0) + 1
                try:
                    sock.send(pkt)
                except OSError:
                    pass
            sent += len(batch)
            got = 0
            sock.settimeout(0.2)             # the first reply may wait for kdns's CPU share
            while got < len(batch):
                try:
                    reply = sock.recv(65535)
                except socket.timeout:
                    break
                except OSError:
                    continue
                sock.settimeout(0.01)        # the rest of a window's replies come together
                got += 1
                if len(reply) < 12:
                    unparsable += 1
                    continue
                qid, flags = struct.unpack("!HH", reply[:4])
                if ids.get(qid, 0) <= 0:
                    wrong_id += 1
                else:
                    ids[qid] -= 1
                rc = RCODES.get(flags & 0xF, str(flags & 0xF))
                rcodes[rc] = rcodes.get(rc, 0) + 1
                try:
                    dns.message.from_wire(reply, ignore_trailing=True)
                except dns.exception.DNSException:
                    unparsable += 1
            replies += got
            if sent // canary_every != (sent - len(batch)) // canary_every:
                r = servers.ask(port, *canary, timeout=1.0)
                if r is not None and r.rcode() == dns.rcode.NOERROR and \
                        [rd.address for rrset in r.answer for rd in rrset] == [canary_svc.cluster_ip]:
                    canary_ok += 1
                else:
                    canary_failed += 1
        out["seconds"] = time.monotonic() - started
        sock.settimeout(0.5)
        try:
            while True:                      # stragglers of the last window
                reply = sock.recv(65535)
                replies += 1
                if len(reply) >= 12:
                    rc = RCODES.get(reply[3] & 0xF, str(reply[3] & 0xF))
                    rcodes[rc] = rcodes.get(rc, 0) + 1
        except OSError:
            pass
        unanswered = sent - replies
        sock.close()
        time.sleep(0.5)
        out["rss_after_mb"] = kdns.rss_kb() / 1024
        log = kdns.log_path.read_bytes()[len(log_before):]
        out["alive"] = kdns.proc.poll() is None
    out.update(replies=replies, unanswered=unanswered, runts_and_responses=droppable, rcodes=dict(sorted(rcodes.items(), key=lambda kv: -kv[1])),
               unparsable_replies=unparsable, wrong_id=wrong_id, canary_ok=canary_ok,
               canary_failed=canary_failed, log_lines=log.count(b"\n"), log_bytes=len(log),
               tracebacks=log.count(b"Traceback"))
    return out


def lines(r: dict) -> str:
    rc = ", ".join(f"{k} {v:,}" for k, v in r["rcodes"].items())
    return "\n".join([
        f"  {r['datagrams']:,} mutated datagrams in {r['seconds']:.1f} s "
        f"({r['datagrams'] / r['seconds']:,.0f}/s, windows of {r['window']}), "
        f"{r['services']:,} services",
        f"  replies {r['replies']:,} ({rc}); no reply {r['unanswered']:,} "
        f"(runts or QR set, dropped by design: {r['runts_and_responses']:,}); "
        f"unparsable replies {r['unparsable_replies']}; reply IDs not asked {r['wrong_id']}",
        f"  log: {r['log_lines']:,} lines, {r['log_bytes']:,} bytes, {r['tracebacks']} tracebacks",
        f"  RSS {r['rss_before_mb']:.1f} MB before, {r['rss_after_mb']:.1f} MB after; "
        f"canary answered {r['canary_ok']}/{r['canary_ok'] + r['canary_failed']}; "
        f"kdns {'still running' if r['alive'] else 'DIED'}",
    ])
