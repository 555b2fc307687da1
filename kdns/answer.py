"""answer(snapshot, qname, qtype) -> Response: the DNS semantics of a cluster, pure.

No sockets, no wire format: records come out as plain tuples that kdns.wire packs. The rules are
dns-behavior.md §1-§5 and §8, taking the RFC-consistent answer for quirks Q1-Q5 (§11).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdns import names
from kdns.snapshot import APEX_NS, ENT, HOSTS, SERIAL, Node, Snapshot, endpoint_srv

# RR types and rcodes (RFC 1035, 2782, 3596, 6891) - named here so that nothing above wire.py
# needs a DNS library.
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41
IXFR, AXFR, ANY = 251, 252, 255
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16

DNS_VERSION = "1.1.0"          # SPEC §2.2, schema version served at dns-version.<zone>
DNS_VERSION_TTL = 28800
MAX_CNAME_CHAIN = 10           # CoreDNS maxCnameChainLength

RR = tuple[str, int, int, Any]  # (owner, type, ttl, rdata)


@dataclass(slots=True)
class Response:
    rcode: int = NOERROR
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    authoritative: bool = True
    forward: bool = False          # the name is outside every served zone
    chase: tuple[str, int] | None = None   # out-of-zone CNAME target to resolve upstream
    fallthrough: bool = False      # a NXDOMAIN in a --fallthrough zone: the forwarder's to answer
    # What the answer was read from, as snapshot.Store names changes (see snapshot.Dep): the
    # packet cache keeps it exactly as long as none of these changes.
    deps: list = field(default_factory=list)


def answer(snap: Snapshot, qname: str, qtype: int) -> Response:
    """``qname`` is the question name exactly as sent (case preserved, trailing dot optional)."""
    if not qname.endswith("."):
        qname += "."
    lower = qname.lower()
    if snap.hosts is not None:
        # --hosts answers first, for any name; whether it knew the name is itself a dep.
        resp = _hosts(snap, qname, lower, qtype)
        if resp is not None:
            return resp
    hit = names.split(lower, snap.zones)
    if hit is None:
        resp = Response(REFUSED, authoritative=False, forward=True)
        if snap.hosts is not None:
            resp.deps.append((HOSTS, lower))
        return resp
    if qtype in (AXFR, IXFR):
        return Response(REFUSED)               # zone transfer is a non-goal (§3.8)
    zone, labels = hit
    spelled = qname[len(qname) - len(zone) - 1:-1]       # the zone as spelled in the query
    resp = Response()
    if snap.hosts is not None:
        resp.deps.append((HOSTS, lower))
    _answer_into(snap, resp, qname, qtype, zone, spelled, labels, set())
    return resp


def _hosts(snap: Snapshot, qname: str, lower: str, qtype: int) -> Response | None:
    """A name of the hosts file: its addresses, NODATA for other types (CoreDNS hosts); a
    reverse name of one of its addresses: PTR. Anything else falls through (None)."""
    hosts = snap.hosts
    ttl = snap.config.ttl
    addrs = hosts.names.get(lower)
    if addrs is not None:
        resp = Response(deps=[(HOSTS, lower)])
        if qtype in (A, AAAA):
            want6 = qtype == AAAA
            resp.answer.extend((qname, qtype, ttl, ip) for ip in addrs if (":" in ip) == want6)
        return resp
    if qtype == PTR:
        targets = hosts.reverse.get(lower)
        if targets is not None:
            return Response(answer=[(qname, PTR, ttl, t) for t in targets], deps=[(HOSTS, lower)])
    return None


def _soa(snap: Snapshot, spelled: str) -> RR:
    ttl = snap.config.ttl
    return (spelled + ".", SOA, min(ttl, 300),
            (f"ns.dns.{spelled}.", f"hostmaster.{spelled}.", snap.version & 0xFFFFFFFF,
             7200, 1800, 86400, ttl))


def _answer_into(snap: Snapshot, resp: Response, qname: str, qtype: int, zone: str,
                 spelled: str, labels: list[str], chain: set[str]) -> None:
    ttl = snap.config.ttl
    domain = snap.config.domain
    before = len(resp.answer)                   # a chased CNAME may already stand in front
    cluster = zone == domain or zone in snap.config.extra_zones
    if cluster:
        node = _cluster_node(snap, labels, resp.deps)
    else:
        node = _reverse_node(snap, zone, labels, resp.deps)
        if node is not None and node is not ENT:
            if qtype == PTR:    # PTR data uses the configured zone, not the query's spelling
                resp.answer.extend((qname, PTR, ttl, f"{t}.{domain}.") for t in node.addrs)
            else:
                resp.authority.append(_soa(snap, spelled))
            return
    if node is None:
        # The negative answer (RFC 2308 §2.1) - SERVFAIL until the first full API listing, so
        # that a client never caches a NXDOMAIN for a name that exists (CoreDNS notSynced).
        resp.rcode = NXDOMAIN if snap.synced else SERVFAIL
        resp.authority.append(_soa(snap, spelled))
        resp.fallthrough = snap.synced and snap.config.falls_through(qname.lower())
        return

    if not labels:                              # the apex
        if qtype == SOA:
            resp.deps.append(SERIAL)
            resp.answer.append(_soa(snap, spelled))
            return
        if qtype == NS:
            resp.deps.append(APEX_NS)
            suffix = spelled if cluster else domain
            for target, glue in snap.ns_records:
                owner = f"{target}.{suffix}."
                resp.answer.append((qname, NS, ttl, owner))
                resp.additional.extend((owner, A if ":" not in ip else AAAA, ttl, ip) for ip in glue)
            return
    if qtype in (A, AAAA):
        if node.cname:
            _cname(snap, resp, qname, qtype, node.cname, chain)
            return
        want6 = qtype == AAAA
        resp.answer.extend((qname, qtype, ttl, ip) for ip in node.addrs if (":" in ip) == want6)
    elif qtype == SRV and (node.srv is not None or node.ports):
        srv = node.srv or endpoint_srv(node, ".".join(labels).lower())
        resp.answer.extend((qname, SRV, ttl, (p, w, port, f"{t}.{spelled}."))
                           for p, w, port, t in srv.records)
        resp.additional.extend((f"{t}.{spelled}.", AAAA if ":" in ip else A, ttl, ip)
                               for t, ip in srv.additional)
    elif qtype == CNAME and node.cname:
        resp.answer.append((qname, CNAME, ttl, node.cname + "."))
    elif qtype == TXT and labels == ["dns-version"]:
        resp.answer.append((qname, TXT, DNS_VERSION_TTL, (DNS_VERSION,)))
    if len(resp.answer) == before:
        resp.authority.append(_soa(snap, spelled))      # NODATA (RFC 2308 §2.2), also after a CNAME (Q4)


def _cname(snap: Snapshot, resp: Response, qname: str, qtype: int, target: str, chain: set[str]) -> None:
    """ExternalName A/AAAA: the CNAME, then the target's records (§3.5)."""
    resp.answer.append((qname, CNAME, snap.config.ttl, target + "."))
    chain.add(qname.lower())
    hit = names.split(target + ".", snap.zones)
    if hit is None:
        resp.chase = (target + ".", qtype)     # the server resolves it through the forwarder
        return
    if target + "." in chain or len(chain) >= MAX_CNAME_CHAIN:
        return                                 # loop or over-long chain: stop with what we have
    zone, labels = hit
    # In-zone target: chase internally; names are lower case, so the zone spelling is the zone.
    _answer_into(snap, resp, target + ".", qtype, zone, zone, labels, chain)


