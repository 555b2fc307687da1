"""The Prometheus registry of one kdns process, and the hot path's own plain counters.

Two kinds of counting live here, chosen by how often they happen:

- Rare events (a watch event, a relist, a forwarded query) increment ordinary prometheus-client
  Counters. Sources and the forwarder import this module for them; it imports nothing of the DNS
  core, so the import direction (sources -> objects) stays true.
- Queries are counted by the thread that answers them in ``QueryStats``: plain lists of ints,
  no locks, no prometheus calls. A packet-cache hit bumps one list slot that its cache entry
  carries (``cell[HITS] += 1``); a miss takes the same cell and also feeds a plain-list latency
  histogram. ``QueryCollector`` turns all of it into metric families only when /metrics is
  scraped, so a scrape costs the scraper's thread, not the hot path.

Metric names (all prefixed ``kdns_``) are listed in docs/ops.md.
"""

from __future__ import annotations

import bisect
import os
import platform
import threading
from time import perf_counter

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from kdns import __version__

# A *_created series per counter doubles the scrape for no use to a DNS operator.
disable_created_metrics()
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# ---- for kdns.sources.cluster: one increment per event, so prometheus-client's lock is fine.
WATCH_EVENTS = Counter("kdns_watch_events", "Watch events received from the Kubernetes API, "
                       "by kind (services, endpointslices, namespaces, pods) and event type "
                       "(ADDED, MODIFIED, DELETED, BOOKMARK, ERROR)", ["kind", "type"], registry=REGISTRY)
RELISTS = Counter("kdns_relists", "Full re-listings of one kind from the Kubernetes API, by kind and "
                  "reason (start, gone = 410 Expired, error = after a failed watch)",
                  ["kind", "reason"], registry=REGISTRY)
WATCH_ERRORS = Counter("kdns_watch_errors", "Watch or list requests that failed and were retried "
                       "with backoff, by kind and reason (an HTTP status like 500, or timeout, "
                       "disconnect)", ["kind", "reason"], registry=REGISTRY)

# ---- for kdns.forward: one increment per upstream exchange (the slow path). The names are
# CoreDNS forward plugin's (coredns_forward_*), so its dashboards carry over; ``to`` is host:port.
# CoreDNS's plugin.TimeBuckets: 0.25 ms doubling to 8 s.
FORWARD_BUCKETS = tuple(0.00025 * 2 ** i for i in range(16))
FORWARD_REQUESTS = Counter("kdns_forward_requests", "Queries sent to an upstream, by upstream",
                           ["to"], registry=REGISTRY)
FORWARD_RESPONSES = Counter("kdns_forward_responses", "Upstream replies and failed exchanges, by "
                            "rcode (NOERROR, NXDOMAIN, ... or timeout, error, mismatch) and upstream",
                            ["rcode", "to"], registry=REGISTRY)
FORWARD_DURATION = Histogram("kdns_forward_request_duration_seconds", "Time from sending a query "
                             "to an upstream to its reply, by upstream", ["to"],
                             buckets=FORWARD_BUCKETS, registry=REGISTRY)
FORWARD_HEALTHCHECK_FAILURES = Counter("kdns_forward_healthcheck_failures", "Health probes of a "
                                       "down upstream that failed, by upstream", ["to"],
                                       registry=REGISTRY)
FORWARD_SHED = Counter("kdns_forward_shed", "Forwarded queries answered SERVFAIL at once, by reason "
                       "(client: the client's --max-client-forwards; upstream: every upstream at "
                       "--max-concurrent)", ["reason"], registry=REGISTRY)
FORWARD_REFUSED = Counter("kdns_forward_refused", "Queries for forwarded names REFUSED because the "
                          "client is outside --allow", registry=REGISTRY)
FORWARD_STALE = Counter("kdns_forward_stale_answers", "Expired answers served with TTL 30 because "
                        "no upstream answered (--serve-stale, RFC 8767)", registry=REGISTRY)
FORWARD_INFLIGHT = Gauge("kdns_forward_inflight", "Queries in flight at an upstream, by upstream",
                         ["to"], registry=REGISTRY)
