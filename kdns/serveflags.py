"""`kdns serve`'s own flags: where it listens, runs under an orchestrator, forwards and holds
TCP clients. Argparse wiring only (the kubernetes plugin's options, hosts and rewrite are
kdns.serveargs'; answer shaping shared with `kdns explain` is kdns.config's)."""

from __future__ import annotations

import argparse

from kdns import serveargs
from kdns.config import ConfigError, add_answer_args, add_source_args, parse_hostport


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text, 53)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _http(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text, 8080)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0-3600 seconds")
    return value


def add_ops_args(p: argparse.ArgumentParser) -> None:
    """Running under an orchestrator: probes, metrics, graceful shutdown (docs/ops.md)."""
    p.add_argument("--http", type=_http, action="append", default=[], metavar="HOST:PORT",
                   help="serve /health, /ready and /metrics here (default: off); port 0 picks one; "
                        "repeatable (a Corefile's health, ready and prometheus ports)")
    p.add_argument("--lameduck", type=_seconds, default=5.0, metavar="SECONDS",
                   help="after SIGTERM or SIGINT, report not ready but keep answering DNS this long, "
                        "then exit 0; a second signal ends it at once (default 5)")



def _duration(text: str) -> float:
    """'3600', '90s', '30m', '1h', '7d' -> seconds (CoreDNS's serve_stale DURATION)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    scale = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 30 * 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration like 3600, 30m, 1h or 1d "
                                         "(at most 30d; 0 = off)")
    return value


def _count(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {low}-{high}")
        return value
    return parse


def _cidr(text: str) -> str:
    from kdns.forward.acl import AllowError, parse_cidr
    try:
        return str(parse_cidr(text))
    except AllowError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_forward_args(p: argparse.ArgumentParser) -> None:
    """Where names outside our zones go (docs/forwarding.md)."""
    from kdns.forward import DEFAULT_ALLOW, MAX_CLIENT_FORWARDS, MAX_CONCURRENT, POLICIES

    p.add_argument("--upstream", action="append", type=_listen, default=[], metavar="HOST[:PORT]",
                   help="resolver for names outside the cluster zones; repeatable; default: the "
                        "nameservers of --resolv-conf")
    p.add_argument("--policy", choices=POLICIES, default="sequential",
                   help="order the upstreams are asked in, healthy ones first: sequential (as "
                        "given), round_robin, random (default sequential)")
    p.add_argument("--allow", action="append", type=_cidr, default=[], metavar="CIDR",
                   help="clients that may have names outside the cluster zones forwarded; "
                        "repeatable; others get REFUSED for them (cluster names stay open); "
                        f"default: loopback and private ranges ({', '.join(DEFAULT_ALLOW)})")
    p.add_argument("--max-concurrent", type=_count(1, 100000), default=MAX_CONCURRENT, metavar="N",
                   help="queries in flight per upstream; beyond, SERVFAIL at once (CoreDNS forward "
                        f"max_concurrent; default {MAX_CONCURRENT})")
    p.add_argument("--max-client-forwards", type=_count(1, 100000), default=MAX_CLIENT_FORWARDS,
                   metavar="N", help="forwarded queries outstanding per client address; beyond, "
                                     f"SERVFAIL at once (default {MAX_CLIENT_FORWARDS})")
    p.add_argument("--serve-stale", type=_duration, default=0.0, metavar="DURATION",
                   help="when no upstream answers, serve an answer expired up to this long ago, "
                        "with TTL 30 (RFC 8767); like 1h or 86400 (default 0: off)")
    p.add_argument("--resolv-conf", default=None, metavar="PATH",
                   help="read upstreams from this file's nameserver lines when no --upstream is "
                        "given (default /etc/resolv.conf); '' = no forwarding (REFUSED)")
    p.add_argument("--cache-ttl", type=serveargs.ttl, default=3600, metavar="SECONDS",
                   help="longest TTL a forwarded answer is cached and served with (CoreDNS cache "
                        "TTL; default 3600)")
    p.add_argument("--cache-denial-ttl", type=serveargs.ttl, default=None, metavar="SECONDS",
                   help="the same for negative answers (NXDOMAIN, NODATA); default: --cache-ttl, "
                        "at most 1800")
    serveargs.add_zone_forward_args(p)


def add_tcp_args(p: argparse.ArgumentParser) -> None:
    """What one TCP client may hold (kdns.tcp; README "Limits")."""
    p.add_argument("--tcp-idle-timeout", type=float, default=15.0, metavar="SECONDS",
                   help="close a TCP connection with no query in flight after this long (default "
                        "15: above CoreDNS forward's 10 s pool expiry, so NodeLocal DNSCache closes first)")
    p.add_argument("--tcp-message-timeout", type=float, default=3.0, metavar="SECONDS",
                   help="a whole length-prefixed TCP message must arrive within this long of its "
                        "first byte, or the connection is closed (default 3)")
    p.add_argument("--tcp-connections", "--tcp-max-connections", dest="tcp_connections", type=int,
                   default=256, metavar="N",
                   help="TCP connections in all; past it the oldest idle one is closed to admit a "
                        "new one (default 256; NodeLocal DNSCache: about 4 x nodes / replicas)")
    p.add_argument("--tcp-max-per-client", type=int, default=None, metavar="N",
                   help="TCP connections from one address; past it that client's oldest idle one "
                        "is closed, else the new one (default 32, at most --tcp-connections)")


def add_serve_args(s: argparse.ArgumentParser) -> None:
    """Every flag of `kdns serve` (its --log-* are added by kdns.cli, as for every subcommand)."""
    s.add_argument("--corefile", default=None, metavar="FILE",
                   help="configure from a CoreDNS Corefile (`kdns corefile FILE` shows how); "
                        "flags given here win over the Corefile's")
    s.add_argument("--kube-dns-configmap", default=None, metavar="FILE",
                   help="a kube-dns ConfigMap (YAML or JSON): data.stubDomains, "
                        "data.upstreamNameservers")
    add_source_args(s)
    s.add_argument("--listen", action="append", type=_listen, default=[], metavar="HOST:PORT",
                   help="UDP and TCP address; repeatable; default 127.0.0.1:5353; [::1]:5353 for IPv6")
    add_answer_args(s)
    s.add_argument("--cache-size", type=int, default=20000, metavar="N",
                   help="entries in the packet cache and, separately, in the forwarding cache "
                        "(default 20000)")
    s.add_argument("--udp-batch", type=int, default=64, metavar="N",
                   help="UDP datagrams per recvmmsg/sendmmsg call (default 64); 1 = one "
                        "recvfrom/sendto per query, the loop used where recvmmsg is missing")
    s.add_argument("--loadbalance", action=argparse.BooleanOptionalAction, default=True,
                   help="rotate A/AAAA answers of several records between queries, round robin, "
                        "as CoreDNS's loadbalance (default on; --no-loadbalance: always in "
                        "EndpointSlice order)")
    serveargs.add_cluster_args(s)
    serveargs.add_records_args(s)
    add_tcp_args(s)
    add_forward_args(s)
    s.add_argument("--reload", type=float, default=2.0, metavar="SECONDS",
                   help="poll manifests and --hosts for changes this often; 0 disables (default 2)")
    add_ops_args(s)
    s.add_argument("--log-queries", action="store_true",
                   help="log one line per query in CoreDNS log plugin's format (default off; "
                        "answers through the one-datagram-per-call UDP loop while on)")
