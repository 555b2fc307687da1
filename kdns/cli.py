"""The kdns command line: wiring only, no DNS or Kubernetes logic."""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import signal
import sys
import threading
import time

from kdns import __version__, compare, envcli, explaincli, logs, serveargs
from kdns.config import (Config, ConfigError, add_source_args, format_hostport, normalize_zone,
                         parse_hostport, uses_api)
from kdns.forward import ForwardConfigError
from kdns.sources import manifests, reload

log = logging.getLogger("kdns")


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


def cluster_source(args, sink, pods: bool):
    """A started-later ClusterSource for --kubeconfig/--context/--in-cluster, or an error line."""
    from kdns.sources import cluster       # imports `kubernetes` (slow): only when asked for
    timeouts = cluster.Timeouts(read=args.api_timeout)
    return cluster.ClusterSource(sink, args.kubeconfig, args.context, args.in_cluster, pods=pods,
                                 timeouts=timeouts, labels=getattr(args, "labels", None),
                                 endpoints=not getattr(args, "noendpoints", False))


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdns", description="Cluster DNS for Kubernetes Service discovery")
    parser.add_argument("--version", action="version", version=f"kdns {__version__}")
    add_log_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="answer DNS for a cluster over UDP and TCP")
    s.add_argument("--corefile", default=None, metavar="FILE",
                   help="configure from a CoreDNS Corefile (`kdns corefile FILE` shows how); "
                        "flags given here win over the Corefile's")
    s.add_argument("--kube-dns-configmap", default=None, metavar="FILE",
                   help="a kube-dns ConfigMap (YAML or JSON): data.stubDomains, "
                        "data.upstreamNameservers")
    add_source_args(s)
    s.add_argument("--listen", action="append", type=_listen, default=[], metavar="HOST:PORT",
                   help="UDP and TCP address; repeatable; default 127.0.0.1:5353; [::1]:5353 for IPv6")
    s.add_argument("--domain", default="cluster.local", help="cluster domain (default cluster.local)")
    s.add_argument("--ttl", type=int, default=5, help="TTL of cluster records, 0-3600 (default 5)")
    s.add_argument("--pods", default="insecure", choices=["disabled", "insecure", "verified"],
                   help="pod records <a-b-c-d>.<ns>.pod.<zone> (default insecure, as kubeadm)")
    s.add_argument("--endpoint-pod-names", action="store_true",
                   help="name endpoints without a hostname by their pod name, not their dashed IP")
    s.add_argument("--publish-not-ready", action="store_true",
                   help="also publish not-ready endpoints of Services with publishNotReadyAddresses")
    s.add_argument("--pod-ip", default="", metavar="IP",
                   help="this server's pod IP: the Service whose endpoints hold it is the apex NS")
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
    add_log_args(s)
    add_log_args(envcli.add_parser(sub))
    add_log_args(compare.add_parser(sub))
    add_log_args(explaincli.add_parser(sub))
    c = sub.add_parser("corefile", help="print the kdns serve command line a Corefile means")
    c.add_argument("file", metavar="FILE")
    add_log_args(c)
    return parser