FORWARD_HEALTHY = Gauge("kdns_forward_upstream_healthy", "1 while an upstream is healthy, 0 while it "
                        "is marked down and probed, by upstream", ["to"], registry=REGISTRY)

# An upstream may serve several zones (the default upstreams and a stub domain's, each its own
# Forwarder): its gauges stay one series per ``to``, their owners' readings combined (in-flight
# counts add; healthy is 1 only while no owner has it marked down).
_SHARED: dict[tuple[int, str], dict[int, object]] = {}
_SHARED_LOCK = threading.Lock()


def shared_gauge(gauge: Gauge, to: str, owner: object, read, combine) -> None:
    """``gauge{to}`` reads ``combine(read() of every owner of it)`` from now on."""
    key = (id(gauge), to)
    with _SHARED_LOCK:
        readers = _SHARED.setdefault(key, {})
        readers[id(owner)] = read
        gauge.labels(to).set_function(lambda: combine([r() for r in list(readers.values())]))


def unshare_gauge(gauge: Gauge, to: str, owner: object) -> None:
    """``owner`` reads ``gauge{to}`` no more (a closed Forwarder); the others' still count."""
    with _SHARED_LOCK:
        readers = _SHARED.get((id(gauge), to), {})
        readers.pop(id(owner), None)


# ---- for kdns.sources.manifests: a reload whose files did not load (CoreDNS reload's counter).
RELOAD_FAILED = Counter("kdns_reload_failed", "Manifest reloads that failed (bad files); the last "
                        "good data stays served", registry=REGISTRY)

# ---- for kdns.snapshot's writers: from the API's endpoints.kubernetes.io/last-change-trigger-time
# to the change being served (the Kubernetes DNS programming latency SLI, as CoreDNS exports it).
PROGRAMMING_BOUNDS = tuple(0.001 * 2 ** i for i in range(20))      # 1 ms to ~17 min, as CoreDNS
PROGRAMMING = Histogram("kdns_kubernetes_dns_programming_duration_seconds",
                        "Time from an EndpointSlice's last-change-trigger-time to its change being "
                        "served, by service_kind (cluster_ip, headless_with_selector)",
                        ["service_kind"], buckets=PROGRAMMING_BOUNDS, registry=REGISTRY)

# ---- the hot path

# Label values must be bounded whatever clients send: rare or unknown types count as "other"
# (CoreDNS's monitored types, plugin/metrics/vars/monitor.go).
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
          33: "SRV", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 64: "SVCB",
          65: "HTTPS", 252: "AXFR", 251: "IXFR", 255: "ANY"}
RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
          "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15")

# CoreDNS's buckets, so that dashboards and alerts written for it read kdns the same way:
# plugin.TimeBuckets (0.25 ms doubling to 8 s) and the size buckets of plugin/metrics/vars.
DURATION_BOUNDS = tuple(0.00025 * 2 ** i for i in range(16))
SIZE_BOUNDS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)
# Upper bounds (seconds) of the miss-path latency buckets: a local answer takes tens of
# microseconds, a slow one (GIL contention, a large SRV set) a few milliseconds.
LATENCY_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
# kdns is one server block for every name (kubeadm's Corefile is one `.:53` block): CoreDNS labels
# all of its queries zone=".", and so does kdns.
ZONE = "."
# Cells are keyed by exact sizes (so the size histograms' sums are exact); past this many, a
# flood of odd-sized queries is folded into bucket-sized keys instead of growing the dict.
MAX_CELLS = 4096


