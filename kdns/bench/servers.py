"""The servers under test: kdns and its peers, each configured to serve the same records.

Each builder writes its config into a temp directory and returns a ``Spec`` (argv plus the
question that proves it is ready); ``Running`` starts one, waits for its first good answer, reads
its RSS and stops it. Everything listens on 127.0.0.1 high ports. A peer whose binary is not
installed is skipped with a note, never an error.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from kdns.bench.cluster import DOMAIN, REVERSE_ZONE, Record

REPO = Path(__file__).resolve().parent.parent.parent


class Unavailable(Exception):
    """A peer that cannot run here (not installed, does not build)."""


@dataclass
class Spec:
    name: str
    argv: list[str]
    probe: tuple[str, str]                   # (qname, qtype) answered NOERROR once ready
    port: int
    note: str = ""
    cwd: Path | None = None
    env: dict[str, str] | None = None
    ready_timeout: float = 30.0


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            if port < 20000:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


# --------------------------------------------------------------------------- running

def rss_kb(pid: int) -> int:
    """Resident set of a process and all its descendants, in KiB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def ask(port: int, qname: str, qtype: str, timeout: float = 0.5, *,
        tcp_fallback: bool = False) -> dns.message.Message | None:
    """One question over UDP (as a pod asks it: RD set, no EDNS); on TC, retry over TCP when
    ``tcp_fallback``, as a stub resolver would."""
    q = dns.message.make_query(qname, qtype)
    try:
        if tcp_fallback:
            return dns.query.udp_with_fallback(q, "127.0.0.1", port=port, timeout=timeout)[0]
        return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return None


