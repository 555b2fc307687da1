"""A synthetic cluster: N services, M endpoints, and every DNS record it implies.

One model feeds everything the benchmark needs, so every server is asked about the same names:
``write_manifests`` gives kdns its input, ``records`` gives the peers (dnsmasq, unbound, knot)
the same names as static data, and the workloads pick their questions from the same model.

The mix follows what clusters look like: most services are ClusterIP with one to three named
ports and a deployment's worth of endpoints (dashed-IP endpoint names, dns-behavior.md §3.4); a
share are headless, half of them StatefulSet-style (endpoint hostnames ``<svc>-<i>``), half not.
Endpoint counts per service are skewed (a few big services, many small ones), as in real
clusters. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

DOMAIN = "cluster.local"
SERVICE_NET = ipaddress.ip_network("10.96.0.0/12")
# /14: room for 100,000+ endpoints; both nets sit in 10/8, so one reverse zone covers them.
POD_NET = ipaddress.ip_network("10.244.0.0/14")
REVERSE_ZONE = "10.in-addr.arpa"
SLICE_MAX = 100                      # the EndpointSlice controller's default maxEndpointsPerSlice
HEADLESS_SHARE = 0.15

NAMESPACES = ("default", "prod", "staging", "dev", "payments", "search", "monitoring",
              "ingress", "data", "ml")
WORDS = ("web", "api", "auth", "cart", "checkout", "search", "db", "cache", "queue", "worker",
         "gateway", "billing", "orders", "users", "inventory", "catalog", "payments", "notify",
         "metrics", "logs", "frontend", "backend", "session", "profile", "media", "upload",
         "ledger", "pricing", "shipping", "reviews", "recommend", "ads", "feed", "chat", "mail")
# (name, port, protocol, targetPort) as real charts name them.
PORT_SETS = (
    (("http", 80, "TCP", 8080),),
    (("http", 80, "TCP", 8080), ("metrics", 9090, "TCP", 9090)),
    (("grpc", 9000, "TCP", 9000), ("http", 8080, "TCP", 8080)),
    (("https", 443, "TCP", 8443), ("http", 80, "TCP", 8080), ("metrics", 9100, "TCP", 9100)),
    (("redis", 6379, "TCP", 6379),),
    (("postgres", 5432, "TCP", 5432),),
    (("dns", 53, "UDP", 5353), ("dns-tcp", 53, "TCP", 5353)),
)


@dataclass(frozen=True, slots=True)
class Port:
    name: str
    port: int
    protocol: str
    target_port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    hostname: str                    # "" -> the dashed-IP name

    @property
    def label(self) -> str:
        return self.hostname or self.ip.replace(".", "-")


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    cluster_ip: str                  # "None" for headless
    ports: tuple[Port, ...]
    endpoints: tuple[Endpoint, ...]

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{DOMAIN}."

    def endpoint_fqdn(self, ep: Endpoint) -> str:
        return f"{ep.label}.{self.fqdn}"

    def srv_names(self) -> list[tuple[str, Port]]:
        return [(f"_{p.name}._{p.protocol.lower()}.{self.fqdn}", p) for p in self.ports]


@dataclass(slots=True)
class Cluster:
    services: list[Service] = field(default_factory=list)

    @property
    def namespaces(self) -> list[str]:
        return sorted({s.namespace for s in self.services})

    @property
    def endpoint_count(self) -> int:
        return sum(len(s.endpoints) for s in self.services)


def namespace_names(count: int) -> list[str]:
    names = list(NAMESPACES[:count])
    names += [f"team-{i:02d}" for i in range(count - len(names))]
    return names


def generate(services: int, endpoints: int, *, namespaces: int = 0, seed: int = 1) -> Cluster:
    """``services`` services over ``namespaces`` namespaces (default: one per ~200 services,
    3 to 50) holding exactly ``endpoints`` endpoints in total."""
    if services < 1:
        raise ValueError("--services must be at least 1")
    if endpoints < 0 or endpoints > POD_NET.num_addresses - 16:
        raise ValueError(f"--endpoints must be 0..{POD_NET.num_addresses - 16}")
    if services - 1 > SERVICE_NET.num_addresses - 16:
        raise ValueError("--services: too many for the 10.96.0.0/12 service network")
    rng = random.Random(seed)
    ns_list = namespace_names(namespaces or max(3, min(50, services // 200)))
    # Skewed endpoint counts: Pareto weights, then scaled to the exact total.
    weights = [rng.paretovariate(1.3) for _ in range(services)]
    scale = endpoints / sum(weights)
    counts = [int(w * scale) for w in weights]
    for i in rng.sample(range(services), k=min(services, endpoints - sum(counts))):
        counts[i] += 1
    short = endpoints - sum(counts)          # leftover when services < remainder
    counts[0] += short
    used: set[tuple[str, str]] = set()
    pod_ip = int(POD_NET.network_address) + 2
    svc_ip = int(SERVICE_NET.network_address) + 10   # .1 kubernetes, .10 kube-dns by custom
    cluster = Cluster()
    for i in range(services):
        ns = ns_list[i % len(ns_list)]
        word = WORDS[rng.randrange(len(WORDS))]
        name = word
        n = 1
        while (ns, name) in used:
            n += 1
            name = f"{word}-{n}"
        used.add((ns, name))
        headless = rng.random() < HEADLESS_SHARE
        stateful = headless and rng.random() < 0.5
        ports = tuple(Port(*p) for p in PORT_SETS[rng.randrange(len(PORT_SETS))])
        eps = []
        for j in range(counts[i]):
            eps.append(Endpoint(str(ipaddress.ip_address(pod_ip)), f"{name}-{j}" if stateful else ""))
            pod_ip += 1
        if headless:
            cip = "None"
        else:
            cip = str(ipaddress.ip_address(svc_ip))
            svc_ip += 1
        cluster.services.append(Service(ns, name, cip, ports, tuple(eps)))
    return cluster


# --------------------------------------------------------------------------- records

@dataclass(frozen=True, slots=True)
class Record:
    name: str                        # absolute, lower case
    type: str                        # A | SRV | PTR
    data: str                        # zone-file rdata


def ptr_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


def records(cluster: Cluster) -> Iterator[Record]:
    """Every record kdns serves for the cluster (A, SRV, PTR; no AAAA: single-stack), as
    dns-behavior.md §3.1-3.4 and §3.6 define them. Peers get exactly these."""
    for svc in cluster.services:
        if svc.headless:
            if not svc.endpoints:
                continue                 # NXDOMAIN (§3.3): no records at all
            for ep in svc.endpoints:
                yield Record(svc.fqdn, "A", ep.ip)
        else:
            yield Record(svc.fqdn, "A", svc.cluster_ip)
            yield Record(ptr_name(svc.cluster_ip), "PTR", svc.fqdn)
        for ep in svc.endpoints:
            yield Record(svc.endpoint_fqdn(ep), "A", ep.ip)
            yield Record(ptr_name(ep.ip), "PTR", svc.endpoint_fqdn(ep))
        for srv, port in svc.srv_names():
            if svc.headless:
                weight = max(1, 100 // len(svc.endpoints))
                for ep in svc.endpoints:
                    yield Record(srv, "SRV", f"0 {weight} {port.target_port} {svc.endpoint_fqdn(ep)}")
            else:
                yield Record(srv, "SRV", f"0 100 {port.port} {svc.fqdn}")


# --------------------------------------------------------------------------- manifests

def service_doc(svc: Service) -> dict:
    spec: dict = {"type": "ClusterIP", "clusterIP": svc.cluster_ip, "clusterIPs": [svc.cluster_ip],
                  "selector": {"app": svc.name},
                  "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol,
                             "targetPort": p.target_port} for p in svc.ports]}
    if not svc.headless:
        spec["ipFamilies"] = ["IPv4"]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc.name, "namespace": svc.namespace, "labels": {"app": svc.name}},
            "spec": spec}


def slice_docs(svc: Service) -> Iterator[dict]:
    ports = [{"name": p.name, "port": p.target_port, "protocol": p.protocol} for p in svc.ports]
    for k in range(0, len(svc.endpoints), SLICE_MAX):
        eps = []
        for ep in svc.endpoints[k:k + SLICE_MAX]:
            item = {"addresses": [ep.ip], "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": f"node-{int(ipaddress.ip_address(ep.ip)) % 50}",
                    "targetRef": {"kind": "Pod", "namespace": svc.namespace,
                                  "name": f"{svc.name}-{ep.label}" if not ep.hostname else ep.hostname}}
            if ep.hostname:
                item["hostname"] = ep.hostname
            eps.append(item)
        yield {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": f"{svc.name}-{k // SLICE_MAX:05x}", "namespace": svc.namespace,
                            "labels": {"kubernetes.io/service-name": svc.name,
                                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
               "addressType": "IPv4", "ports": ports, "endpoints": eps}


def documents(cluster: Cluster, namespace: str | None = None) -> Iterator[dict]:
    """Every object of the cluster as the API would list it: each Namespace, then its
    Services, each followed by its EndpointSlices (or those of one ``namespace``)."""
    for ns in [namespace] if namespace else cluster.namespaces:
        yield {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        for svc in cluster.services:
            if svc.namespace == ns:
                yield service_doc(svc)
                yield from slice_docs(svc)


def write_manifests(cluster: Cluster, directory: Path) -> list[Path]:
    """One ``kind: List`` YAML file per namespace, as ``kubectl get svc,endpointslices -o yaml``
    would give. Items are written in YAML flow style (JSON syntax is valid YAML), which keeps
    writing 100,000 endpoints fast without changing what a YAML reader sees."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ns in sorted(cluster.namespaces):
        path = directory / f"{ns}.yaml"
        with path.open("w", encoding="utf-8") as out:
            out.write("apiVersion: v1\nkind: List\nitems:\n")
            for doc in documents(cluster, ns):
                out.write("- " + json.dumps(doc, separators=(", ", ": ")) + "\n")
        paths.append(path)
    return paths
