"""The forwarding row: forwarded-name QPS, and a victim's success rate while another client floods
a blackholed zone, kdns beside unbound, both forwarding to the same loopback stub (kdns.bench.stub).

- cached: dnsperf over 100 external names (after the first pass every answer is a forwarding-
  cache hit: what pods mostly get);
- uncached: dnsperf over unique names the stub answers with TTL 0, so every query goes upstream
  (the forwarder's own throughput; the stub answers tens of thousands a second);
- flood: a client on 127.0.0.2 sends unique names under a zone the stub never answers, at
  ``flood_qps`` for ``flood_s`` seconds (issue 12's random-subdomain attack), while a client on
  127.0.0.1 asks one fresh working name at a time (2 s timeout, as a stub resolver would, no
  retry); then the same victim right after the flood stops.
"""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from kdns.bench import dnsperf, servers
from kdns.bench.servers import Running, Spec, Unavailable

BLACKHOLE = "blackhole.example."
FRESH = "fresh.example."
VICTIM_TIMEOUT = 2.0
AFTER_QUERIES = 50


def stub_spec(port: int) -> Spec:
    argv = [sys.executable, "-m", "kdns.bench.stub", str(port), "--blackhole", BLACKHOLE,
            "--fresh", FRESH]
    env = {"PYTHONPATH": str(servers.REPO)}
    return Spec("stub", argv, ("ready.example.", "A"), port, cwd=servers.REPO, env=env)


def _write(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"{n} A\n" for n in names))
    return path


class _Flood:
    def __init__(self, port: int, qps: int, seconds: float, tag: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.2", 0))
        self.sock.settimeout(0.2)
        self.port, self.qps, self.seconds, self.tag = port, qps, seconds, tag
        self.sent = 0
        self.rcodes: dict[str, int] = {}
        self.done = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._read, daemon=True)]
        for t in self._threads:
            t.start()

    def _send(self) -> None:
        burst = max(1, self.qps // 100)
        end = time.monotonic() + self.seconds
        tick = time.monotonic()
        while time.monotonic() < end:
            for _ in range(burst):
                q = dns.message.make_query(f"r{self.sent}.{self.tag}.{BLACKHOLE}", "A")
                try:
                    self.sock.sendto(q.to_wire(), ("127.0.0.1", self.port))
                except OSError:
                    pass
                self.sent += 1
            tick += 0.01
            time.sleep(max(0.0, tick - time.monotonic()))
        self.done.set()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                if self.done.is_set():
                    return
                continue
            except OSError:
                return
            rcode = dns.rcode.to_text(data[3] & 0x0F)
            self.rcodes[rcode] = self.rcodes.get(rcode, 0) + 1

    def join(self) -> None:
        for t in self._threads:
            t.join(self.seconds + 10)
        self.sock.close()


def _victim(port: int, names, until=None, count: int | None = None) -> tuple[int, int, list[float]]:
    ok = total = 0
    latencies = []
    for name in names:
        if until is not None and until():
            break
        if count is not None and total >= count:
            break
        q = dns.message.make_query(name, "A")
        started = time.monotonic()
        total += 1
        try:
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=VICTIM_TIMEOUT, source="127.0.0.1")
        except (dns.exception.DNSException, OSError):
            continue
        if r.rcode() == dns.rcode.NOERROR and r.answer and r.answer[0][0].to_text() == "192.0.2.1":
            ok += 1
            latencies.append((time.monotonic() - started) * 1000)
    return ok, total, latencies


def measure_one(spec: Spec, tmp: Path, duration: float, flood_qps: int, flood_s: float,
                clients: int, outstanding: int, tag: str) -> dict:
    row: dict = {"server": spec.name}
    hot = _write(tmp / "fwd-hot.queries", [f"h{i}.example." for i in range(100)])
    fresh = _write(tmp / f"fwd-fresh-{tag}.queries", [f"u{i}.{tag}.{FRESH}" for i in range(200000)])
    try:
        with Running(spec, tmp) as run:
            dnsperf.run(spec.port, hot, 1.0, clients=clients, outstanding=outstanding)   # warm
            run.quiesce()
            row["cached_qps"] = dnsperf.run(spec.port, hot, duration, clients=clients,
                                            outstanding=outstanding).qps
            run.quiesce()
            res = dnsperf.run(spec.port, fresh, duration, clients=clients, outstanding=outstanding)
            row["uncached_qps"], row["uncached_lost_pct"] = res.qps, res.lost_pct
            run.quiesce()
            flood = _Flood(spec.port, flood_qps, flood_s, tag)
            names = (f"w{i}.{tag}.example." for i in range(10**6))
            ok, total, lat = _victim(spec.port, names, until=flood.done.is_set)
            flood.join()
            row.update(victim_ok=ok, victim_total=total,
                       victim_p50_ms=statistics.median(lat) if lat else None,
                       flood_sent=flood.sent, flood_rcodes=dict(flood.rcodes))
            names = (f"a{i}.{tag}.example." for i in range(AFTER_QUERIES))
            ok, total, lat = _victim(spec.port, names, count=AFTER_QUERIES)
            row.update(after_ok=ok, after_total=total,
                       after_p50_ms=statistics.median(lat) if lat else None)
            row["rss_mb"] = run.rss_kb() / 1024
    except (Unavailable, OSError, dnsperf.DnsperfError) as exc:
        row["error"] = str(exc)
    return row