def add_log_args(p: argparse.ArgumentParser, top: bool = False) -> None:
    """--log-level and --log-format, before or after the subcommand (``kdns serve --log-level
    debug`` and ``kdns --log-level debug serve`` are the same; the later one wins)."""
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    p.add_argument("--log-level", default=default("info"), choices=logs.LEVELS,
                   help="least severe level logged (default info)")
    p.add_argument("--log-format", default=default("text"), choices=logs.FORMATS,
                   help="text: timestamp, [LEVEL], message; json: one object per line (default text)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.command == "corefile":
        return serveargs.print_corefile(args.file)
    if args.command == "serve":
        if args.corefile or args.kube_dns_configmap:
            args = serveargs.with_translation(args, list(sys.argv[1:] if argv is None else argv),
                                              build_parser)
            if args is None:
                return 2
        return serve(args)
    if args.command == "env":
        return envcli.run(args)
    if args.command == "compare":
        return compare.run(args, envcli.load_cluster)
    if args.command == "explain":
        return explaincli.run(args)
    return 2


def _config(args) -> Config:
    listen = tuple(args.listen) or (("127.0.0.1", 5353),)
    ns_addresses = tuple(h for h, _ in listen if h not in ("0.0.0.0", "::"))
    if args.no_fallthrough:
        fallthrough: tuple[str, ...] = ()
    elif args.fallthrough is None:
        fallthrough = ("in-addr.arpa", "ip6.arpa")
    else:
        zones = [z for group in args.fallthrough for z in group]
        fallthrough = tuple(normalize_zone(z, "--fallthrough", root_ok=True) for z in zones) or ("",)
    namespaces = None
    if args.namespaces is not None:
        namespaces = frozenset(n.strip() for n in args.namespaces.split(",") if n.strip())
        if not namespaces:
            raise ConfigError("--namespaces '': name at least one namespace")
    if args.labels is not None:
        from kdns import selector
        selector.parse(args.labels)             # a bad selector stops startup, named
    return Config(domain=normalize_zone(args.domain), ttl=args.ttl, pods=args.pods,
                  endpoint_pod_names=args.endpoint_pod_names, publish_not_ready=args.publish_not_ready,
                  listen=listen, service_cidr=args.service_cidr, pod_ip=args.pod_ip,
                  ns_addresses=ns_addresses, cache_size=args.cache_size,
                  udp_batch=args.udp_batch, loadbalance=args.loadbalance,
                  extra_zones=tuple(normalize_zone(z, "--zone") for z in args.zone),
                  namespaces=namespaces, ignore_empty_service=args.ignore_empty_service,
                  noendpoints=args.noendpoints, fallthrough=fallthrough,
                  tcp_idle_timeout=args.tcp_idle_timeout,
                  tcp_message_timeout=args.tcp_message_timeout,
                  tcp_max_connections=args.tcp_connections,
                  tcp_max_per_client=args.tcp_max_per_client if args.tcp_max_per_client is not None
                  else min(32, args.tcp_connections))


def _load_manifests(paths, service_cidr, sink, interval, derive=None, labels=None):
    """The manifests, and the Watcher that reloads them (on SIGHUP only, with --reload 0)."""
    derive = derive or manifests.workloads.Options()
    try:
        return reload.Watcher.loaded(paths, service_cidr, sink, interval, derive, labels)
    except manifests.ManifestError as exc:
        for line in exc.problems:
            print(f"kdns: {line}", file=sys.stderr)
        print(f"kdns: {len(exc.problems)} problem(s) in the manifests; nothing served", file=sys.stderr)
        return None


def _pause_gc(limit: float | None = None) -> None:
    """No cyclic GC during the big initial load: it builds ~a million objects that all live
    on (and hold no cycles), and each full collection would walk all of them again (measured:
    ~1 s of a 10,000-Service cold start). _settle_memory turns it back on; ``limit`` seconds
    is the longest it stays off (an API that never lists fully must not leak cycles forever)."""
    gc.disable()
    if limit is not None:
        timer = threading.Timer(limit, gc.enable)
        timer.daemon = True
        timer.start()


def _settle_memory() -> None:
    """After the big initial load: hand freed heap back to the OS, and move everything that
    lives on into the GC's permanent generation, so that no full collection ever walks the
    whole zone again (a pause of ~100 ms per 10,000 services, taken by the UDP loop too)."""
    gc.collect()
    gc.freeze()
    gc.enable()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)     # glibc only; elsewhere RSS just stays higher
    except (OSError, AttributeError):
        pass


class _SettleAfterFirstSync:
    """The Store as the API source's Sink, settling memory once the first full listing is in
    (the API counterpart of what serve does after loading manifests)."""

    def __init__(self, store):
        self.store = store
        self.settled = False

    def reset(self, cluster, synced: bool = True) -> None:
        self.store.reset(cluster, synced)
        if synced and not self.settled:
            self.settled = True
            _settle_memory()

    def apply(self, op, obj) -> None:
        self.store.apply(op, obj)

    def set_synced(self, synced: bool) -> None:
        self.store.set_synced(synced)


SWITCH_INTERVAL = 0.0005     # seconds; CPython's default is 0.005 (see serve)