def labels_of(packet: bytes) -> tuple[str, str, str, bool]:
    """(qtype, rcode, plugin, denial) of a response, read from its bytes, so that every path
    (local answers, upstream answers, rejects) is labelled by what was actually sent.

    plugin is CoreDNS's name for the writer: "kubernetes" for kdns's authoritative answers,
    "forward" for an upstream's (not authoritative, with records), "" for errors kdns wrote
    itself (FORMERR, NOTIMP, REFUSED, shed load); packet-cache hits are "cache" at export.
    denial: NXDOMAIN or NODATA (CoreDNS cache's "denial" type)."""
    n = len(packet)
    rcode = RCODES[packet[3] & 0x0F] if n >= 4 else "FORMERR"
    if n < 12:
        return "none", rcode, "", True
    aa = packet[2] & 0x04
    records = packet[6:12] != b"\0\0\0\0\0\0"
    plugin = "kubernetes" if aa else ("forward" if records else "")
    denial = rcode == "NXDOMAIN" or (rcode == "NOERROR" and packet[6:8] == b"\0\0")
    if packet[4:6] == b"\0\0":
        return "none", rcode, plugin, denial
    i = 12
    while i < n:                                   # walk the question's name to its type
        length = packet[i]
        if length == 0:
            break
        if length & 0xC0:                          # a pointer in the first name: not a sane packet
            return "other", rcode, plugin, denial
        i += length + 1
    if i + 3 > n:
        return "other", rcode, plugin, denial
    return QTYPES.get((packet[i + 1] << 8) | packet[i + 2], "other"), rcode, plugin, denial


def _question_length(packet: bytes) -> int:
    """Header plus question of a message: the request size when the request itself is unknown."""
    i, n = 12, len(packet)
    while i < n and packet[i] and not packet[i] & 0xC0:
        i += packet[i] + 1
    return min(n, i + 5)


def _bucket_bound(size: int) -> int:
    i = bisect.bisect_left(SIZE_BOUNDS, size)
    return int(SIZE_BOUNDS[i]) if i < len(SIZE_BOUNDS) else 65535


class Listener:
    """One socket kdns answers on: CoreDNS's ``server`` (``dns://HOST:PORT``), ``proto`` and
    ``family`` labels, its two slots in every cell, and the duration histogram of its answers."""

    __slots__ = ("index", "proto", "server", "family", "hit", "computed", "counts", "sum", "skipped")

    def __init__(self, index: int, proto: str, host: str, port: int):
        self.index = index
        self.proto = proto
        self.server = f"dns://[{host}]:{port}" if ":" in host else f"dns://{host}:{port}"
        self.family = "2" if ":" in host else "1"
        self.hit = 2 * index                 # cell[hit] += 1: answered from the packet cache
        self.computed = 2 * index + 1        # cell[computed] += 1: answered any other way
        self.counts = [0] * (len(DURATION_BOUNDS) + 1)
        self.sum = 0.0
        # Queries of the current batch that were not answered in it (dropped, or handed to a
        # worker that times them itself): the batch's time is recorded for the others only.
        self.skipped = 0

    def done(self, n: int, start: float) -> None:
        """A recvmmsg batch of ``n`` queries answered: its time since ``start`` counts once for
        each (one clock read and one bisect per batch, never per query)."""
        took = perf_counter() - start
        if self.skipped:
            n -= self.skipped
            self.skipped = 0
        if took <= 0.00025:                  # nearly every batch: skip the bisect
            self.counts[0] += n
        else:
            self.counts[bisect.bisect_left(DURATION_BOUNDS, took)] += n
        self.sum += took * n

    def one(self, start: float) -> None:
        """One query answered outside a batch (TCP, a forwarded UDP query)."""
        took = perf_counter() - start
        if took <= 0.00025:
            self.counts[0] += 1
        else:
            self.counts[bisect.bisect_left(DURATION_BOUNDS, took)] += 1
        self.sum += took


