"""One Service compiled into its records: the names it owns (Nodes), its SRV sets and PTRs.

Pure functions of (Service, its EndpointSlices, Config), no state: kdns.snapshot's Store calls
``compile_service`` for the Service an event touches, and for every Service on a reset.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator, Mapping, NamedTuple

from kdns import names
from kdns.config import Config
from kdns.objects import EndpointSlice, Service, shared_values

class SRVSet(NamedTuple):
    """SRV answers at one name, with their additional A/AAAA, per dns-behavior.md §3.2/§3.3."""
    records: tuple[tuple[int, int, int, str], ...]   # (priority, weight, port, target relative to zone)
    additional: tuple[tuple[str, str], ...]          # (owner relative to zone, ip)


class Node(NamedTuple):
    """One existing name. An empty Node is an empty non-terminal (NODATA for every type)."""
    addrs: tuple[str, ...] = ()    # canonical IPs: A for v4, AAAA for v6
    srv: SRVSet | None = None
    cname: str = ""                # ExternalName target, absolute, lower case, no trailing dot
    # Endpoint names keep only their slice ports: their SRV (rarely asked) is made on demand,
    # which saves a precomputed SRVSet per endpoint (~0.3 KB x every endpoint of the cluster).
    ports: tuple[int, ...] = ()


ENT = Node()


@dataclass(frozen=True, slots=True, eq=True)
class ServiceRecords:
    """Every name one Service owns, relative to <svc>.<ns>.svc.<zone>."""
    node: Node | None                                   # the service name itself; None = NXDOMAIN
    ports: Mapping[tuple[str, str], Node] = field(default_factory=dict)      # (port name, proto) lower -> SRV node
    endpoints: Mapping[str, Node] = field(default_factory=dict)              # endpoint name -> node
    # PTR sources as parallel tuples (not a 3-tuple per endpoint: ~6 MB at 100k endpoints): the
    # first ``cluster_ptrs`` are the cluster IPs, the rest endpoint addresses.
    ptr_ips: tuple[str, ...] = ()
    ptr_targets: tuple[str, ...] = ()                   # relative to the zone
    cluster_ptrs: int = 0

    def ptrs(self) -> Iterator[tuple[str, str, bool]]:
        """(ip, target relative to zone, is a cluster IP) for every PTR this Service gives."""
        for n, (ip, target) in enumerate(zip(self.ptr_ips, self.ptr_targets)):
            yield ip, target, n < self.cluster_ptrs


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


# Node(...) runs NamedTuple's generated __new__ in Python; tuple.__new__ builds the same tuple
# in C (a Node per endpoint: 100,000 of them in a cold start).
def _node(addrs: tuple, srv: SRVSet | None, cname: str, ports: tuple) -> Node:
    return _tuple_new(Node, (addrs, srv, cname, ports))


_tuple_new = tuple.__new__
_GONE = object()

# Ports tuples interned across Services: alike endpoints (nearly all of a cluster's 100,000)
# then share one tuple instead of one per Service. Bounded: past the cap they are not kept.
_shared_ports = shared_values(4096)


def _slice_ports(sl: EndpointSlice) -> tuple[int, ...]:
    """The slice's port numbers, once each, in order (port -1 is the "no ports" sentinel)."""
    return _shared_ports(tuple(dict.fromkeys(p.port for p in sl.ports or () if p.port > 0)))


