"""What the controllers would make of an app's manifests: pods from workloads, stable pod
addresses, and EndpointSlices from Services' selectors (docs/workloads.md names the Kubernetes
source file behind each rule).

Deterministic: the same manifests always give the same pods, names and addresses; the log says
what was derived, and bad input (a selector matching nothing, an unknown targetPort name) is a
warning naming the object, never a failure.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from dataclasses import dataclass, field, replace

from kdns import objects
from kdns.objects import Cluster, Endpoint, EndpointSlice, ServicePort
from kdns.sources.workloads import (READY_ANNOTATION, BarePod, Options, Selector, Template,
                                    Workload)

log = logging.getLogger("kdns.manifests")

# k8s.io/apimachinery/pkg/util/rand: the alphabet of generated name suffixes and of
# SafeEncodeString (no vowels, no 0/1/3: no words, no look-alikes).
ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"
GENERATED_SUFFIX = 5          # apiserver/pkg/storage/names/generate.go randomLength
MAX_GENERATED_BASE = 58       # 63 - randomLength (maxGeneratedNameLength)
MAX_ENDPOINTS_PER_SLICE = 100  # kube-controller-manager --max-endpoints-per-slice default


@dataclass(frozen=True, slots=True)
class DerivedPod:
    namespace: str
    name: str
    ip: str
    hostname: str
    subdomain: str
    labels: tuple[tuple[str, str], ...]
    ports: tuple[tuple[str, int, str], ...]
    ready: bool
    owner: tuple[str, str, str]      # (kind, namespace, name) of the workload, ("Pod", ns, name)
    ordinal: int
    spec_json: str
    node: str = ""


@dataclass(frozen=True, slots=True)
class DerivedEndpoint:
    pod: str
    ip: str
    ready: bool
    hostname: str
    why_ready: str                   # "ready", "kdns.io/ready: false", "publishNotReadyAddresses"


@dataclass
class Derived:
    """What derive made, for the log, `kdns explain` and `kdns env --workload`."""
    pods: dict[tuple[str, str], DerivedPod] = field(default_factory=dict)
    # slice key -> (service key, [DerivedEndpoint]) for every derived slice
    slices: dict[tuple[str, str], tuple[tuple[str, str], list[DerivedEndpoint]]] = field(default_factory=dict)
    workloads: dict[tuple[str, str, str], Workload] = field(default_factory=dict)
    explicit: set[tuple[str, str]] = field(default_factory=set)   # Services with their own slices
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- naming

def safe_encode(text: str) -> str:
    """apimachinery rand.SafeEncodeString: each character to one of ALPHANUMS."""
    return "".join(ALPHANUMS[ord(ch) % len(ALPHANUMS)] for ch in text)


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def pod_template_hash(template: Template) -> str:
    """controller.ComputeHash: SafeEncodeString of the decimal FNV-32a of the template.

    The controller hashes the Go struct as printed by spew (with every defaulted field), which
    only Go can reproduce; kdns hashes the template's canonical JSON instead: the same shape and
    the same stability (a new hash exactly when the template changes), not the same value."""
    return safe_encode(str(fnv32a(template.spec_json.encode())))


def generated_name(base: str, seed: str) -> str:
    """A generateName as the apiserver completes it (names/generate.go): the base cut to 58
    characters, then 5 characters of ALPHANUMS, here drawn from ``seed`` so they are stable."""
    digest = hashlib.sha256(seed.encode()).digest()
    return base[:MAX_GENERATED_BASE] + "".join(ALPHANUMS[b % len(ALPHANUMS)] for b in digest[:GENERATED_SUFFIX])


def _pods_of(w: Workload, nodes: int) -> list[DerivedPod]:
    t = w.template
    labels = dict(t.labels)
    out = []

    def pod(name: str, ordinal: int, *, hostname: str = t.hostname, subdomain: str = t.subdomain,
            extra: dict | None = None, node: str = "") -> DerivedPod:
        all_labels = tuple(sorted({**labels, **(extra or {})}.items()))
        return DerivedPod(w.namespace, name, "", hostname, subdomain, all_labels, t.ports, t.ready,
                          w.key, ordinal, t.spec_json, node)

    if w.kind == "Deployment":
        # deployment/sync.go getNewReplicaSet: the ReplicaSet is <deployment>-<pod-template-hash>,
        # and its pods carry the pod-template-hash label.
        h = pod_template_hash(t)
        rs = f"{w.name}-{h}"
        for i in range(w.count):
            out.append(pod(generated_name(f"{rs}-", f"{w.namespace}/{rs}/{i}"), i,
                           extra={"pod-template-hash": h}))
    elif w.kind == "ReplicaSet":
        for i in range(w.count):
            out.append(pod(generated_name(f"{w.name}-", f"{w.namespace}/{w.name}/{i}"), i))
    elif w.kind == "StatefulSet":
        # statefulset/stateful_set_utils.go: getPodName <set>-<ordinal>; updateIdentity sets
        # hostname = pod name, subdomain = spec.serviceName; the pod-name and pod-index labels.
        for i in range(w.start, w.start + w.count):
            name = f"{w.name}-{i}"
            out.append(pod(name, i, hostname=name, subdomain=w.service_name,
                           extra={"statefulset.kubernetes.io/pod-name": name,
                                  "apps.kubernetes.io/pod-index": str(i)}))
    elif w.kind == "DaemonSet":
        for i in range(nodes):
            out.append(pod(generated_name(f"{w.name}-", f"{w.namespace}/{w.name}/node-{i}"), i,
                           node=f"node-{i}"))
    else:  # Job
        for i in range(w.count):
            if w.indexed:
                # job/indexed_job_utils.go: <job>-<index>-xxxxx, hostname <job>-<index>
                out.append(pod(generated_name(f"{w.name}-{i}-", f"{w.namespace}/{w.name}/{i}"), i,
                               hostname=t.hostname or f"{w.name}-{i}",
                               extra={"batch.kubernetes.io/job-completion-index": str(i)}))
            else:
                out.append(pod(generated_name(f"{w.name}-", f"{w.namespace}/{w.name}/{i}"), i,
                               extra={"job-name": w.name, "batch.kubernetes.io/job-name": w.name}))
    return out


# --------------------------------------------------------------------------- derive

def _allocate_ips(pending: list[DerivedPod], used: set[str], cidr: str) -> list[DerivedPod]:
    """A stable address per pod: namespace/name hashes to a slot; a taken slot moves to the
    next free one, visiting pods in sorted order (as allocate_cluster_ips does for Services)."""
    net = ipaddress.ip_network(cidr, strict=False)
    first, last = 2, net.num_addresses - (2 if net.version == 4 else 1)
    span = last - first + 1
    if span < len(pending):
        raise ValueError(f"--pod-cidr {cidr}: too small for {len(pending)} pods")
    out = []
    for p in sorted(pending, key=lambda p: (p.namespace, p.name)):
        slot = int.from_bytes(hashlib.sha256(f"{p.namespace}/{p.name}".encode()).digest()[:8], "big") % span
        for probe in range(span):
            ip = ipaddress.ip_address(int(net.network_address) + first + (slot + probe) % span).compressed
            if ip not in used:
                break
        used.add(ip)
        out.append(replace(p, ip=ip))
    return out


def _matches(selector: tuple[tuple[str, str], ...], labels: tuple[tuple[str, str], ...]) -> bool:
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector)


def derive(cluster: Cluster, inputs: list, options: Options = Options(),
           warnings: list[str] | None = None) -> Derived:
    """Add the pods and EndpointSlices the controllers would make to ``cluster``, in place."""
    out = Derived()
    out.warnings.extend(warnings or ())
    workloads = sorted((i for i in inputs if isinstance(i, Workload)), key=lambda w: w.key)
    bare = sorted((i for i in inputs if isinstance(i, BarePod)), key=lambda p: p.key)
    selectors = sorted((i for i in inputs if isinstance(i, Selector)), key=lambda s: s.key)
    out.workloads = {w.key: w for w in workloads}

    used = {p.ip for p in cluster.pods.values() if p.ip}
    used |= {a for sl in cluster.slices.values() for ep in sl.endpoints for a in ep.addresses}
    used |= {ip for s in cluster.services.values() for ip in s.addresses}
    pending, fixed = [], []
    for b in bare:
        t = b.template
        written = cluster.pods.get((b.namespace, b.name))
        ip = written.ip if written is not None else b.ip      # canonical text
        dp = DerivedPod(b.namespace, b.name, ip, t.hostname, t.subdomain, t.labels, t.ports,
                        t.ready, b.key, 0, t.spec_json)
        if b.terminal:
            continue                    # ShouldPodBeInEndpoints: terminal pods never are
        (fixed if ip else pending).append(dp)
    for w in workloads:
        made = _pods_of(w, options.nodes)
        for p in made:
            if (p.namespace, p.name) in cluster.pods:
                out.warnings.append(f"{w.kind} {w.namespace}/{w.name}: pod {p.name} is also written "
                                    f"as a Pod; using the written one")
                continue
            pending.append(p)
        what = f"{len(made)} pod{'s' if len(made) != 1 else ''}"
        names = ", ".join(p.name for p in made[:3]) + (", ..." if len(made) > 3 else "")
        out.notes.append(f"derived {what} for {w.kind} {w.namespace}/{w.name}" + (f": {names}" if made else ""))
        if w.kind == "StatefulSet" and w.service_name and (w.namespace, w.service_name) not in cluster.services:
            out.warnings.append(f"StatefulSet {w.namespace}/{w.name}: serviceName {w.service_name!r} "
                                f"names no Service in namespace {w.namespace}: its pods get no "
                                f"<pod>.{w.service_name} names")
    for p in fixed + _allocate_ips(pending, used, options.pod_cidr):
        out.pods[(p.namespace, p.name)] = p
        old = cluster.pods.get((p.namespace, p.name))
        cluster.pods[(p.namespace, p.name)] = objects.Pod(
            p.namespace, p.name, p.ip, True, p.hostname, p.subdomain,
            old.enable_service_links if old else True, old.containers if old else ())
        if p.owner[0] == "Pod" and old is not None and not old.ip:
            out.notes.append(f"gave pod {p.namespace}/{p.name} the address {p.ip} (no status.podIP "
                             f"in its manifest)")
        cluster.namespaces.setdefault(p.namespace, objects.Namespace(p.namespace))

    explicit = {(sl.namespace, sl.service_name) for sl in cluster.slices.values()}
    by_ns: dict[str, list[DerivedPod]] = {}
    for p in sorted(out.pods.values(), key=lambda p: p.name):
        by_ns.setdefault(p.namespace, []).append(p)
    overridden: list[str] = []
    for sel in selectors:
        key = (sel.namespace, sel.name)
        svc = cluster.services.get(key)
        if svc is None or svc.external:
            continue
        if key in explicit:
            out.explicit.add(key)
            # Said only when it matters: pods the selector would have picked are ignored.
            if any(_matches(sel.selector, p.labels) for p in by_ns.get(sel.namespace, [])):
                overridden.append(f"{key[0]}/{key[1]}")
            continue
        _slices_for(cluster, out, sel, svc, by_ns.get(sel.namespace, []))
    if overridden:
        out.notes.append(f"{len(overridden)} Service(s) selecting pods have their own EndpointSlices "
                         f"or Endpoints in the manifests, which win: none derived for "
                         f"{', '.join(overridden[:5])}{', ...' if len(overridden) > 5 else ''}")
    for line in out.notes:
        log.info("%s", line)
    for line in out.warnings:
        log.warning("warning: %s", line)
    return out


def _slices_for(cluster: Cluster, out: Derived, sel: Selector, svc, pods: list[DerivedPod]) -> None:
    """EndpointSlice reconciler (endpointslice/reconciler.go + utils.go podToEndpoint and
    getEndpointPorts) for one Service."""
    shown = ",".join(f"{k}={v}" for k, v in sel.selector)
    matched = [p for p in pods if _matches(sel.selector, p.labels)]
    if not matched:
        out.warnings.append(f"Service {sel.namespace}/{sel.name}: selector {shown} matches no pod "
                            f"in namespace {sel.namespace}: no endpoints")
        return
    groups: dict[tuple[int, tuple], list[tuple[Endpoint, DerivedEndpoint]]] = {}
    missing: dict[tuple, list[str]] = {}
    for p in matched:
        ports = []
        for sp in sel.ports:
            if isinstance(sp.target, int):
                ports.append(ServicePort(sp.name, sp.target, sp.protocol))
                continue
            found = [n for name, n, proto in p.ports if name == sp.target and proto == sp.protocol]
            if found:
                ports.append(ServicePort(sp.name, found[0], sp.protocol))
            else:
                # FindPort fails: the controller leaves that port out of this pod's slice.
                missing.setdefault((sp, p.owner), []).append(p.name)
        # podToEndpoint: ready = publishNotReadyAddresses || (serving && !terminating)
        ready = sel.publish_not_ready or p.ready
        why = "ready" if p.ready else ("publishNotReadyAddresses" if ready else f"{READY_ANNOTATION}: \"false\"")
        # ShouldSetHostname: only under the Service the pod's subdomain names.
        hostname = p.hostname if p.hostname and p.subdomain == sel.name else ""
        ep = Endpoint((p.ip,), ready, hostname, p.name if len(p.name) < 64 else "")
        family = ipaddress.ip_address(p.ip).version
        groups.setdefault((family, tuple(ports)), []).append(
            (ep, DerivedEndpoint(p.name, p.ip, ready, hostname, why)))
    for (sp, owner), pods_ in missing.items():
        port = f"port {sp.name!r}" if sp.name else f"port {sp.port}"
        kind, ns, name = owner
        whose = (f"pod {pods_[0]}" if kind == "Pod" else
                 f"the pods of {kind} {ns}/{name} ({', '.join(pods_[:3])}{', ...' if len(pods_) > 3 else ''})")
        out.warnings.append(f"Service {sel.namespace}/{sel.name}: {port}: targetPort {sp.target!r} "
                            f"names no {sp.protocol} container port of {whose}: their endpoints "
                            f"lack that port")
    made = []
    for n, ((family, ports), eps) in enumerate(groups.items()):
        for start in range(0, len(eps), MAX_ENDPOINTS_PER_SLICE):
            chunk = eps[start:start + MAX_ENDPOINTS_PER_SLICE]
            # getEndpointSlicePrefix: generateName <service>-
            name = generated_name(f"{sel.name}-", f"{sel.namespace}/{sel.name}/{n}/{start}")
            sl = EndpointSlice(sel.namespace, name, sel.name, "IPv4" if family == 4 else "IPv6",
                               ports, tuple(e for e, _ in chunk))
            cluster.slices[sl.key] = sl
            out.slices[sl.key] = ((sel.namespace, sel.name), [d for _, d in chunk])
            made.append(sl)
    ready = sum(1 for e in (ep for sl in made for ep in sl.endpoints) if e.ready)
    total = sum(len(sl.endpoints) for sl in made)
    out.notes.append(f"derived {len(made)} EndpointSlice{'s' if len(made) != 1 else ''} for Service "
                     f"{sel.namespace}/{sel.name}: {total} endpoint{'s' if total != 1 else ''}, "
                     f"{ready} ready")


def pod_document(pod: DerivedPod) -> dict:
    """The pod as a Pod manifest (for `kdns env --workload`): the template with its name,
    namespace, labels and address filled in."""
    tpl = json.loads(pod.spec_json)
    meta = dict(tpl.get("metadata") or {})
    meta.update(name=pod.name, namespace=pod.namespace, labels=dict(pod.labels))
    spec = dict(tpl.get("spec") or {})
    if pod.hostname:
        spec["hostname"] = pod.hostname
    if pod.subdomain:
        spec["subdomain"] = pod.subdomain
    if pod.node:
        spec["nodeName"] = pod.node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
            "status": {"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}]}}