def measure(names: list[str], tmp: Path, *, duration: float, flood_qps: int, flood_s: float,
            rounds: int, clients: int, outstanding: int, say=print) -> list[dict]:
    """Every round, each server in turn against one shared stub; rows in round order."""
    stub_port = servers.free_port()
    rows = []
    with Running(stub_spec(stub_port), tmp):
        for r in range(rounds):
            for name in names:
                d = tmp / f"fwd-{name}-{r}"
                d.mkdir(parents=True, exist_ok=True)
                port = servers.free_port()
                probe = ("probe.example.", "A")
                try:
                    if name == "kdns":
                        spec = servers.kdns(None, port, probe, stub_port, extra=["--reload", "0"])
                    else:
                        spec = servers.unbound(d, [], port, probe, stub_port)
                except Unavailable as exc:
                    rows.append({"server": name, "round": r + 1, "error": str(exc)})
                    continue
                say(f"forwarding: {name} (round {r + 1})")
                row = measure_one(spec, d, duration, flood_qps, flood_s, clients, outstanding,
                                  f"{name}{r}")
                row["round"] = r + 1
                rows.append(row)
                say(f"forwarding: {name}: " + (row.get("error") or
                    f"cached {row['cached_qps']:,.0f} QPS, uncached {row['uncached_qps']:,.0f} QPS, "
                    f"victim {row['victim_ok']}/{row['victim_total']} during the flood, "
                    f"{row['after_ok']}/{row['after_total']} after"))
    return rows


def _spread(values: list[float], fmt: str, unit: str = "") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mid = statistics.median(values)
    if len(values) == 1:
        return format(mid, fmt) + unit
    return f"{format(mid, fmt)}{unit} ({format(min(values), fmt)}-{format(max(values), fmt)}{unit})"


def table(rows: list[dict], flood_qps: int, flood_s: float) -> str:
    """One line per server: medians over the rounds, (min-max) when there were several."""
    out = [f"forwarding to one loopback stub; flood: {flood_qps} unique names/s under a dead zone "
           f"from 127.0.0.2 for {flood_s:g} s; victim: one fresh name at a time from 127.0.0.1, "
           f"{VICTIM_TIMEOUT:g} s timeout",
           f"{'server':<10} {'cached QPS':>22} {'uncached QPS':>22} {'victim during flood':>22} "
           f"{'victim p50 ms':>18} {'right after':>14}"]
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["server"], []).append(row)
    for name, rs in by.items():
        ok = [r for r in rs if not r.get("error")]
        if not ok:
            out.append(f"{name:<10} {rs[0]['error']}")
            continue
        during = [100.0 * r["victim_ok"] / r["victim_total"] for r in ok if r["victim_total"]]
        after = [100.0 * r["after_ok"] / r["after_total"] for r in ok if r["after_total"]]
        victims = ", ".join(f"{r['victim_ok']}/{r['victim_total']}" for r in ok)
        out.append(f"{name:<10} {_spread([r['cached_qps'] for r in ok], ',.0f'):>22} "
                   f"{_spread([r['uncached_qps'] for r in ok], ',.0f'):>22} "
                   f"{_spread(during, '.0f', '%'):>22} "
                   f"{_spread([r['victim_p50_ms'] for r in ok], '.1f'):>18} "
                   f"{_spread(after, '.0f', '%'):>14}")
        out.append(f"{'':<10} victim answers per round: {victims}; flood replies: "
                   + "; ".join(", ".join(f"{k} {v}" for k, v in sorted(r["flood_rcodes"].items())) or "none"
                               for r in ok))
    return "\n".join(out)
