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
from kdns.objects import EndpointSlice, Service

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


def compile_service(svc: Service, slices: list[EndpointSlice], config: Config) -> ServiceRecords:
    base = f"{svc.name}.{svc.namespace}.svc"
    if svc.external:
        try:
            ipaddress.ip_address(svc.external_name)
            return ServiceRecords(None)                 # an IP is not a name: no record (§3.5)
        except ValueError:
            return ServiceRecords(Node(cname=svc.external_name))

    # Published endpoints: ready (or unknown) addresses of every IP slice, in slice order.
    if config.noendpoints:
        slices = []                                  # CoreDNS noendpoints: no endpoint records
    published: list[tuple[str, str, EndpointSlice]] = []          # (endpoint name, ip, slice)
    seen: set[tuple[str, str]] = set()
    one_address: dict[str, tuple[str]] = {}             # endpoint name -> its Endpoint's 1-tuple
    for sl in slices:
        if sl.address_type == "FQDN":
            continue                                     # deprecated; CoreDNS ignores them
        for ep in sl.endpoints:
            if not (ep.ready or (svc.publish_not_ready and config.publish_not_ready)):
                continue
            for ip in ep.addresses:
                name = _endpoint_name(ep, ip, config.endpoint_pod_names)
                published.append((name, ip, sl))
                if len(ep.addresses) == 1:
                    one_address.setdefault(name, ep.addresses)

    if config.ignore_empty_service and not published and not svc.headless:
        # CoreDNS ignore empty_service: NXDOMAIN for the name; its cluster IPs still have PTRs.
        addrs = svc.addresses
        return ServiceRecords(None, ptr_ips=addrs, ptr_targets=(base,) * len(addrs),
                              cluster_ptrs=len(addrs))

    ep_addrs: dict[str, dict[str, None]] = defaultdict(dict)
    ep_ports: dict[str, dict[int, None]] = defaultdict(dict)
    targets: dict[str, str] = {}                  # endpoint name -> its name relative to the zone
    for epname, ip, sl in published:
        ep_addrs[epname][ip] = None
        if epname not in targets:
            targets[epname] = f"{epname}.{base}"
        for port in sl.ports or ():
            if port.port > 0:
                ep_ports[epname][port.port] = None
    shared: dict[tuple[int, ...], tuple[int, ...]] = {}   # one ports tuple for all alike endpoints
    endpoints = {}
    for n, a in ep_addrs.items():
        numbers = tuple(ep_ports[n])
        addrs = tuple(a)
        # One address from one Endpoint (the common case): share that Endpoint's own tuple.
        endpoints[n] = Node(one_address.get(n, addrs) if len(addrs) == 1 else addrs,
                            ports=shared.setdefault(numbers, numbers))
    ptr_ips, ptr_targets = [], []
    for epname, ip, _ in published:
        if (epname, ip) not in seen:
            seen.add((epname, ip))
            ptr_ips.append(ip)
            ptr_targets.append(targets[epname])

    ports: dict[tuple[str, str], list[tuple[int, str, str]]] = defaultdict(list)
    bare: list[tuple[int, str, str]] = []
    if svc.headless:
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
    port_nodes = {k: Node(srv=s) for k, s in ((k, _srv_set(v)) for k, v in ports.items()) if s}
    return ServiceRecords(Node(addrs, _srv_set(bare)), port_nodes, endpoints, tuple(ptr_ips),
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