def serve(args) -> int:
    from kdns import tcp
    from kdns.server import Server
    from kdns.sockets import ListenError
    from kdns.snapshot import Store

    # The UDP loop gives up the GIL at every recvmmsg/sendmmsg; a watch thread decoding a burst
    # of events then keeps it for the whole switch interval (5 ms by default) before the loop
    # may answer its next batch. A shorter interval bounds that wait (a convoy that cut hot QPS
    # under churn far more than the events' own CPU did).
    # Measured with the churn benchmark (1,000 Services, 100 EndpointSlice changes/s, same
    # minute): hot QPS 0.54x of rest at 5 ms, 0.94x at 0.5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL)

    try:
        config = _config(args)
        rewrites = serveargs.rewrites(args)
    except ConfigError as exc:
        print(f"kdns: {exc}", file=sys.stderr)
        return 2
    problems = serveargs.forward_problems(args, config.zones)
    if problems:
        for line in problems:
            print(f"kdns: {line}", file=sys.stderr)
        return 2
    hosts = None
    if args.hosts or args.hosts_entry:
        from kdns import hosts as hostsfile
        try:
            hosts = hostsfile.load(args.hosts, args.hosts_entry)
        except hostsfile.HostsError as exc:
            for line in exc.problems:
                print(f"kdns: {line}", file=sys.stderr)
            return 2
    # Handlers first: a SIGTERM that arrives while starting up still means a clean exit 0.
    # A handler only appends to a list; pump() acts on it from _wait's slices on the main
    # thread. A handler that took a lock (Event.set, logging) can interrupt its own thread while
    # it holds that very lock: two SIGHUPs in a row deadlocked kdns that way.
    stop, again = threading.Event(), threading.Event()
    signals: list[int] = []
    pending: list[int] = []

    source = watcher = None

    def on_any(signum, _frame):
        pending.append(signum)

    def pump() -> None:
        while pending:
            signum = pending.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                signals.append(signum)
                (stop if len(signals) == 1 else again).set()
            elif signum == signal.SIGHUP:
                # "Re-read your configuration" by convention, and what a closing terminal
                # sends: never a reason to stop serving.
                if watcher is not None:
                    log.info("SIGHUP: re-reading the manifests")
                    watcher.trigger()
                else:
                    log.info("SIGHUP: nothing to re-read (the API is watched, not read once)")
            elif signum == signal.SIGUSR1:
                log.info("SIGUSR1: serving snapshot %d (%d services), %d TCP connections",
                         store.holder.current.version, len(store.cluster.services),
                         server.tcp.connections() if server is not None and server.tcp is not None else 0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, on_any)
    server = None
    try:
        derive = manifests.workloads.Options.from_args(args)
    except ValueError as exc:
        print(f"kdns: {exc}", file=sys.stderr)
        return 2
    store = Store(config)
    if hosts is not None:
        store.set_hosts(hosts)
    hosts_watcher = None
    if args.hosts and args.reload > 0:
        from kdns import hosts as hostsfile
        hosts_watcher = hostsfile.Watcher(args.hosts, tuple(args.hosts_entry), store.set_hosts,
                                          args.reload)
    if uses_api(args):
        from kdns.sources.cluster import ClusterError
        sink = _SettleAfterFirstSync(store)
        if args.manifests:
            # Static objects beside the live cluster's: the API's win a conflict (overlay).
            from kdns.sources.overlay import Overlay
            where = ", ".join(args.manifests)
            loaded = _load_manifests(args.manifests, config.service_cidr, None, args.reload,
                                     derive, args.labels)
            if loaded is None:
                return 2
            overlay = Overlay(sink, loaded[1], where)
            watcher = loaded[0]
            if watcher is not None:
                watcher.sink = overlay.static
            overlay.static.reset(loaded[1], True)
            sink = overlay.api
        try:
            source = cluster_source(args, sink, pods=config.pods == "verified")
        except ClusterError as exc:
            print(f"kdns: {exc}", file=sys.stderr)
            return 2
    else:
        paths = args.manifests or manifests.default_paths()
        _pause_gc()
        loaded = _load_manifests(paths, config.service_cidr, store, args.reload, derive, args.labels)
        if loaded is None:
            return 2
        watcher, cluster = loaded
        store.reset(cluster, synced=True)
        del cluster
        _settle_memory()
    limits = tcp.Limits(idle_timeout=config.tcp_idle_timeout,
                        message_timeout=config.tcp_message_timeout,
                        max_connections=config.tcp_max_connections,
                        max_per_client=config.tcp_max_per_client)
    server = Server(store.holder, config.listen, config.cache_size, batch=config.udp_batch,
                    loadbalance=config.loadbalance, rewrites=rewrites,
                    tcp_limits=limits)
    try:
        bound = server.bind()
    except ListenError as exc:
        print(f"kdns: {exc.strerror}", file=sys.stderr)
        return 1
    if args.log_queries:
        from kdns import querylog
        querylog.install(server, args.log_format)
    try:
        server.forwarder = serveargs.forwarding(args, bound, config.cache_size, config.zones)
    except (ForwardConfigError, ConfigError) as exc:
        print(f"kdns: {exc}", file=sys.stderr)
        server.close()
        return 2
    status, web = _start_http(args, server, store.holder, source.waiting_for if source else None,
                              source.problem if source else None,
                              lambda: (source.failed() if source else None)
                              or (watcher.failed() if watcher else None))
    if status is None:
        server.close()
        return 1
    if watcher is not None:
        watcher.start()
    if hosts_watcher is not None:
        hosts_watcher.start()
    server.start()
    if source is not None:
        # Until the first full listing, cluster names answer SERVFAIL (the Store starts unsynced).
        _pause_gc(limit=60.0)
        source.start()
        log.info("serving %s and the reverse zones from the API at %s", config.domain, source.host)
    else:
        log.info("serving %s and the reverse zones: %d services, %d namespaces, from %s",
                 config.domain, len(store.cluster.services), len(store.cluster.namespaces),
                 ", ".join(str(p) for p in paths))
        if not args.manifests and os.environ.get("KUBECONFIG"):
            log.warning("$KUBECONFIG is set, but without --kubeconfig, --context or --in-cluster "
                        "kdns serves the embedded example cluster; to serve your cluster: "
                        "kdns serve --kubeconfig \"$KUBECONFIG\"")
    for host, port in bound:
        log.info("listening on %s (udp, tcp)", format_hostport(host, port))
    looped: list[str] = []
    if server.forwarder is not None:
        # Like CoreDNS's loop plugin: a forwarding loop is fatal, loudly, rather than a slow
        # storm of queries circling until every client times out.
        server.forwarder.start_loop_probe(lambda msg: (looped.append(msg), stop.set()))
    _wait(stop, pump=pump)
    if looped:
        print(f"kdns: {looped[0]}", file=sys.stderr)
        if source is not None:
            source.stop()
        if web:
            web.close()
        server.close()
        return 1
    # Ctrl-C on a kdns run by hand: no Service routes to it (no --http, no probes), so a
    # lameduck would only keep the terminal waiting.
    interactive = signals[:1] == [signal.SIGINT] and not args.http
    _lameduck(status, 0 if interactive else args.lameduck, again, pump)
    if hosts_watcher:
        hosts_watcher.stop()
    if watcher:
        watcher.stop()
    if source is not None:
        source.stop()
    if web:
        web.close()
    server.close()
    log.info("stopped")
    return 0


