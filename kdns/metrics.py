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

from prometheus_client import (CollectorRegistry, Counter, GCCollector, PlatformCollector, ProcessCollector,
                               disable_created_metrics)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

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

# ---- for kdns.forward: one increment per upstream exchange (the slow path).
FORWARDS = Counter("kdns_forwards", "Queries sent to an upstream resolver, by upstream (host:port) "
                   "and result (the response rcode like NOERROR, or timeout, error)",
                   ["upstream", "result"], registry=REGISTRY)

# ---- the hot path

# Label values must be bounded whatever clients send: rare or unknown types count as "other".
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
          33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 252: "AXFR",
          251: "IXFR", 255: "ANY", 257: "CAA"}
RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
          "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15")

HITS, COMPUTED = 0, 1          # slots of a cell: answered from the packet cache / computed

# Upper bounds (seconds) of the miss-path latency buckets: a local answer takes tens of
# microseconds, a slow one (GIL contention, a large SRV set) a few milliseconds.
LATENCY_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


def labels_of(packet: bytes) -> tuple[str, str]:
    """(qtype, rcode) label values of a response, read from its bytes, so that every path
    (local answers, upstream answers, rejects) is labelled by what was actually sent."""
    rcode = RCODES[packet[3] & 0x0F] if len(packet) >= 4 else "FORMERR"
    if len(packet) < 12 or packet[4:6] == b"\0\0":
        return "none", rcode
    i, n = 12, len(packet)
    while i < n:                                   # walk the question's name to its type
        length = packet[i]
        if length == 0:
            break
        if length & 0xC0:                          # a pointer in the first name: not a sane packet
            return "other", rcode
        i += length + 1
    if i + 3 > n:
        return "other", rcode
    return QTYPES.get((packet[i + 1] << 8) | packet[i + 2], "other"), rcode


class QueryStats:
    """Query counts by (qtype, rcode, transport), owned by the answering threads.

    Each cell is a two-slot list [hits, computed]. Increments are plain ``+=`` on list slots;
    under CPython's GIL a thread switch cannot split that read-add-store (no call, no backward
    jump in between), so counts are exact in practice without a lock.
    """

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str, str], list[int]] = {}
        self.dropped = 0                        # packets too broken to answer at all
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0

    def cell(self, packet: bytes, transport: str) -> list[int]:
        qtype, rcode = labels_of(packet)
        key = (qtype, rcode, transport)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells.setdefault(key, [0, 0])
        return cell

    def computed(self, packet: bytes, transport: str) -> list[int]:
        """Count one answer that was computed (not a packet-cache hit); returns its cell."""
        cell = self.cell(packet, transport)
        cell[COMPUTED] += 1
        return cell

    def observe(self, seconds: float) -> None:
        self.latency[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds


class QueryCollector:
    """Exports ``QueryStats`` and the serving state at scrape time (a custom Collector)."""

    def __init__(self, stats: QueryStats, snapshot, ready, cache_entries=lambda: 0):
        self.stats = stats
        self.snapshot = snapshot            # () -> the current Snapshot
        self.ready = ready                  # () -> bool
        self.cache_entries = cache_entries  # () -> int

    def describe(self):
        return []                            # no describe-time collection of live state

    def collect(self):
        st = self.stats
        cells = list(st.cells.items())       # a copy: the answering threads may add cells
        queries = CounterMetricFamily("kdns_dns_queries", "DNS queries answered, by query type, "
                                      "response code and transport", labels=["type", "rcode", "proto"])
        hits = misses = 0
        for (qtype, rcode, proto), cell in sorted(cells):
            h, c = cell[HITS], cell[COMPUTED]
            queries.add_metric([qtype, rcode, proto], h + c)
            hits += h
            if proto == "udp":
                misses += c
        yield queries
        yield CounterMetricFamily("kdns_cache_hits", "UDP queries answered from the packet cache",
                                  value=hits)
        yield CounterMetricFamily("kdns_cache_misses", "UDP queries that missed the packet cache",
                                  value=misses)
        yield GaugeMetricFamily("kdns_cache_entries", "Entries in the packet cache (this generation)",
                                value=self.cache_entries())
        yield CounterMetricFamily("kdns_dns_dropped", "Packets dropped without an answer (too short "
                                  "or not a query)", value=st.dropped)
        buckets, running = [], 0
        counts = list(st.latency)
        for bound, n in zip(LATENCY_BOUNDS, counts):
            running += n
            buckets.append((repr(bound), running))
        running += counts[-1]
        buckets.append(("+Inf", running))
        yield HistogramMetricFamily("kdns_dns_answer_duration_seconds", "Time to answer a query that "
                                    "missed the packet cache, locally (decode, answer, encode); "
                                    "cache hits and forwarded queries are not timed",
                                    buckets=buckets, sum_value=st.latency_sum)
        snap = self.snapshot()
        yield GaugeMetricFamily("kdns_snapshot_version", "Version (SOA serial) of the served snapshot",
                                value=snap.version)
        yield GaugeMetricFamily("kdns_synced", "1 once every watched kind has been fully listed",
                                value=1 if snap.synced else 0)
        yield GaugeMetricFamily("kdns_ready", "1 while /ready answers 200", value=1 if self.ready() else 0)
        yield GaugeMetricFamily("kdns_services", "Services in the served snapshot",
                                value=len(snap.services))
        info = GaugeMetricFamily("kdns_build_info", "kdns version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


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
