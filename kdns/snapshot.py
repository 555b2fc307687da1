"""The cluster compiled into a zone: an immutable Snapshot, rebuilt per Service, swapped atomically.

Readers take ``holder.current`` once per query and never look again, so no query sees half an
update. One writer (the source's thread) applies events through ``Store`` (the sources' Sink):
only the Service an event touches is recompiled, then its records are merged into copies of the
top-level maps, so an endpoint change in a 10,000-service cluster does not rebuild the world.

Existence is data: a name exists iff it has a Node, so NXDOMAIN vs NODATA is a lookup.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from kdns import names
from kdns.config import Config
from kdns.objects import Cluster, EndpointSlice, Namespace, Pod, Service



class SRVSet(NamedTuple):
    """SRV answers at one name, with their additional A/AAAA, per dns-behavior.md §3.2/§3.3."""
    records: tuple[tuple[int, int, int, str], ...]   # (priority, weight, port, target relative to zone)
    additional: tuple[tuple[str, str], ...]          # (owner relative to zone, ip)


class Node(NamedTuple):
    """One existing name. An empty Node is an empty non-terminal (NODATA for every type)."""
    addrs: tuple[str, ...] = ()    # canonical IPs: A for v4, AAAA for v6
    srv: SRVSet | None = None
    cname: str = ""                # ExternalName target, absolute, lower case, no trailing dot


ENT = Node()


@dataclass(frozen=True, slots=True)
class ServiceRecords:
    """Every name one Service owns, relative to <svc>.<ns>.svc.<zone>."""
    node: Node | None                                   # the service name itself; None = NXDOMAIN
    ports: Mapping[tuple[str, str], Node] = field(default_factory=dict)      # (port name, proto) lower -> SRV node
    endpoints: Mapping[str, Node] = field(default_factory=dict)              # endpoint name -> node
    ptrs: tuple[tuple[str, str, bool], ...] = ()        # (ip, target relative to zone, is cluster IP)


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int                                        # monotonic; SOA serial; cache generation
    synced: bool                                        # False until the first full API listing
    config: Config
    zones: tuple[str, ...]
    services: Mapping[tuple[str, str], ServiceRecords]
    namespaces: frozenset[str]
    ptr: Mapping[str, tuple[str, ...]]                  # ip -> PTR targets relative to the zone
    pods: frozenset[tuple[str, str]] = frozenset()      # (namespace, ip) of verified pods
    ns_records: tuple[tuple[str, tuple[str, ...]], ...] = ()   # apex NS: (target rel, glue ips)


def _weight(items: int) -> int:
    """CoreDNS backend_lookup.go SRV(): weight = floor(100 / N), N counted before de-duplication."""
    return max(1, 100 // items) if items else 0


def _srv_set(items: list[tuple[int, str, str]]) -> SRVSet | None:
    """items: (port, target rel, address) before de-duplication -> deduplicated SRVSet."""
    items = [i for i in items if i[0] > 0]          # port -1 is the "no ports" sentinel
    if not items:
        return None
    weight = _weight(len(items))
    records: dict[tuple[str, int], tuple[int, int, int, str]] = {}
    extra: dict[tuple[str, str], None] = {}
    for port, target, ip in items:
        records.setdefault((target, port), (0, weight, port, target))
        extra[(target, ip)] = None
    return SRVSet(tuple(records.values()), tuple(extra))


def _endpoint_name(ep, ip: str, pod_names: bool) -> str:
    """dns-behavior.md §2.3: hostname, else (with endpoint_pod_names) the pod name, else dashed IP."""
    if ep.hostname:
        return ep.hostname
    if pod_names and ep.pod_name:
        return ep.pod_name
    return names.dashed(ip)


def compile_service(svc: Service, slices: list[EndpointSlice], config: Config) -> ServiceRecords:
    base = f"{svc.name}.{svc.namespace}.svc"
    if svc.external:
        try:
            ipaddress.ip_address(svc.external_name)
            return ServiceRecords(None)                 # an IP is not a name: no record (§3.5)
        except ValueError:
            return ServiceRecords(Node(cname=svc.external_name))

    # Published endpoints: ready (or unknown) addresses of every IP slice, in slice order.
    published: list[tuple[str, str, EndpointSlice]] = []          # (endpoint name, ip, slice)
    seen: set[tuple[str, str]] = set()
    for sl in slices:
        if sl.address_type == "FQDN":
            continue                                     # deprecated; CoreDNS ignores them
        for ep in sl.endpoints:
            if not (ep.ready or (svc.publish_not_ready and config.publish_not_ready)):
                continue
            for ip in ep.addresses:
                published.append((_endpoint_name(ep, ip, config.endpoint_pod_names), ip, sl))

    ep_addrs: dict[str, dict[str, None]] = defaultdict(dict)
    ep_items: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for epname, ip, sl in published:
        ep_addrs[epname][ip] = None
        target = f"{epname}.{base}"
        for port in sl.ports or ():
            ep_items[epname].append((port.port, target, ip))
    endpoints = {n: Node(tuple(a), _srv_set(ep_items[n])) for n, a in ep_addrs.items()}
    ptrs = []
    for epname, ip, _ in published:
        if (epname, ip) not in seen:
            seen.add((epname, ip))
            ptrs.append((ip, f"{epname}.{base}", False))

    ports: dict[tuple[str, str], list[tuple[int, str, str]]] = defaultdict(list)
    bare: list[tuple[int, str, str]] = []
    if svc.headless:
        if not published:
            return ServiceRecords(None)                  # no ready address: NXDOMAIN (SPEC §2.4.1)
        addrs = tuple(dict.fromkeys(ip for _, ip, _ in published))
        for epname, ip, sl in published:
            target = f"{epname}.{base}"
            for port in sl.ports or ():
                item = (port.port, target, ip)
                bare.append(item)
                if port.name:
                    ports[(port.name, port.protocol.lower())].append(item)
    else:
        addrs = svc.addresses
        for port in svc.ports:
            for ip in addrs:
                item = (port.port, base, ip)
                bare.append(item)
                if port.name:
                    ports[(port.name, port.protocol.lower())].append(item)
        ptrs = [(ip, base, True) for ip in addrs] + ptrs
    port_nodes = {k: Node(srv=_srv_set(v)) for k, v in ports.items() if _srv_set(v)}
    return ServiceRecords(Node(addrs, _srv_set(bare)), port_nodes, endpoints, tuple(ptrs))


@dataclass
class Store:
    """The writer side: objects in, Snapshots out. Implements the sources' Sink protocol.

    Not thread-safe for writers (one source thread writes); readers only use ``holder``.
    """

    config: Config
    holder: "Holder" = None  # type: ignore[assignment]
    cluster: Cluster = field(default_factory=Cluster)
    _slices_by_service: dict[tuple[str, str], dict[str, EndpointSlice]] = field(default_factory=dict)
    _records: dict[tuple[str, str], ServiceRecords] = field(default_factory=dict)
    _ptr_owners: dict[str, dict[tuple[str, str], None]] = field(default_factory=dict)
    _ptr: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _synced: bool = False
    _pods: frozenset | None = None                  # cached verified-pod index, None = stale
    _ns: tuple | None = None                        # cached apex NS records, None = stale
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.holder is None:
            self.holder = Holder(self._snapshot())

    # ---- Sink
    def reset(self, cluster: Cluster, synced: bool = True) -> None:
        with self._lock:
            self.cluster = Cluster(dict(cluster.services), dict(cluster.slices),
                                   dict(cluster.namespaces), dict(cluster.pods))
            self._slices_by_service = defaultdict(dict)
            for sl in self.cluster.slices.values():
                self._slices_by_service[(sl.namespace, sl.service_name)][sl.name] = sl
            self._records = {}
            self._ptr_owners = {}
            self._ptr = {}
            for key in self.cluster.services:
                self._recompile(key)
            self._synced = synced
            self._pods = self._ns = None
            self.holder.current = self._snapshot()

    def apply(self, op: str, obj) -> None:
        with self._lock:
            self._apply(op, obj)
            self.holder.current = self._snapshot()

    def apply_many(self, events) -> None:
        """Several events, one published snapshot (a burst of watch events)."""
        with self._lock:
            for op, obj in events:
                self._apply(op, obj)
            self.holder.current = self._snapshot()

    def set_synced(self, synced: bool) -> None:
        with self._lock:
            self._synced = synced
            self.holder.current = self._snapshot()

    # ---- internals
    def _apply(self, op: str, obj) -> None:
        deleting = op == "DELETED"
        c = self.cluster
        if isinstance(obj, Service):
            if deleting:
                c.services.pop(obj.key, None)
            else:
                c.services[obj.key] = obj
            self._recompile(obj.key)
        elif isinstance(obj, EndpointSlice):
            old = c.slices.pop(obj.key, None)
            if old is not None:
                owner = (old.namespace, old.service_name)
                self._slices_by_service.get(owner, {}).pop(old.name, None)
                if owner != (obj.namespace, obj.service_name) or deleting:
                    self._recompile(owner)
            if not deleting:
                c.slices[obj.key] = obj
                self._slices_by_service.setdefault((obj.namespace, obj.service_name), {})[obj.name] = obj
                self._recompile((obj.namespace, obj.service_name))
        elif isinstance(obj, Namespace):
            if deleting:
                c.namespaces.pop(obj.name, None)
            else:
                c.namespaces[obj.name] = obj
        elif isinstance(obj, Pod):
            if deleting:
                c.pods.pop(obj.key, None)
            else:
                c.pods[obj.key] = obj
            self._pods = None
        else:
            raise TypeError(f"unknown object {obj!r}")

    def _recompile(self, key: tuple[str, str]) -> None:
        old = self._records.pop(key, None)
        svc = self.cluster.services.get(key)
        new = None
        if svc is not None:
            slices = sorted(self._slices_by_service.get(key, {}).values(), key=lambda s: s.name)
            new = compile_service(svc, slices, self.config)
            self._records[key] = new
        touched = {ip for ip, _, _ in (old.ptrs if old else ())} | {ip for ip, _, _ in (new.ptrs if new else ())}
        if self.config.pod_ip and ipaddress.ip_address(self.config.pod_ip).compressed in touched:
            self._ns = None                 # the apex NS target follows the Service holding our IP
        for ip in touched:
            owners = self._ptr_owners.setdefault(ip, {})
            owners.pop(key, None)
            if new is not None and any(p[0] == ip for p in new.ptrs):
                owners[key] = None
            self._rebuild_ptr(ip)

    def _rebuild_ptr(self, ip: str) -> None:
        """§3.6: a cluster IP gives one PTR (first Service); else one PTR per endpoint Service."""
        owners = sorted(self._ptr_owners.get(ip, ()))
        cluster_ip, endpoint = [], []
        for key in owners:
            for pip, target, is_cluster in self._records[key].ptrs:
                if pip == ip:
                    (cluster_ip if is_cluster else endpoint).append(target)
        targets = cluster_ip[:1] or list(dict.fromkeys(endpoint))
        if targets:
            self._ptr[ip] = tuple(targets)
        else:
            self._ptr.pop(ip, None)
            self._ptr_owners.pop(ip, None)

    def _ns_records(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        cfg = self.config
        if cfg.pod_ip:
            own = ipaddress.ip_address(cfg.pod_ip).compressed
            for key in sorted(self._records):
                rec = self._records[key]
                for name, node in sorted(rec.endpoints.items()):
                    if own in node.addrs:
                        svc = self.cluster.services[key]
                        base = f"{svc.name}.{svc.namespace}.svc"
                        if svc.headless:
                            return ((f"{name}.{base}", node.addrs),)
                        return ((base, svc.addresses),)
        return (("ns.dns", cfg.ns_addresses),)

    def _snapshot(self) -> Snapshot:
        prev = getattr(self.holder, "current", None) if self.holder else None
        version = max(int(time.time()), prev.version + 1 if prev else 0)
        if self._pods is None:
            self._pods = frozenset((p.namespace, p.ip) for p in self.cluster.pods.values() if p.active) \
                if self.config.pods == "verified" else frozenset()
        if self._ns is None:
            self._ns = self._ns_records()
        # Copies: the published maps must never change under a reader.
        return Snapshot(version, self._synced, self.config, self.config.zones, dict(self._records),
                        frozenset(self.cluster.namespaces), dict(self._ptr), self._pods, self._ns)


class Holder:
    """The one place a Snapshot is published; assignment is atomic under the GIL."""

    def __init__(self, snapshot: Snapshot):
        self.current = snapshot


def build(cluster: Cluster, config: Config, synced: bool = True) -> Snapshot:
    store = Store(config)
    store.reset(cluster, synced)
    return store.holder.current

