"""`kdns serve`: build the Config, start the source, the DNS server, forwarding and HTTP, wait
for signals, lameduck, stop. Wiring only, no DNS or Kubernetes logic (flags: kdns.serveflags)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from kdns import serveargs
from kdns.config import Config, ConfigError, format_hostport, normalize_zone, uses_api
from kdns.forward import ForwardConfigError
from kdns.memory import SettleAfterFirstSync, pause_gc, settle_memory
from kdns.sources import manifests, reload

log = logging.getLogger("kdns")


def cluster_source(args, sink, pods: bool):
    """A started-later ClusterSource for --kubeconfig/--context/--in-cluster, or an error line."""
    from kdns.sources import cluster       # imports `kubernetes` (slow): only when asked for
    timeouts = cluster.Timeouts(read=args.api_timeout)
    return cluster.ClusterSource(sink, args.kubeconfig, args.context, args.in_cluster, pods=pods,
                                 timeouts=timeouts, labels=getattr(args, "labels", None),
                                 endpoints=not getattr(args, "noendpoints", False),
                                 streaming_list=getattr(args, "api_streaming_list", "off") == "auto")



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


SWITCH_INTERVAL = 0.0005     # seconds; CPython's default is 0.005 (see serve)
# Watch events in a burst share one snapshot publish per this many seconds (Store.coalesce):
# an answer waits at most this long for an event, far inside issue 11's 100 ms p99.
PUBLISH_WINDOW = 0.01


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
        store.coalesce = PUBLISH_WINDOW
        sink = SettleAfterFirstSync(store)
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
        pause_gc()
        loaded = _load_manifests(paths, config.service_cidr, store, args.reload, derive, args.labels)
        if loaded is None:
            return 2
        watcher, cluster = loaded
        store.reset(cluster, synced=True)
        del cluster
        settle_memory()
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
        pause_gc(limit=60.0)
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