def compile_service(svc: Service, slices: list[EndpointSlice], config: Config) -> ServiceRecords:
    base = f"{svc.name}.{svc.namespace}.svc"
    if svc.external:
        try:
            ipaddress.ip_address(svc.external_name)
            return ServiceRecords(None)                 # an IP is not a name: no record (§3.5)
        except ValueError:
            return ServiceRecords(Node(cname=svc.external_name))

    # Published endpoints: ready (or unknown) addresses of every IP slice, in slice order.
    # One pass over them (this loop runs for each of a cold start's 100,000 endpoints): an
    # endpoint name met for the first time (nearly all of them) gets its Node, target and PTR
    # at once; a name met again (a hostname shared by endpoints, one endpoint's two addresses)
    # is merged afterwards, in the order the addresses came.
    if config.noendpoints:
        slices = []                                  # CoreDNS noendpoints: no endpoint records
    headless = svc.headless
    any_ready = svc.publish_not_ready and config.publish_not_ready
    pod_names = config.endpoint_pod_names
    dashed = names.dashed
    published: list[tuple[str, str, EndpointSlice]] | None = [] if headless else None
    count = 0
    targets: dict[str, str] = {}                  # endpoint name -> its name relative to the zone
    endpoints: dict[str, Node] = {}
    merged: dict[str, tuple[dict, dict]] | None = None      # name -> (its ips, its ports)
    ptr_ips: list[str] = []
    ptr_targets: list[str] = []
    for sl in slices:
        if sl.address_type == "FQDN":
            continue                                     # deprecated; CoreDNS ignores them
        numbers = _slice_ports(sl)
        v4 = sl.address_type == "IPv4"             # dashed() is a replace for an IPv4 address
        for ep in sl.endpoints:
            if not (ep.ready or any_ready):
                continue
            addrs = ep.addresses
            for ip in addrs:
                name = ep.hostname or (pod_names and ep.pod_name) or (
                    ip.replace(".", "-") if v4 else dashed(ip))
                count += 1
                if published is not None:
                    published.append((name, ip, sl))
                target = targets.get(name)
                if target is None:
                    targets[name] = target = f"{name}.{base}"
                    # One address from one Endpoint (the common case): share its own tuple.
                    endpoints[name] = _tuple_new(Node, (addrs if len(addrs) == 1 else (ip,), None, "",
                                                        numbers))
                    ptr_ips.append(ip)
                    ptr_targets.append(target)
                    continue
                if merged is None:
                    merged = {}
                both = merged.get(name)
                if both is None:
                    node = endpoints[name]
                    both = merged[name] = (dict.fromkeys(node.addrs), dict.fromkeys(node.ports))
                if ip not in both[0]:
                    both[0][ip] = None
                    ptr_ips.append(ip)
                    ptr_targets.append(target)
                both[1].update(dict.fromkeys(numbers))
    for name, (ips, numbers) in (merged or {}).items():
        endpoints[name] = _node(tuple(ips), None, "", _shared_ports(tuple(numbers)))

    if config.ignore_empty_service and not count and not headless:
        # CoreDNS ignore empty_service: NXDOMAIN for the name; its cluster IPs still have PTRs.
        addrs = svc.addresses
        return ServiceRecords(None, ptr_ips=addrs, ptr_targets=(base,) * len(addrs),
                              cluster_ptrs=len(addrs))

    ports: dict[tuple[str, str], list[tuple[int, str, str]]] = defaultdict(list)
    bare: list[tuple[int, str, str]] = []
    if headless:
        if not published:
            return ServiceRecords(None)                  # no ready address: NXDOMAIN (SPEC §2.4.1)
        addrs = tuple(dict.fromkeys(ip for _, ip, _ in published))
        for epname, ip, sl in published:
            target = targets[epname]
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
        ptr_ips, ptr_targets = list(addrs) + ptr_ips, [base] * len(addrs) + ptr_targets
    # A one-port Service (most of them) has the same SRV set at the name and at its port's
    # name: one SRVSet for both.
    made: dict[tuple, SRVSet | None] = {}
    srv = made.setdefault(tuple(bare), _srv_set(bare))
    port_nodes = {}
    for k, v in ports.items():
        items = tuple(v)
        got = made.get(items, _GONE)
        if got is _GONE:
            got = made[items] = _srv_set(v)
        if got:
            port_nodes[k] = _tuple_new(Node, ((), got, "", ()))
    return ServiceRecords(Node(addrs, srv), port_nodes, endpoints, tuple(ptr_ips),
                          tuple(ptr_targets), 0 if svc.headless else len(addrs))


def endpoint_srv(node: Node, target: str) -> SRVSet | None:
    """SRV at an endpoint name: its slice ports x its addresses, target the endpoint itself."""
    return _srv_set([(port, target, ip) for ip in node.addrs for port in node.ports])


def _ptr_map(rec: ServiceRecords | None) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """ip -> (cluster-IP targets, endpoint targets) of one Service's PTRs, in order."""
    out: dict[str, tuple[list, list]] = {}
    if rec is not None:
        for ip, target, is_cluster in rec.ptrs():
            entry = out.get(ip)
            if entry is None:
                entry = out[ip] = ([], [])
            entry[0 if is_cluster else 1].append(target)
    return {ip: (tuple(c), tuple(e)) for ip, (c, e) in out.items()}