def _start_http(args, server, holder, waiting_for=None, problem=None, failed=None):
    """The /health, /ready, /metrics endpoints when --http is given: (Status, HTTP or None);
    (None, None) when the address cannot be bound."""
    from kdns import http, metrics

    status = http.Status(lambda: holder.current, waiting_for, problem, failed)
    if not args.http:
        return status, None
    metrics.register(metrics.QueryCollector(server.stats, lambda: holder.current, status.ready,
                                            server.cache_entries, server.cache_cells))
    metrics.register(metrics.TCPCollector(
        lambda: server.tcp.connections() if server.tcp is not None else 0,
        lambda: dict(server.tcp.closed_by_limit) if server.tcp is not None else {}))
    webs = _Webs()
    # The same address twice is one server (health and ready on one port); port 0 is a new one.
    for address in [a for i, a in enumerate(args.http) if a[1] == 0 or a not in args.http[:i]]:
        web = http.HTTP(address, status, metrics.REGISTRY)
        try:
            host, port = web.start()
        except OSError as exc:
            print(f"kdns: cannot serve http on {format_hostport(*address)}: {exc.strerror or exc}",
                  file=sys.stderr)
            webs.close()
            return None, None
        webs.append(web)
        log.info("http on %s (/health, /ready, /metrics)", format_hostport(host, port))
    return status, webs


class _Webs(list):
    """The HTTP servers of every --http address, closed together."""

    def close(self) -> None:
        for web in self:
            web.close()


def _lameduck(status, seconds: float, again: threading.Event, pump=None) -> None:
    """/ready goes 503 at once; DNS keeps answering while the endpoint removal reaches every
    kube-proxy, so no client is sent to a server that has already gone (CoreDNS health lameduck)."""
    status.lameduck = True
    if seconds > 0:
        log.info("lameduck: not ready, still answering for %gs (signal again to stop now)", seconds)
        _wait(again, seconds, pump)


def _wait(event: threading.Event, seconds: float | None = None, pump=None) -> None:
    """Wait for a signal-set event in short slices, acting on signals (``pump``) between them.
    The kernel may deliver SIGTERM to any thread (a UDP loop in recvfrom, say); Python then runs
    the handler only when the main thread next runs bytecode, which an untimed wait never does,
    so a plain ``event.wait()`` can miss it."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        if pump is not None:
            pump()
        if event.is_set():
            return
        left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
        if left <= 0:
            return
        event.wait(left)
