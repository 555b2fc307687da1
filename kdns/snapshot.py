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
from collections import deque
from dataclasses import dataclass
from typing import Mapping

from kdns.layered import LayeredMap
from kdns.config import Config
from kdns.objects import Cluster, EndpointSlice, Namespace, Pod, Service
# The records of one Service (kdns.records); Node, ENT, SRVSet and endpoint_srv are read by the
# answer engine from here, as before the split.
from kdns.records import (ENT, Node, ServiceRecords, SRVSet, _endpoint_name, _ptr_map,  # noqa: F401
                          compile_service, endpoint_srv)


# What an answer can depend on, as the Store names its changes (Holder.changes) and the answer
# engine names what it read (Response.deps): a Service key (namespace, name); a namespace name
# (its existence); an IP (its PTR targets); (namespace, pod IP) in --pods verified; and these
# two: the apex NS set, and the SOA serial (new with every snapshot). They cannot collide:
# namespace names are DNS labels, IPs hold '.' or ':', and these start with '@'.
APEX_NS = "@ns"
SERIAL = "@serial"
# A hosts-file answer depends on (HOSTS, the question name, lower case with its trailing dot):
# a tuple, so it cannot collide with the strings above nor with a Service key (namespace, name),
# whose namespace is a DNS label.
HOSTS = "@hosts"


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int                                        # monotonic; SOA serial; cache generation
    synced: bool                                        # False until the first full API listing
    config: Config
    zones: tuple[str, ...]
    services: Mapping[tuple[str, str], ServiceRecords]  # a LayeredMap
    namespaces: frozenset[str]
    ptr: Mapping[str, str | tuple[str, ...]]            # ip -> PTR target(s) relative to the zone: one str, or a tuple (LayeredMap)
    pods: frozenset[tuple[str, str]] = frozenset()      # (namespace, ip) of verified pods
    ns_records: tuple[tuple[str, tuple[str, ...]], ...] = ()   # apex NS: (target rel, glue ips)
    hosts: object = None                                # kdns.hosts.Hosts (--hosts), answered first