def _cluster_node(snap: Snapshot, labels: list[str], deps: list) -> Node | None:
    n = len(labels)
    if n == 0:
        return ENT
    top = labels[-1]
    if top in ("svc", "pod"):
        # svc.<zone> and pod.<zone> always exist; <ns>.svc|pod.<zone> iff the namespace does.
        if n == 1:
            return ENT
        namespace = labels[-2]
        if namespace not in snap.namespaces or n == 2 or top == "pod":
            deps.append(namespace)              # the namespace's existence
            if namespace not in snap.namespaces:
                return None
            return ENT if n == 2 else _pod_node(snap, labels, deps)
        # Below an existing namespace, a Service's names depend on its key alone: a changed
        # namespace drops the cached answers of every Service key in it (PacketCache.sync).
        return _service_node(snap, labels, deps)
    if n == 1 and top == "dns-version":
        return ENT                              # TXT handled by the caller; other types NODATA (Q1)
    if top == "dns":
        if n == 1:
            return ENT
        if n == 2 and labels[0] == "ns":
            return Node(addrs=snap.config.ns_addresses)     # the SOA MNAME resolves (§3.8)
    return None


def _service_node(snap: Snapshot, labels: list[str], deps: list) -> Node | None:
    """<svc>.<ns>.svc, <ep>.<svc>.<ns>.svc and <port>.<proto>.<svc>.<ns>.svc."""
    n = len(labels)
    key = (labels[-2], labels[-3])
    deps.append(key)
    rec = snap.services.get(key)
    if rec is None or rec.node is None:
        return None
    if n == 3:
        return rec.node
    if rec.node.cname:
        return None                             # nothing below an ExternalName (PR #6162)
    if n == 4:
        return rec.endpoints.get(labels[0])
    if n == 5:
        return rec.ports.get(names.port_proto(labels[0], labels[1]))
    return None


def _pod_node(snap: Snapshot, labels: list[str], deps: list) -> Node | None:
    """<a-b-c-d>.<ns>.pod per --pods (§3.7)."""
    if len(labels) != 3 or snap.config.pods == "disabled":
        return None
    ip = names.pod_ip(labels[0])
    if ip is None:
        return None
    if snap.config.pods == "verified":
        deps.append((labels[1], ip))
        if (labels[1], ip) not in snap.pods:
            return None
    return Node(addrs=(ip,))


def _reverse_node(snap: Snapshot, zone: str, labels: list[str], deps: list) -> Node | None:
    if not labels:
        return ENT
    ip = names.reverse_ip(zone, labels)
    if ip is None:
        return None
    deps.append(ip)
    targets = snap.ptr.get(ip)                  # one target, or a tuple of them (snapshot.Store)
    if not targets:
        return None
    # PTR targets ride in ``addrs``; the caller reads them only for reverse zones.
    return Node(addrs=(targets,) if isinstance(targets, str) else targets)
