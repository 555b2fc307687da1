"""The query mixes, as dnsperf data files, and what a correct server answers to each question.

(a)     hot cluster names, A: the few services every pod talks to.
(a-mix) the same hot services, asked A / SRV (_port._proto) / PTR (of the cluster IP).
(b)     a pod's search walk (ndots:5, dns-behavior.md §7): glibc asks A and AAAA for every
        search suffix before the name as written, so most answers are NXDOMAIN; the external
        names at the end of each walk need an upstream.
(c)     A for services drawn uniformly at random (over the first 10,000 services).
(e)     cold: A for every A name of the cluster (each service with an address and each endpoint,
        ``<ep>.<svc>.<ns>.svc.<zone>``), drawn uniformly at random: 110,000 names at 10,000
        services / 100,000 endpoints, far more than the packet cache holds, so most answers
        take the miss path.
(d)     churn: ``hot_names`` asked while the API changes other Services (kdns/bench/live.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from kdns.bench.cluster import DOMAIN, Cluster, Record, Service, ptr_name

WORKLOADS = ("a", "a-mix", "b", "c", "e")
DESCRIPTIONS = {
    "a": "hot cluster names, A",
    "a-mix": "hot names, A/SRV/PTR mix",
    "b": "search walk (mostly NXDOMAIN) + external",
    "c": "uniform random A over <=10k services",
    "e": "cold: uniform random A over every service and endpoint name",
}
COLD_QUERIES = 500_000              # dnsperf loops over its file: 110k names, each asked ~4.5 times
HOT = 32
# The "internet": answered by the upstream dnsmasq (documentation addresses, RFC 5737 / 3849).
# Every name has A and AAAA: a bare NODATA from dnsmasq carries no SOA, so no resolver may cache
# it (RFC 2308 §5), and real sites' negative answers do carry one.
EXTERNAL = {f"{n}.": (f"192.0.2.{i + 1}", f"2001:db8::{i + 1:x}") for i, n in enumerate((
    "www.example.com", "api.github.com", "registry-1.docker.io", "s3.amazonaws.com", "pypi.org",
    "login.microsoftonline.com", "storage.googleapis.com", "sentry.io", "api.stripe.com",
    "hooks.slack.com", "quay.io", "auth.docker.io", "sts.amazonaws.com", "gcr.io",
    "oauth2.googleapis.com", "ghcr.io", "dl.k8s.io", "api.segment.io", "cdn.jsdelivr.net",
    "time.cloudflare.com"))}


@dataclass(frozen=True, slots=True)
class Expect:
    rcode: str           # NOERROR | NXDOMAIN
    answers: int         # records of the asked type in the answer section


class Expectations:
    """What kdns (and a peer serving the same records) must answer, from the model."""

    def __init__(self, records: list[Record]):
        self.rrs: dict[tuple[str, str], int] = {}
        self.names: set[str] = {DOMAIN + "."}
        for r in records:
            self.rrs[(r.name, r.type)] = self.rrs.get((r.name, r.type), 0) + 1
            self._add_name(r.name)
        for name in EXTERNAL:
            self.rrs[(name, "A")] = 1
            self.rrs[(name, "AAAA")] = 1

    def _add_name(self, name: str) -> None:
        # Empty non-terminals exist too (NODATA, not NXDOMAIN), up to the zone apex.
        labels = name.rstrip(".").split(".")
        for i in range(len(labels)):
            self.names.add(".".join(labels[i:]) + ".")

    def __call__(self, qname: str, qtype: str) -> Expect:
        n = self.rrs.get((qname, qtype), 0)
        if n:
            return Expect("NOERROR", n)
        if qname in EXTERNAL or qname in self.names:
            return Expect("NOERROR", 0)
        return Expect("NXDOMAIN", 0)


def _hot(cluster: Cluster, rng: random.Random, count: int = HOT) -> list[Service]:
    live = [s for s in cluster.services if not s.headless or s.endpoints]
    clusterip = [s for s in live if not s.headless]
    headless = [s for s in live if s.headless]
    # Mostly ClusterIP, a few headless: what pods of a typical app resolve.
    pick = rng.sample(clusterip, min(len(clusterip), count - count // 8))
    pick += rng.sample(headless, min(len(headless), count - len(pick)))
    return pick


def hot_services(cluster: Cluster, count: int, seed: int = 7) -> list[Service]:
    """The ``count`` services a churn run asks for (the rest are the ones that change)."""
    return _hot(cluster, random.Random(seed), count)


def a_names(cluster: Cluster) -> list[str]:
    """Every name with an A record: services with an address, and every endpoint."""
    out = []
    for s in cluster.services:
        if s.endpoints or not s.headless:
            out.append(s.fqdn)
        out += [s.endpoint_fqdn(ep) for ep in s.endpoints]
    return out


def build(name: str, cluster: Cluster, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    if name == "a":
        hot = _hot(cluster, rng)
        return [(s.fqdn, "A") for s in hot] * 100
    if name == "a-mix":
        out = []
        for s in _hot(cluster, rng):
            out += [(s.fqdn, "A")] * 12
            srv = s.srv_names()
            out += [(srv[i % len(srv)][0], "SRV") for i in range(5)]
            if not s.headless:
                out += [(ptr_name(s.cluster_ip), "PTR")] * 3
        rng.shuffle(out)
        return out * 10
    if name == "b":
        return _search_walks(cluster, rng, lookups=2000)
    if name == "c":
        pool = cluster.services[:10000]
        return [(pool[rng.randrange(len(pool))].fqdn, "A") for _ in range(100_000)]
    if name == "e":
        names = a_names(cluster)
        return [(names[rng.randrange(len(names))], "A") for _ in range(COLD_QUERIES)]
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


def _search_walks(cluster: Cluster, rng: random.Random, lookups: int) -> list[tuple[str, str]]:
    services = [s for s in cluster.services if not s.headless or s.endpoints]
    talked_to = rng.sample(services, min(200, len(services)))
    namespaces = cluster.namespaces
    external = list(EXTERNAL)
    out: list[tuple[str, str]] = []
    for _ in range(lookups):
        ns = rng.choice(namespaces)                       # the asking pod's namespace
        search = [f"{ns}.svc.{DOMAIN}.", f"svc.{DOMAIN}.", f"{DOMAIN}."]
        roll = rng.random()
        if roll < 0.5:                                    # an external name: the whole walk
            name = rng.choice(external)
            tries = [name.rstrip(".") + "." + s for s in search] + [name]
        elif roll < 0.8:                                  # same-namespace short name: first try hits
            local = [s for s in talked_to if s.namespace == ns] or talked_to
            svc = rng.choice(local)
            tries = [f"{svc.name}.{svc.namespace}.svc.{DOMAIN}."]
        else:                                             # <svc>.<ns>: one miss, then a hit
            svc = rng.choice(talked_to)
            short = f"{svc.name}.{svc.namespace}"
            tries = [f"{short}.{search[0]}", f"{short}.{search[1]}"]
        for t in tries:
            out += [(t, "A"), (t, "AAAA")]                # glibc asks both families
    return out


def write(path: Path, queries: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"{n} {t}\n" for n, t in queries))