class QueryStats:
    """Query counts, owned by the answering threads.

    A cell counts the answers of one kind: (qtype, rcode, plugin, denial, request size,
    response size), everything CoreDNS labels a query by that is fixed by the query and
    response bytes. It is a list with two slots per listener (hits, computed), so a packet-cache
    entry carries its cell and a hit costs ``cell[listener.hit] += 1``, whichever socket it came
    in on. Increments are plain ``+=`` on list slots; under CPython's GIL a thread switch cannot
    split that read-add-store (no call, no backward jump in between), so counts are exact in
    practice without a lock.

    Which listener a miss is counted for is the answering thread's: each loop (and each TCP
    connection) calls ``enter`` once; a forwarded query's reply enters its UDP listener.
    """

    def __init__(self) -> None:
        self.cells: dict[tuple, list[int]] = {}
        self.listeners: list[Listener] = []
        self.dropped = 0                        # packets too broken to answer at all
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        self._local = threading.local()

    # ---- listeners
    def listen(self, proto: str, host: str, port: int) -> Listener:
        """Register a socket (before it answers anything: cells are as wide as the listeners)."""
        listener = Listener(len(self.listeners), proto, host, port)
        self.listeners.append(listener)
        return listener

    def listener(self, proto: str, host: str | None = None, port: int | None = None) -> Listener:
        """The registered listener for an address (a wildcard bind matches any host), else the
        first of that proto; one is made if there is none (a Server that never bound)."""
        fallback = wildcard = None
        family = None if host is None else ("2" if ":" in host else "1")
        for li in self.listeners:
            if li.proto != proto:
                continue
            fallback = fallback or li
            if port is None or not li.server.endswith(f":{port}") or family not in (None, li.family):
                continue
            if host is None or li.server in (f"dns://{host}:{port}", f"dns://[{host}]:{port}"):
                return li
            if li.server.startswith(("dns://0.0.0.0:", "dns://[::]:")):
                wildcard = wildcard or li
        return wildcard or fallback or self.listen(proto, host or "0.0.0.0", port or 0)

    def enter(self, listener: Listener) -> Listener:
        """This thread answers for ``listener`` (a UDP loop, a TCP connection, a worker)."""
        self._local.listener = listener
        return listener

    def current(self, transport: str) -> Listener:
        li = getattr(self._local, "listener", None)
        if li is None or li.proto != transport:
            li = self.listener(transport)
        return li

    # ---- counting
    def cell(self, packet: bytes, request: bytes | None = None) -> list[int]:
        qtype, rcode, plugin, denial = labels_of(packet)
        qsize = len(request) if request is not None else _question_length(packet)
        return self._cell(qtype, rcode, plugin, denial, qsize, len(packet))

    def _cell(self, qtype: str, rcode: str, plugin: str, denial: bool, qsize: int,
              rsize: int) -> list[int]:
        key = (qtype, rcode, plugin, denial, qsize, rsize)
        cell = self.cells.get(key)
        if cell is None:
            if len(self.cells) >= MAX_CELLS:
                key = (qtype, rcode, plugin, denial, _bucket_bound(qsize), _bucket_bound(rsize))
                cell = self.cells.get(key)
            if cell is None:
                cell = self.cells.setdefault(key, [0] * (2 * len(self.listeners)))
        return cell

    def computed(self, packet: bytes, transport: str, request: bytes | None = None) -> list[int]:
        """Count one answer that was computed (not a packet-cache hit); returns its cell, which
        a packet-cache entry keeps for its hits. ``request``: the query, for its size."""
        return self._count(self.cell(packet, request), transport)

    def computed_local(self, qtype: int, rcode: int, denial: bool, qsize: int, rsize: int,
                       transport: str) -> list[int]:
        """computed() for an authoritative answer whose labels the caller knows (kdns.direct),
        so its packet is not read again for them. Every cold miss comes here: the common case
        (a known cell, this thread's listener) is one dict lookup, no further calls."""
        cell = self.cells.get((QTYPES.get(qtype, "other"), RCODES[rcode], "kubernetes", denial,
                               qsize, rsize))
        li = getattr(self._local, "listener", None)
        if cell is None or li is None or li.proto != transport or li.computed >= len(cell):
            return self._count(self._cell(QTYPES.get(qtype, "other"), RCODES[rcode], "kubernetes",
                                          denial, qsize, rsize), transport)
        cell[li.computed] += 1
        return cell

    def _count(self, cell: list[int], transport: str) -> list[int]:
        slot = self.current(transport).computed
        if slot >= len(cell):                   # a listener registered after the cell was made
            cell.extend([0] * (slot + 1 - len(cell)))
        cell[slot] += 1
        return cell

    def computed_slot(self, transport: str = "udp") -> int:
        return self.current(transport).computed

    def drop(self) -> None:
        """A packet answered with nothing (not a query, too short)."""
        self.dropped += 1
        li = getattr(self._local, "listener", None)
        if li is not None and li.proto == "udp":     # out of its batch's answers (TCP: untimed anyway)
            li.skipped += 1

    def observe(self, seconds: float) -> None:
        self.latency[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds


def _histogram(name: str, doc: str, labels: list[str], series: dict, bounds) -> HistogramMetricFamily:
    """series: {label values: (bucket counts (len(bounds)+1, not cumulative), sum)}."""
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, (counts, total) in sorted(series.items()):
        buckets, running = [], 0
        for bound, n in zip(bounds, counts):
            running += n
            buckets.append((floatToGoString(bound), running))
        running += counts[-1]
        buckets.append(("+Inf", running))
        family.add_metric(list(values), buckets, total)
    return family


class QueryCollector:
    """Exports ``QueryStats`` and the serving state at scrape time (a custom Collector)."""

    def __init__(self, stats: QueryStats, snapshot, ready, cache_entries=lambda: 0, cache_cells=None):
        self.stats = stats
        self.snapshot = snapshot            # () -> the current Snapshot
        self.ready = ready                  # () -> bool
        self.cache_entries = cache_entries  # () -> int
        self.cache_cells = cache_cells      # () -> the cells of the packet cache's entries

    def describe(self):
        return []                            # no describe-time collection of live state

    def collect(self):
        st = self.stats
        cells = list(st.cells.items())       # a copy: the answering threads may add cells
        listeners = list(st.listeners)
        requests: dict = {}
        responses: dict = {}
        hits: dict = {}
        misses: dict = {}
        nbuckets = len(SIZE_BOUNDS) + 1
        qsizes: dict = {}
        rsizes: dict = {}
        for (qtype, rcode, plugin, denial, qsize, rsize), cell in cells:
            qb, rb = bisect.bisect_left(SIZE_BOUNDS, qsize), bisect.bisect_left(SIZE_BOUNDS, rsize)
            for li in listeners:
                h = cell[li.hit] if li.hit < len(cell) else 0
                c = cell[li.computed] if li.computed < len(cell) else 0
                if not h + c:
                    continue
                key = (li.server, ZONE, li.proto, li.family, qtype)
                requests[key] = requests.get(key, 0) + h + c
                if h:
                    key = (li.server, ZONE, rcode, "cache")
                    responses[key] = responses.get(key, 0) + h
                    key = (li.server, "denial" if denial else "success", ZONE)
                    hits[key] = hits.get(key, 0) + h
                if c:
                    key = (li.server, ZONE, rcode, plugin)
                    responses[key] = responses.get(key, 0) + c
                if li.proto == "udp":
                    key = (li.server, ZONE)
                    misses[key] = misses.get(key, 0) + c
                key = (li.server, ZONE, li.proto)
                for sizes, bucket, size in ((qsizes, qb, qsize), (rsizes, rb, rsize)):
                    counts, total = sizes.get(key) or ([0] * nbuckets, 0)
                    counts[bucket] += h + c
                    sizes[key] = (counts, total + size * (h + c))
        for li in listeners:                  # every listener shows, before its first query too
            if li.proto == "udp":
                misses.setdefault((li.server, ZONE), 0)
                for kind in ("success", "denial"):
                    hits.setdefault((li.server, kind, ZONE), 0)
        fam = CounterMetricFamily("kdns_dns_requests", "DNS requests, by server, zone, proto, family "
                                  "(1 = IPv4, 2 = IPv6) and query type",
                                  labels=["server", "zone", "proto", "family", "type"])
        for k, v in sorted(requests.items()):
            fam.add_metric(list(k), v)
        yield fam
        fam = CounterMetricFamily("kdns_dns_responses", "DNS responses, by server, zone, rcode and "
                                  "plugin (kubernetes, forward, cache, or empty for kdns's own errors)",
                                  labels=["server", "zone", "rcode", "plugin"])
        for k, v in sorted(responses.items()):
            fam.add_metric(list(k), v)
        yield fam
        durations: dict = {}
        for li in listeners:                  # UDP and TCP of one address are one server
            counts, total = durations.get((li.server, ZONE)) or ([0] * (len(DURATION_BOUNDS) + 1), 0.0)
            durations[(li.server, ZONE)] = ([a + b for a, b in zip(counts, li.counts)], total + li.sum)
        yield _histogram("kdns_dns_request_duration_seconds", "Time (seconds) each request took, "
                         "from its recvmmsg batch's arrival to the batch's answers being sent "
                         "(cache hits included)", ["server", "zone"], durations, DURATION_BOUNDS)
        yield _histogram("kdns_dns_request_size_bytes", "Size of the request in bytes",
                         ["server", "zone", "proto"], qsizes, SIZE_BOUNDS)
        yield _histogram("kdns_dns_response_size_bytes", "Size of the returned response in bytes",
                         ["server", "zone", "proto"], rsizes, SIZE_BOUNDS)
        fam = CounterMetricFamily("kdns_cache_hits", "UDP queries answered from the packet cache, by "
                                  "type (success, or denial: NXDOMAIN and NODATA)",
                                  labels=["server", "type", "zones"])
        for k, v in sorted(hits.items()):
            fam.add_metric(list(k), v)
        yield fam
        fam = CounterMetricFamily("kdns_cache_misses", "UDP queries that missed the packet cache",
                                  labels=["server", "zones"])
        for k, v in sorted(misses.items()):
            fam.add_metric(list(k), v)
        yield fam
        entries = GaugeMetricFamily("kdns_cache_entries", "Entries in the packet cache (this "
                                    "generation), shared by every listener, by type",
                                    labels=["type", "zones"])
        if self.cache_cells is not None:
            denial_cells = {id(cell) for key, cell in cells if key[3]}
            denials = total = 0
            for cell in list(self.cache_cells()):
                total += 1
                denials += id(cell) in denial_cells
            entries.add_metric(["success", ZONE], total - denials)
            entries.add_metric(["denial", ZONE], denials)
        else:
            entries.add_metric(["success", ZONE], self.cache_entries())
        yield entries
        yield CounterMetricFamily("kdns_dns_dropped", "Packets dropped without an answer (too short "
                                  "or not a query)", value=st.dropped)
        counts = list(st.latency)
        yield _histogram("kdns_dns_answer_duration_seconds", "Time to answer a query that missed the "
                         "packet cache, locally (decode, answer, encode); cache hits and forwarded "
                         "queries are not timed", [], {(): (counts, st.latency_sum)}, LATENCY_BOUNDS)
        snap = self.snapshot()
        yield GaugeMetricFamily("kdns_snapshot_version", "Version (SOA serial) of the served snapshot",
                                value=snap.version)
        yield GaugeMetricFamily("kdns_synced", "1 once every watched kind has been fully listed",
                                value=1 if snap.synced else 0)
        yield GaugeMetricFamily("kdns_ready", "1 while /ready answers 200", value=1 if self.ready() else 0)
        yield GaugeMetricFamily("kdns_services", "Services in the served snapshot",
                                value=len(snap.services))


def _build_info() -> None:
    info = Gauge("kdns_build_info", "A metric with a constant '1' value labeled by version, "
                 "revision, and pythonversion from which kdns was built",
                 ["version", "revision", "pythonversion"], registry=REGISTRY)
    info.labels(__version__, os.environ.get("KDNS_REVISION", ""), platform.python_version()).set(1)


_build_info()


class TCPCollector:
    """kdns.tcp's connection table at scrape time: open connections, and those closed by a
    limit (a slow drip, an idle client, a full table, one client's cap)."""

    def __init__(self, connections, closed):
        self.connections = connections      # () -> int
        self.closed = closed                # () -> {limit: count}

    def collect(self):
        yield GaugeMetricFamily("kdns_tcp_connections", "TCP connections open now",
                                value=self.connections())
        closed = CounterMetricFamily("kdns_tcp_closed_by_limit", "TCP connections closed by a limit "
                                     "(message_timeout, idle_timeout, max_connections, "
                                     "max_per_client, bad_length)", labels=["limit"])
        for limit, count in sorted(self.closed().items()):
            closed.add_metric([limit], count)
        yield closed


def register(collector) -> None:
    REGISTRY.register(collector)