class Running:
    """One started server; a context manager that always stops what it started."""

    def __init__(self, spec: Spec, logdir: Path):
        self.spec = spec
        self.log_path = logdir / f"{spec.name}.log"
        self.proc: subprocess.Popen | None = None
        self.ready_after: float | None = None

    def __enter__(self) -> "Running":
        log = self.log_path.open("wb")
        env = dict(os.environ, **(self.spec.env or {}))
        started = time.monotonic()
        self.proc = subprocess.Popen(self.spec.argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.spec.cwd, env=env,
                                     start_new_session=True)
        log.close()
        try:
            self.ready_after = self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self, started: float) -> float:
        qname, qtype = self.spec.probe
        deadline = started + self.spec.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"{self.spec.name} exited with {self.proc.returncode}: {self.log_tail()}")
            r = ask(self.spec.port, qname, qtype, timeout=0.2)
            if r is not None and r.rcode() == dns.rcode.NOERROR and r.answer:
                return time.monotonic() - started
            time.sleep(0.05)
        raise Unavailable(f"{self.spec.name} not ready after {self.spec.ready_timeout:.0f} s "
                          f"(no answer to {qname} {qtype}): {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid) if self.proc and self.proc.poll() is None else 0

    def cpu_ticks(self) -> int:
        """utime + stime of the server process (all its threads), in clock ticks."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            return 0

    def quiesce(self, limit: float = 30.0) -> float:
        """Wait until the server stops burning CPU (a slow server is still draining the queries
        dnsperf gave up on), so its backlog does not eat into the next run. Returns the wait."""
        started = time.monotonic()
        last = self.cpu_ticks()
        while time.monotonic() - started < limit:
            time.sleep(0.25)
            now = self.cpu_ticks()
            if now - last <= 1:                  # <= 1 tick in 250 ms: idle
                break
            last = now
        return time.monotonic() - started

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Our own child, started in its own session: signal exactly its process group.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def start(make_spec, logdir: Path, tries: int = 3) -> Running:
    """Start the server ``make_spec()`` describes; a fresh port on "address already in use".
    free_port() only finds a port free now: kdns binds after loading its data (minutes at 10k
    services on a busy machine), and another tenant's test may take the port meanwhile."""
    for attempt in range(tries):
        try:
            return Running(make_spec(), logdir).__enter__()
        except Unavailable as exc:
            if "in use" not in str(exc) or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- kdns

_HELP: list[str] = []


def kdns_accepts(flag: str) -> bool:
    """Whether this checkout's ``kdns serve`` has ``flag`` (the harness outlives flag changes)."""
    if not _HELP:
        out = subprocess.run([sys.executable, "-m", "kdns", "serve", "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=30)
        _HELP.append(out.stdout)
    return flag in _HELP[0]


def kdns(manifests: Path | None, port: int, probe: tuple[str, str], upstream: int | None,
         extra: list[str] | None = None, ready_timeout: float = 600.0, name: str = "kdns") -> Spec:
    """This checkout's ``kdns serve`` on 127.0.0.1:port, from ``manifests`` (None: the source
    is in ``extra``, e.g. --kubeconfig)."""
    source = ["--manifests", str(manifests)] if manifests is not None else []
    argv = [sys.executable, "-m", "kdns", "serve", *source, "--listen", f"127.0.0.1:{port}",
            *(extra or [])]
    note = ""
    if upstream is not None:
        if kdns_accepts("--upstream"):
            argv += ["--upstream", f"127.0.0.1:{upstream}"]
        else:
            note = "this kdns has no --upstream: external names answer REFUSED"
    elif kdns_accepts("--resolv-conf"):
        argv += ["--resolv-conf", ""]        # no forwarding to the host's resolvers: 127.0.0.1 only
    env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return Spec(name, argv, probe, port, note, cwd=REPO, env=env, ready_timeout=ready_timeout)


# --------------------------------------------------------------------------- dnsmasq

def _need(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if not path:
        raise Unavailable(f"{binary} is not installed")
    return path


def _hosts_lines(records: list[Record]) -> list[str]:
    """hosts(5) lines. dnsmasq derives PTRs from these, taking the first name listed for an
    address, so the PTR target of each address (the endpoint or service name) comes first."""
    lines, seen = [], set()
    for r in records:
        if r.type == "PTR":
            ip = _ptr_ip(r.name)
            lines.append(f"{ip} {r.data.rstrip('.')}")
            seen.add((r.data, ip))
    for r in records:
        if r.type == "A" and (r.name, r.data) not in seen:
            lines.append(f"{r.data} {r.name.rstrip('.')}")
    return lines


def _ptr_ip(name: str) -> str:
    return ".".join(reversed(name.rstrip(".").split(".")[:4]))


def dnsmasq(tmp: Path, name: str, records: list[Record], port: int, probe: tuple[str, str],
            *, srv: bool, upstream: int | None) -> Spec:
    binary = _need("dnsmasq")
    d = tmp / name
    d.mkdir(exist_ok=True)
    hosts = d / "hosts"
    hosts.write_text("\n".join(_hosts_lines(records)) + "\n")
    conf = [f"port={port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
            f"addn-hosts={hosts}", f"local=/{DOMAIN}/", f"local=/{REVERSE_ZONE}/", "local-ttl=5",
            "cache-size=10000", "user=root", "pid-file=", "log-facility=-"]
    if upstream is not None:
        conf.append(f"server=127.0.0.1#{upstream}")
    if srv:
        for r in records:
            if r.type == "SRV":
                prio, weight, p, target = r.data.split()
                conf.append(f"srv-host={r.name.rstrip('.')},{target.rstrip('.')},{p},{prio},{weight}")
    path = d / "dnsmasq.conf"
    path.write_text("\n".join(conf) + "\n")
    what = "addn-hosts (A, PTR) + srv-host lines" if srv else "addn-hosts only (A, PTR; no SRV)"
    return Spec(name, [binary, "-k", f"--conf-file={path}"], probe, port, what, ready_timeout=120)


def upstream_dnsmasq(tmp: Path, port: int, external: dict[str, tuple[str, str]]) -> Spec:
    """The "internet" for workload (b): a dnsmasq holding the external names."""
    binary = _need("dnsmasq")
    d = tmp / "upstream"
    d.mkdir(exist_ok=True)
    conf = [f"port={port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
            "user=root", "pid-file=", "log-facility=-", "local-ttl=300", "cache-size=1000"]
    conf += [f"host-record={n.rstrip('.')},{v4},{v6}" for n, (v4, v6) in external.items()]
    # Everything else the walk might leak upstream: authoritative NXDOMAIN, not REFUSED.
    conf.append("local=/#/")
    path = d / "dnsmasq.conf"
    path.write_text("\n".join(conf) + "\n")
    first = next(iter(external))
    return Spec("upstream", [binary, "-k", f"--conf-file={path}"], (first, "A"), port)


# --------------------------------------------------------------------------- unbound

def unbound(tmp: Path, records: list[Record], port: int, probe: tuple[str, str],
            upstream: int | None) -> Spec:
    binary = _need("unbound")
    d = tmp / "unbound"
    d.mkdir(exist_ok=True)
    conf = ["server:", "  interface: 127.0.0.1", f"  port: {port}", "  do-ip6: no",
            '  chroot: ""', '  username: ""', '  pidfile: ""', f'  directory: "{d}"',
            "  use-syslog: no", '  logfile: ""', "  verbosity: 0", "  num-threads: 1",
            "  do-not-query-localhost: no", "  access-control: 127.0.0.0/8 allow",
            "  module-config: \"iterator\"", "  qname-minimisation: no",
            "  msg-cache-size: 64m", "  rrset-cache-size: 128m",
            f'  local-zone: "{DOMAIN}." static', f'  local-zone: "{REVERSE_ZONE}." static']
    for r in records:
        conf.append(f'  local-data: "{r.name} 5 IN {r.type} {r.data}"')
    if upstream is not None:
        conf += ["forward-zone:", '  name: "."', f"  forward-addr: 127.0.0.1@{upstream}"]
    path = d / "unbound.conf"
    path.write_text("\n".join(conf) + "\n")
    return Spec("unbound", [binary, "-d", "-c", str(path)], probe, port,
                "local-data (SRV without additional A), num-threads 1", ready_timeout=300)


# --------------------------------------------------------------------------- knot

def knot(tmp: Path, records: list[Record], port: int, probe: tuple[str, str]) -> Spec:
    binary = _need("knotd")
    d = tmp / "knot"
    (d / "db").mkdir(parents=True, exist_ok=True)
    zones = {DOMAIN: [], REVERSE_ZONE: []}
    for r in records:
        zone = REVERSE_ZONE if r.type == "PTR" else DOMAIN
        zones[zone].append(f"{r.name} 5 IN {r.type} {r.data}")
    for zone, lines in zones.items():
        head = [f"$ORIGIN {zone}.", f"@ 5 IN SOA ns.dns.{DOMAIN}. hostmaster.{DOMAIN}. 1 7200 1800 86400 5",
                f"@ 5 IN NS ns.dns.{DOMAIN}."]
        if zone == DOMAIN:
            head.append(f"ns.dns.{DOMAIN}. 5 IN A 127.0.0.1")
        (d / f"{zone}.zone").write_text("\n".join(head + lines) + "\n")
    conf = f"""server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "{d / 'db'}"
template:
  - id: default
    storage: "{d}"
    file: "%s.zone"
    journal-content: none
    zonefile-sync: -1
    semantic-checks: off
zone:
  - domain: {DOMAIN}
  - domain: {REVERSE_ZONE}
"""
    path = d / "knot.conf"
    path.write_text(conf)
    return Spec("knot", [binary, "-c", str(path)], probe, port,
                "authoritative only (external names REFUSED), udp-workers 1", ready_timeout=300)


# --------------------------------------------------------------------------- ceiling

CEILING_C = r"""
/* The practical ceiling: answer every query with one fixed A record, no parsing beyond
   finding the end of the question. Built by kdns.bench at run time. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const unsigned char rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 127, 0, 0, 1};

int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    unsigned char buf[600];
    for (;;) {
        struct sockaddr_in c;
        socklen_t cl = sizeof c;
        ssize_t n = recvfrom(s, buf, 512, 0, (struct sockaddr *)&c, &cl);
        if (n < 17) continue;
        ssize_t i = 12;
        while (i < n && buf[i]) i += buf[i] + 1;
        i += 5;                                    /* root label, QTYPE, QCLASS */
        if (i > n) continue;
        buf[2] = 0x84 | (buf[2] & 0x01);           /* QR AA, RD copied */
        buf[3] = 0;
        buf[6] = 0; buf[7] = 1;                    /* ANCOUNT 1, the rest 0 (EDNS dropped) */
        memset(buf + 8, 0, 4);
        memcpy(buf + i, rr, sizeof rr);
        sendto(s, buf, i + sizeof rr, 0, (struct sockaddr *)&c, cl);
    }
}
"""


def ceiling(tmp: Path, port: int) -> Spec:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise Unavailable("no C compiler (gcc) for the fixed-answer ceiling")
    d = tmp / "ceiling"
    d.mkdir(exist_ok=True)
    (d / "ceiling.c").write_text(CEILING_C)
    out = subprocess.run([gcc, "-O2", "-o", str(d / "ceiling"), str(d / "ceiling.c")],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise Unavailable(f"the ceiling does not build: {out.stderr.strip()[:200]}")
    return Spec("ceiling", [str(d / "ceiling"), str(port)], (f"ceiling.{DOMAIN}.", "A"), port,
                "C, one fixed A answer to every query (answers not checked)")
