"""The cluster as DNS sees it: frozen, DNS-only objects stripped from API JSON at the edge.

Both sources (manifest files and the API watch) call the same ``*_from_dict`` functions, so a
Service read from a file and one read from the API are the same object. Only fields that
answer a DNS query or a kubelet env var are kept: every field costs memory times every object
in a large cluster (design.md, "strip at the edge").

Bad input raises ``FieldError`` naming the field path (``spec.ports[1].port``); the source adds
the file, the document and the object.
"""

from __future__ import annotations

import ipaddress
import re
import reprlib
import sys
from dataclasses import dataclass, field
from collections.abc import Mapping   # typing's alias costs 2.5x per isinstance
from typing import Any

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PROTOCOLS = ("TCP", "UDP", "SCTP")
# ValidateDNS1123Label / DNS1035Label: lower-case alphanumerics and '-', at most 63.
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# A value quoted in an error is cut to a prefix: a manifest's 100 MB field (or a YAML alias
# bomb's billion-element list) must give a one-line error, not a 200 MB line.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2


def short(value: Any) -> str:
    """repr(value) for the short values of real manifests; a bounded prefix of long ones."""
    text = _SHORT.repr(value)
    return text if len(text) <= 160 else text[:140] + "..." + text[-10:]


def short_str(value: Any) -> str:
    """str(value) for a name in a message (as "Service/ns/name"), bounded like ``short``."""
    if isinstance(value, str):
        return value if len(value) <= 80 else value[:60] + "..." + value[-10:]
    return short(value)