class Store:
    """The writer side: objects in, Snapshots out. Implements the sources' Sink protocol.

    One writer at a time (a lock serialises sources); readers only ever use ``holder.current``.
    Each event recompiles the one Service it touches and publishes only the changed entries
    (LayeredMap deltas), so its cost does not grow with the cluster.
    """

    def __init__(self, config: Config, coalesce: float = 0.0):
        self.config = config
        self.cluster = Cluster()
        self._lock = threading.Lock()
        # ``apply`` calls closer together than ``coalesce`` seconds share one publish: the
        # first after a quiet spell publishes at once, the rest of a burst at most once per
        # window (a thread of our own does it). A publish costs more than the event it shows
        # (new maps' deltas, a Snapshot, the packet cache's invalidation): at 1,000 events/s
        # a publish per event kept the watch thread busy and fell seconds behind the stream.
        self.coalesce = coalesce
        self._pending = False
        self._last_publish = 0.0
        self._wake = threading.Condition(self._lock)
        self._flusher: threading.Thread | None = None
        self._slices_by_service: dict[tuple[str, str], dict[str, EndpointSlice]] = {}
        self._records: dict[tuple[str, str], ServiceRecords] = {}
        # ip -> the Service (key) with a PTR for it, or a tuple of them (see _owners)
        self._ptr_owners: dict[str, tuple] = {}
        self._changed_records: dict = {}
        self._changed_ptr: dict = {}
        # The deps (see APEX_NS) whose data the next publish changes; None = everything.
        self._deps: set | None = None
        self._pub_records = LayeredMap()
        self._pub_ptr = LayeredMap()
        self._synced = False
        self._pods: frozenset | None = None     # cached verified-pod index, None = stale
        self._ns: tuple | None = None           # cached apex NS records, None = stale
        self._own_ip = ipaddress.ip_address(config.pod_ip).compressed if config.pod_ip else ""
        self._hosts = None
        self.holder = Holder(self._snapshot())

    # ---- Sink
    def reset(self, cluster: Cluster, synced: bool = True) -> None:
        with self._lock:
            self.cluster = Cluster(dict(cluster.services), dict(cluster.slices),
                                   dict(cluster.namespaces), dict(cluster.pods))
            self._slices_by_service = {}
            for sl in self.cluster.slices.values():
                self._slices_by_service.setdefault((sl.namespace, sl.service_name), {})[sl.name] = sl
            self._records, self._ptr_owners = {}, {}
            self._changed_records, self._changed_ptr = {}, {}
            self._compile_all()
            # Everything changed: the changes are the new base (the writer keeps no other copy).
            self._pub_records = LayeredMap(dict(self._records))
            self._pub_ptr = LayeredMap(self._changed_ptr)      # _compile_all's: no None in it
            self._changed_records, self._changed_ptr = {}, {}
            self._synced = synced
            self._pods = self._ns = None
            self._deps = None                   # a relist replaces everything
            self._publish()

    def apply(self, op: str, obj) -> None:
        with self._lock:
            self._apply(op, obj)
            if self.coalesce <= 0 or (not self._pending and
                                      time.monotonic() - self._last_publish >= self.coalesce):
                self._publish()
                return
            self._pending = True
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="kdns-publish",
                                                 daemon=True)
                self._flusher.start()
            self._wake.notify()

    def _flush_loop(self) -> None:
        """Publishes what ``apply`` left pending, once its window since the last publish ends."""
        with self._lock:
            while True:
                while not self._pending:
                    self._wake.wait()
                wait = self._last_publish + self.coalesce - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                self._publish()

    def set_hosts(self, hosts) -> None:
        """Publish new hosts-file data (kdns.hosts.Hosts, or None): only the answers for names
        whose hosts entries changed are dropped from the packet cache."""
        with self._lock:
            old, self._hosts = self._hosts, hosts
            if self._deps is not None:
                self._deps.update((HOSTS, name) for name in _hosts_changes(old, hosts))
            self._publish()

    def set_synced(self, synced: bool) -> None:
        with self._lock:
            if synced != self._synced:
                self._deps = None               # every NXDOMAIN was a SERVFAIL, or the reverse
            self._synced = synced
            self._publish()

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

    def _compile_all(self) -> None:
        """``_recompile`` of every Service, in bulk: the PTR owners and targets in one pass
        over the records instead of one pass over a Service's PTRs per address of it
        (1.3M steps at 100,000 endpoints: most of a 10,000-Service cold compile)."""
        records, config = self._records, self.config
        by_service = self._slices_by_service
        for key, svc in self.cluster.services.items():
            if not self._served(svc.namespace):
                continue                    # --namespaces: as if it did not exist
            slices = by_service.get(key)
            records[key] = compile_service(svc, sorted(slices.values(), key=_slice_name) if slices else [],
                                           config)
        owners: dict = {}
        first_cluster: dict[str, str] = {}           # ip -> the first Service's cluster-IP PTR
        endpoint: dict = {}                          # ip -> target, or dict of targets in order
        several: list[str] = []                      # the ips of ``endpoint`` holding a dict
        for key in sorted(records):                  # owners in sorted order, as _recompile keeps them
            rec = records[key]
            ips, targets, cluster_ptrs = rec.ptr_ips, rec.ptr_targets, rec.cluster_ptrs
            fresh = dict.fromkeys(ips, key)
            if len(fresh) == len(ips) and owners.keys().isdisjoint(fresh):
                # The common case: IPs no Service had yet, each once. Whole-tuple dict updates
                # in C instead of a Python step per PTR (110,000 of them in a cold start).
                owners.update(fresh)
                if cluster_ptrs:
                    for n in range(cluster_ptrs):
                        first_cluster.setdefault(ips[n], targets[n])
                    endpoint.update(zip(ips[cluster_ptrs:], targets[cluster_ptrs:]))
                else:
                    endpoint.update(zip(ips, targets))
                continue
            for n, (ip, target) in enumerate(zip(ips, targets)):
                had = owners.get(ip)
                if had is None:
                    owners[ip] = key
                elif had is not key:
                    if isinstance(had[0], str):
                        owners[ip] = (had, key)
                    elif had[-1] is not key:
                        owners[ip] = had + (key,)
                if n < cluster_ptrs:
                    first_cluster.setdefault(ip, target)
                    continue
                seen = endpoint.get(ip)
                if seen is None:
                    endpoint[ip] = target
                elif type(seen) is str:
                    if seen != target:
                        endpoint[ip] = {seen: None, target: None}
                        several.append(ip)
                else:
                    seen[target] = None
        self._ptr_owners = owners
        for ip in several:
            endpoint[ip] = tuple(endpoint[ip])
        endpoint.update(first_cluster)               # §3.6: a cluster IP's PTR wins
        self._changed_ptr = endpoint

    def _recompile(self, key: tuple[str, str]) -> None:
        old = self._records.pop(key, None)
        svc = self.cluster.services.get(key)
        if svc is not None and not self._served(svc.namespace):
            svc = None                      # --namespaces: as if it did not exist
        new = None
        if svc is not None:
            slices = sorted(self._slices_by_service.get(key, {}).values(), key=lambda s: s.name)
            new = compile_service(svc, slices, self.config)
            self._records[key] = new
        self._changed_records[key] = new
        if new != old and self._deps is not None:
            self._deps.add(key)
        # Only the IPs whose PTR targets from this Service changed are touched: one event costs
        # O(this Service's endpoints), not O(endpoints²) (a 4,000-endpoint Service under a
        # rolling update fell minutes behind the watch when every IP was rebuilt by a scan).
        old_ptrs, new_ptrs = _ptr_map(old), _ptr_map(new)
        for ip in old_ptrs.keys() | new_ptrs.keys():
            mine = new_ptrs.get(ip)
            if old_ptrs.get(ip) == mine:
                continue
            owners = tuple(k for k in self._owners(ip) if k != key)
            if mine is not None:
                owners = tuple(sorted(owners + (key,)))
            if len(owners) > 1:
                self._ptr_owners[ip] = owners
            elif owners:
                self._ptr_owners[ip] = owners[0]     # most IPs have one owner: no 1-tuple each
            else:
                self._ptr_owners.pop(ip, None)
            self._rebuild_ptr(ip, owners, key, mine)
        if self._own_ip and (self._own_ip in old_ptrs or self._own_ip in new_ptrs):
            self._ns = None                 # the apex NS target follows the Service holding our IP

    def _owners(self, ip: str) -> tuple:
        """The Services with a PTR for ip: stored as the one key, or a tuple of keys."""
        owners = self._ptr_owners.get(ip, ())
        return (owners,) if owners and isinstance(owners[0], str) else owners

    def _rebuild_ptr(self, ip: str, owners: tuple, key: tuple, mine: tuple | None) -> None:
        """§3.6: a cluster IP gives one PTR (first Service); else one PTR per endpoint Service.
        Published as the one target (the common case, no 1-tuple per IP), or a tuple.
        ``mine``: the (cluster, endpoint) targets for ip of Service ``key``, just compiled;
        another owner's (an IP in two Services: rare) are found by a scan of its records."""
        cluster_ip, endpoint = [], []
        for owner in owners:
            if owner == key:
                got = mine
            else:
                got = _ptr_map(self._records[owner]).get(ip)
            if got is not None:
                cluster_ip.extend(got[0])
                endpoint.extend(got[1])
        targets = tuple(cluster_ip[:1] or dict.fromkeys(endpoint))
        value = (targets[0] if len(targets) == 1 else targets) or None
        self._changed_ptr[ip] = value
        if self._deps is not None and value != self._pub_ptr.get(ip):
            self._deps.add(ip)

    def _served(self, namespace: str) -> bool:
        return self.config.namespaces is None or namespace in self.config.namespaces

    def _ns_records(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The apex NS: every Service whose endpoints hold our pod IP, as CoreDNS's nsAddrs()
        (ns.go): a Service by its name and cluster IPs, a headless one by every published
        endpoint of the slice holding our IP (NodeLocal DNSCache's kube-dns-upstream selects the
        same pods as kube-dns, so both are named). None of them: ns.dns with our addresses."""
        found: dict[str, dict[str, None]] = {}
        own, config = self._own_ip, self.config
        for key in sorted(self._slices_by_service) if own and not config.noendpoints else ():
            svc = self.cluster.services.get(key)
            if svc is None or svc.external or not self._served(svc.namespace):
                continue
            base = f"{svc.name}.{svc.namespace}.svc"
            for sl in sorted(self._slices_by_service[key].values(), key=lambda s: s.name):
                published = [ep for ep in sl.endpoints if ep.ready or (svc.publish_not_ready
                                                                      and config.publish_not_ready)]
                if sl.address_type == "FQDN" or not any(own in ep.addresses for ep in published):
                    continue
                if not svc.headless:
                    found.setdefault(base, {}).update(dict.fromkeys(svc.addresses))
                    break
                for ep in published:
                    for ip in ep.addresses:
                        name = _endpoint_name(ep, ip, config.endpoint_pod_names)
                        found.setdefault(f"{name}.{base}", {})[ip] = None
        if found:
            return tuple((target, tuple(ips)) for target, ips in found.items())
        return (("ns.dns", self.config.ns_addresses),)

    def _publish(self) -> None:
        if self._changed_records:
            self._pub_records = self._pub_records.with_changes(self._changed_records)
            self._changed_records = {}
        if self._changed_ptr:
            self._pub_ptr = self._pub_ptr.with_changes(self._changed_ptr)
            self._changed_ptr = {}
        prev = self.holder.current
        snap = self._snapshot()
        deps = self._deps
        if deps is not None:
            deps.add(SERIAL)
            if snap.namespaces is not prev.namespaces:
                deps.update(prev.namespaces.symmetric_difference(snap.namespaces))
            if snap.pods is not prev.pods:
                deps.update(prev.pods.symmetric_difference(snap.pods))
            if snap.ns_records != prev.ns_records:
                deps.add(APEX_NS)
            deps = frozenset(deps)
        self._deps = set()
        self._pending = False
        self._last_publish = time.monotonic()
        self.holder.publish(snap, prev.version, deps)

    def _snapshot(self) -> Snapshot:
        prev = getattr(self, "holder", None)
        version = max(int(time.time()), prev.current.version + 1 if prev else 0)
        if self._pods is None:
            self._pods = frozenset((p.namespace, p.ip) for p in self.cluster.pods.values()
                                   if p.active and self._served(p.namespace)) \
                if self.config.pods == "verified" else frozenset()
        if self._ns is None:
            self._ns = self._ns_records()
        namespaces = frozenset(n for n in self.cluster.namespaces if self._served(n))
        if prev is not None and namespaces == prev.current.namespaces:
            namespaces = prev.current.namespaces       # one frozenset while nothing changes
        return Snapshot(version, self._synced, self.config, self.config.zones, self._pub_records,
                        namespaces, self._pub_ptr, self._pods, self._ns, self._hosts)


def _hosts_changes(old, new) -> set[str]:
    """The question names (lower case, trailing dot) whose hosts answers differ between two
    kdns.hosts.Hosts (either may be None)."""
    out: set[str] = set()
    for attr in ("names", "reverse"):
        a = getattr(old, attr, None) or {}
        b = getattr(new, attr, None) or {}
        out.update(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return out


def _slice_name(sl: EndpointSlice) -> str:
    return sl.name


class Holder:
    """The one place a Snapshot is published; assignment is atomic under the GIL.

    It also keeps a short log of what each publish changed (the deps, see APEX_NS), so that a
    cache of answers can drop exactly the answers read from changed data, however many
    snapshots it saw go by at once."""

    LOG = 4096              # publishes remembered; a reader further behind drops everything

    def __init__(self, snapshot: Snapshot):
        self.current = snapshot
        self._log: deque = deque(maxlen=self.LOG)    # (version, previous version, deps | None)

    def publish(self, snapshot: Snapshot, previous: int, deps: frozenset | None) -> None:
        # The log first: a reader that sees the new snapshot must find what it changed.
        self._log.append((snapshot.version, previous, deps))
        self.current = snapshot

    def changes(self, since: int, upto: int) -> set | None:
        """The deps changed by every publish after version ``since`` up to ``upto``, or None
        when that cannot be told (a full reset among them, or the log no longer reaches back)."""
        try:
            return self._walk(reversed(self._log), since, upto)
        except RuntimeError:            # the writer appended meanwhile: walk a copy instead
            return self._walk(reversed(list(self._log)), since, upto)

    @staticmethod
    def _walk(newest_first, since: int, upto: int) -> set | None:
        """Newest first, back to ``since``: a sync costs the publishes it missed, not the log."""
        out: set = set()
        expect = upto
        for version, previous, deps in newest_first:
            if version > upto:
                continue
            if version != expect or deps is None:
                return None
            out |= deps
            if previous == since:
                return out
            expect = previous
        return None


def build(cluster: Cluster, config: Config, synced: bool = True) -> Snapshot:
    store = Store(config)
    store.reset(cluster, synced)
    return store.holder.current