class FieldError(ValueError):
    """A bad field in one object; ``path`` is the JSON path inside the object."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str          # "" when unnamed
    port: int          # Service port (Service) or target port (EndpointSlice); -1 = portless
    protocol: str      # "TCP" | "UDP" | "SCTP"; "" in the manifest means TCP


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str                          # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ip: str                    # spec.clusterIP verbatim ("" and "None" are meaningful to env)
    cluster_ips: tuple[str, ...]       # spec.clusterIPs, or (clusterIP,) when absent
    external_name: str
    ports: tuple[ServicePort, ...]
    publish_not_ready: bool = False
    allocated: bool = False            # clusterIP chosen by kdns (manifest without one)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def headless(self) -> bool:
        return self.type != "ExternalName" and bool(self.cluster_ips) and self.cluster_ips[0] == "None"

    @property
    def external(self) -> bool:
        return self.type == "ExternalName"

    @property
    def addresses(self) -> tuple[str, ...]:
        """The cluster IPs that are addresses (canonical text), for A/AAAA/PTR."""
        if self.external or self.headless:
            return ()
        ips = self.cluster_ips
        if len(ips) == 1 and type(ips[0]) is str and _IPV4.fullmatch(ips[0]):
            return ips                         # canonical already (the common case): as it is
        out = []
        for ip in ips:
            if ip and ip != "None":
                out.append(ipaddress.ip_address(ip).compressed)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]         # canonical text (RFC 5952 for IPv6)
    ready: bool                        # conditions.ready; absent (nil) counts as ready
    hostname: str = ""
    pod_name: str = ""                 # targetRef.name when < 64 chars (endpoint_pod_names)


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str                  # label kubernetes.io/service-name
    address_type: str                  # IPv4 | IPv6 | FQDN (FQDN slices are ignored)
    ports: tuple[ServicePort, ...]     # target ports; empty = sentinel "no ports"
    endpoints: tuple[Endpoint, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    ip: str                            # status.podIP, canonical; "" when none
    active: bool                       # not terminating, phase not Succeeded/Failed/Unknown
    hostname: str = ""
    subdomain: str = ""
    enable_service_links: bool = True
    containers: tuple["Container", ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    value: str | None                  # None when the var comes from valueFrom (not modelled)


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    env: tuple[EnvVar, ...] = ()


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return ("", self.name)


@dataclass(slots=True)
class Cluster:
    """A mutable bag of objects as a source sees them, keyed by (namespace, name)."""

    services: dict[tuple[str, str], Service] = field(default_factory=dict)
    slices: dict[tuple[str, str], EndpointSlice] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers

def _get(obj: Mapping[str, Any], key: str, path: str, kind: type | tuple, default: Any = None) -> Any:
    # type() before isinstance(): this runs ~10 times per endpoint of a 100,000-endpoint
    # cluster, and an ABC's isinstance is slow.
    value = obj.get(key, default) if type(obj) is dict or isinstance(obj, Mapping) else default
    if value is None:
        return default
    if type(value) is kind:
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise FieldError(path + key, f"must be {_article(names)}, got {type(value).__name__} {short(value)}")
    return value


def _article(names: str) -> str:
    nice = {"str": "string", "int": "integer", "list": "list", "dict": "mapping", "bool": "boolean"}
    words = [nice.get(n, n) for n in names.split(" or ")]
    return " or ".join(("an " if w[0] in "aeiou" else "a ") + w for w in words)


def _mapping(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    return _get(obj, key, path, dict, {})


def _name(meta: Mapping[str, Any], what: str = "metadata.name") -> str:
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not name:
        raise FieldError(what, "is required")
    if not isinstance(name, str):
        raise FieldError(what, f"must be a string, got {short(name)}")
    return name


def _namespace(meta: Mapping[str, Any]) -> str:
    ns = meta.get("namespace") or "default"
    if not isinstance(ns, str) or not _DNS1123_LABEL.match(ns) or len(ns) > 63:
        raise FieldError("metadata.namespace", f"must be a DNS-1123 label, got {short(ns)}")
    return _intern(ns)


# Canonical dotted-quad IPv4 (no leading zeros, each part <= 255): already what
# ipaddress.ip_address(value).compressed would give, at a tenth of the cost.
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def _ip(value: Any, path: str) -> str:
    if type(value) is str and _IPV4.fullmatch(value):
        return value
    if not isinstance(value, str):
        raise FieldError(path, f"must be an IP address string, got {short(value)}")
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        raise FieldError(path, f"invalid IP address {short(value)}") from None


def _port_number(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise FieldError(path, f"must be a port number 1-65535, got {short(value)}")
    return value


def _protocol(value: Any, path: str) -> str:
    if value in (None, ""):
        return "TCP"
    if value not in PROTOCOLS:
        raise FieldError(path, f"must be one of TCP, UDP, SCTP, got {short(value)}")
    return PROTOCOLS[PROTOCOLS.index(value)]       # the constant, not the decoded copy


# Strings and port tuples that thousands of objects hold alike (namespaces, "ClusterIP",
# "http", one Service's ports and its slice's) are kept once: measured at 10,000 Services,
# one copy per object was ~7 MB of RSS. Bounded, so that odd input cannot grow it for ever.
_intern = sys.intern


def shared_values(cap: int):
    """A function that returns the one kept copy of an equal (hashable) value, keeping at most
    ``cap`` of them; past that, values are returned as they are."""
    kept: dict = {}

    def shared(value):
        got = kept.get(value)
        if got is None:
            got = value
            if len(kept) < cap:
                kept[value] = value
        return got
    return shared


_shared = shared_values(8192)


def _ports(items: Any, path: str, *, service: bool) -> tuple[ServicePort, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise FieldError(path, f"must be a list, got {type(items).__name__}")
    out = []
    for i, p in enumerate(items):
        here = f"{path}[{i}]"
        if not isinstance(p, Mapping):
            raise FieldError(here, "must be a mapping")
        name = p.get("name") or ""
        if not isinstance(name, str) or (name and (not _DNS1123_LABEL.match(name) or len(name) > 63)):
            raise FieldError(here + ".name", f"must be a DNS-1123 label, got {short(name)}")
        if service or p.get("port") is not None:
            number = _port_number(p.get("port"), here + ".port")
        else:
            number = -1
        out.append(_shared(ServicePort(_intern(name), number, _protocol(p.get("protocol"), here + ".protocol"))))
    return _shared(tuple(out))


# --------------------------------------------------------------------------- kinds

def service_from_dict(obj: Mapping[str, Any]) -> Service:
    meta = _mapping(obj, "metadata", "")
    name = _name(meta)
    if not _DNS1123_LABEL.match(name) or len(name) > 63:
        raise FieldError("metadata.name", f"must be a DNS-1035 label, got {short(name)}")
    ns = _namespace(meta)
    spec = _mapping(obj, "spec", "")
    stype = _get(spec, "type", "spec.", str, "ClusterIP")
    if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        raise FieldError("spec.type", f"must be ClusterIP, NodePort, LoadBalancer or ExternalName, got {short(stype)}")
    ports = _ports(spec.get("ports"), "spec.ports", service=True)
    external_name = ""
    cluster_ip = ""
    cluster_ips: tuple[str, ...] = ()
    if stype == "ExternalName":
        external_name = _get(spec, "externalName", "spec.", str, "")
        if not external_name:
            raise FieldError("spec.externalName", "is required for type ExternalName")
        external_name = external_name.rstrip(".").lower()
    else:
        cluster_ip = _get(spec, "clusterIP", "spec.", str, "")
        if cluster_ip and cluster_ip != "None":
            _ip(cluster_ip, "spec.clusterIP")
        ips = _get(spec, "clusterIPs", "spec.", list, None)
        if ips is None:
            ips = [cluster_ip] if cluster_ip else []
        for i, ip in enumerate(ips):
            if ip != "None":
                _ip(ip, f"spec.clusterIPs[{i}]")
        if "None" in ips and ips != ["None"]:
            raise FieldError("spec.clusterIPs", f"'None' must be the only entry, got {short(ips)}")
        if cluster_ip and ips and cluster_ip != ips[0]:
            raise FieldError("spec.clusterIP", f"{short(cluster_ip)} must equal spec.clusterIPs[0] {short(ips[0])}")
        if len(ips) > 2:
            raise FieldError("spec.clusterIPs", "at most two entries (one per family)")
        cluster_ips = tuple(ips)
        if ips and (not cluster_ip or cluster_ip == ips[0]):
            cluster_ip = ips[0]                 # one string for both fields
    pna = _get(spec, "publishNotReadyAddresses", "spec.", bool, False)
    return Service(ns, name, _intern(stype), cluster_ip, cluster_ips, external_name, ports, pna)


def endpointslice_from_dict(obj: Mapping[str, Any]) -> EndpointSlice:
    meta = _mapping(obj, "metadata", "")
    name = _name(meta)
    ns = _namespace(meta)
    labels = _mapping(meta, "labels", "metadata.")
    service_name = labels.get(SERVICE_NAME_LABEL)
    if not service_name or not isinstance(service_name, str):
        raise FieldError(f"metadata.labels[{SERVICE_NAME_LABEL}]", "is required: it links the slice to its Service")
    address_type = _get(obj, "addressType", "", str, "")
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        raise FieldError("addressType", f"must be IPv4, IPv6 or FQDN, got {short(address_type)}")
    ports = _ports(obj.get("ports"), "ports", service=False)
    endpoints = []
    items = _get(obj, "endpoints", "", list, [])
    v4 = address_type == "IPv4"
    for i, ep in enumerate(items):
        fast = _endpoint_v4(ep) if v4 and type(ep) is dict else None
        if fast is not None:
            endpoints.append(fast)
            continue
        here = f"endpoints[{i}]"
        if not isinstance(ep, Mapping):
            raise FieldError(here, "must be a mapping")
        addrs = _get(ep, "addresses", here + ".", list, [])
        if not addrs:
            raise FieldError(here + ".addresses", "must list at least one address")
        if address_type == "FQDN":
            canon = tuple(str(a) for a in addrs)
        else:
            canon = tuple(_ip(a, f"{here}.addresses[{j}]") for j, a in enumerate(addrs))
            want = 4 if address_type == "IPv4" else 6
            for j, a in enumerate(canon):
                if (6 if ":" in a else 4) != want:         # canonical text: IPv6 has a colon
                    raise FieldError(f"{here}.addresses[{j}]", f"{a} is not an {address_type} address")
        conditions = _get(ep, "conditions", here + ".", dict, {})
        ready = _get(conditions, "ready", here + ".conditions.", bool, True)
        hostname = _get(ep, "hostname", here + ".", str, "")
        if hostname and (not _DNS1123_LABEL.match(hostname) or len(hostname) > 63):
            raise FieldError(here + ".hostname", f"must be a DNS-1123 label, got {short(hostname)}")
        ref = _get(ep, "targetRef", here + ".", dict, {})
        pod_name = ref.get("name") or ""
        if not isinstance(pod_name, str) or len(pod_name) >= 64 or not _DNS1123_LABEL.match(pod_name or "a"):
            pod_name = ""   # CoreDNS keeps targetRef.name only when it is a usable label (< 64)
        endpoints.append(Endpoint(canon, ready, hostname, pod_name))
    return EndpointSlice(ns, name, service_name, _intern(address_type), ports, tuple(endpoints))


def _endpoint_v4(ep: dict) -> Endpoint | None:
    """The loop body below for the usual IPv4 endpoint, without building a field path per
    field (100,000 endpoints: a third of a cold start). None when anything is unusual: the
    exact path then words the problem, or accepts what this one did not bother with."""
    addrs = ep.get("addresses")
    if type(addrs) is not list or not addrs:
        return None
    for a in addrs:
        if type(a) is not str or not _IPV4.fullmatch(a):
            return None
    conditions = ep.get("conditions")
    ready = True
    if conditions is not None:
        if type(conditions) is not dict:
            return None
        ready = conditions.get("ready")
        if ready is None:
            ready = True
        elif type(ready) is not bool:
            return None
    hostname = ep.get("hostname")
    if hostname is None:
        hostname = ""
    elif type(hostname) is not str or (hostname and (len(hostname) > 63 or not _DNS1123_LABEL.match(hostname))):
        return None
    ref = ep.get("targetRef")
    pod_name = ""
    if ref is not None:
        if type(ref) is not dict:
            return None
        pod_name = ref.get("name") or ""
        if not isinstance(pod_name, str) or len(pod_name) >= 64 or not _DNS1123_LABEL.match(pod_name or "a"):
            pod_name = ""
    return Endpoint(tuple(addrs), ready, hostname, pod_name)


def endpoints_from_dict(obj: Mapping[str, Any]) -> list[EndpointSlice]:
    """Legacy v1 Endpoints -> one EndpointSlice per subset (per family), as the mirroring
    controller would write them: addresses are ready, notReadyAddresses are not."""
    meta = _mapping(obj, "metadata", "")
    name = _name(meta)
    ns = _namespace(meta)
    subsets = _get(obj, "subsets", "", list, [])
    out: list[EndpointSlice] = []
    for i, subset in enumerate(subsets):
        here = f"subsets[{i}]"
        if not isinstance(subset, Mapping):
            raise FieldError(here, "must be a mapping")
        ports = _ports(subset.get("ports"), here + ".ports", service=False)
        by_family: dict[int, list[Endpoint]] = {4: [], 6: []}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for j, addr in enumerate(_get(subset, key, here + ".", list, [])):
                where = f"{here}.{key}[{j}]"
                if not isinstance(addr, Mapping):
                    raise FieldError(where, "must be a mapping")
                ip = _ip(addr.get("ip"), where + ".ip")
                hostname = _get(addr, "hostname", where + ".", str, "")
                ref = _get(addr, "targetRef", where + ".", dict, {})
                pod_name = ref.get("name") or ""
                if not isinstance(pod_name, str) or len(pod_name) >= 64:
                    pod_name = ""
                fam = ipaddress.ip_address(ip).version
                by_family[fam].append(Endpoint((ip,), ready, hostname, pod_name))
        for fam, eps in by_family.items():
            if eps:
                out.append(EndpointSlice(ns, f"{name}-endpoints-{i}-v{fam}", name,
                                         "IPv4" if fam == 4 else "IPv6", ports, tuple(eps)))
    return out


def namespace_from_dict(obj: Mapping[str, Any]) -> Namespace:
    meta = _mapping(obj, "metadata", "")
    name = _name(meta)
    if not _DNS1123_LABEL.match(name) or len(name) > 63:
        raise FieldError("metadata.name", f"must be a DNS-1123 label, got {short(name)}")
    return Namespace(name)


def pod_from_dict(obj: Mapping[str, Any], *, with_env: bool = False) -> Pod:
    """``with_env`` keeps the containers' env (for ``kdns env --pod``); a pod watch never needs it."""
    meta = _mapping(obj, "metadata", "")
    name = _name(meta)
    ns = _namespace(meta)
    spec = _mapping(obj, "spec", "")
    status = _mapping(obj, "status", "")
    ip = status.get("podIP") or ""
    ip = _ip(ip, "status.podIP") if ip else ""
    phase = status.get("phase") or "Pending"
    terminating = meta.get("deletionTimestamp") is not None
    active = bool(ip) and not terminating and phase not in ("Succeeded", "Failed", "Unknown")
    links = _get(spec, "enableServiceLinks", "spec.", bool, True)
    containers = []
    for i, c in enumerate(_get(spec, "containers", "spec.", list, []) if with_env else ()):
        here = f"spec.containers[{i}]"
        if not isinstance(c, Mapping):
            raise FieldError(here, "must be a mapping")
        cname = _get(c, "name", here + ".", str, "")
        env = []
        for j, e in enumerate(_get(c, "env", here + ".", list, [])):
            where = f"{here}.env[{j}]"
            if not isinstance(e, Mapping) or not isinstance(e.get("name"), str) or not e.get("name"):
                raise FieldError(where + ".name", "is required")
            if "valueFrom" in e and e.get("value") in (None, ""):
                env.append(EnvVar(e["name"], None))
            else:
                value = e.get("value")
                if value is None:
                    value = ""
                if not isinstance(value, str):
                    raise FieldError(where + ".value", f"must be a string, got {short(value)}")
                env.append(EnvVar(e["name"], value))
        containers.append(Container(cname, tuple(env)))
    return Pod(ns, name, ip, active,
               _get(spec, "hostname", "spec.", str, ""), _get(spec, "subdomain", "spec.", str, ""),
               links, tuple(containers))


def service_without_ip(svc: Service) -> bool:
    """A manifest Service that an API server would still have to allocate an address for."""
    return not svc.external and not svc.cluster_ips
