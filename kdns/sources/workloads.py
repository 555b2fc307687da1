"""What the controllers read of an app's manifests: workloads' pod templates, bare Pods, and
Services' selectors and targetPorts, as small frozen inputs (docs/workloads.md).

In a cluster, nobody writes EndpointSlices: the workload controllers make pods, the scheduler
and the CNI give them addresses, and the EndpointSlice controller turns each Service selector
into slices. A developer's manifest directory has only the first half. This module is the
per-file half of kdns doing the rest: it turns one document into picklable inputs (the parse
may run in worker processes, and is cached per file); kdns.sources.controllers then runs once
over the whole set, after cluster IPs are allocated, and makes the pods and slices.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Mapping

from kdns import objects
from kdns.objects import FieldError

READY_ANNOTATION = "kdns.io/ready"
WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job")

@dataclass(frozen=True, slots=True)
class Options:
    pod_cidr: str = "10.244.0.0/16"
    nodes: int = 1

    @classmethod
    def from_args(cls, args) -> "Options":
        """--pod-cidr and --nodes (config.add_source_args); ValueError naming the flag."""
        try:
            ipaddress.ip_network(args.pod_cidr, strict=False)
        except ValueError:
            raise ValueError(f"--pod-cidr {args.pod_cidr!r}: not a CIDR") from None
        return cls(args.pod_cidr, args.nodes)


@dataclass(frozen=True, slots=True)
class Template:
    """What DNS and the EndpointSlice controller read of a pod template."""
    labels: tuple[tuple[str, str], ...]
    hostname: str
    subdomain: str
    ports: tuple[tuple[str, int, str], ...]     # container ports: (name, containerPort, protocol)
    ready: bool                                 # annotation kdns.io/ready != "false"
    spec_json: str                              # the template as written, canonical JSON


@dataclass(frozen=True, slots=True)
class Workload:
    kind: str
    namespace: str
    name: str
    count: int                       # replicas / parallelism; DaemonSet: -1 (one per node)
    template: Template
    service_name: str = ""           # StatefulSet spec.serviceName
    start: int = 0                   # StatefulSet spec.ordinals.start
    indexed: bool = False            # Job completionMode: Indexed

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class BarePod:
    namespace: str
    name: str
    template: Template
    ip: str                          # status.podIP as written, "" when none
    terminal: bool                   # phase Succeeded/Failed or deletionTimestamp set

    @property
    def key(self) -> tuple[str, str, str]:
        return ("Pod", self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class SelectorPort:
    name: str
    port: int
    protocol: str
    target: int | str                # targetPort: a number, or a container port's name


@dataclass(frozen=True, slots=True)
class Selector:
    """A Service's selector and targetPorts: what the EndpointSlice controller reads."""
    namespace: str
    name: str
    selector: tuple[tuple[str, str], ...]
    ports: tuple[SelectorPort, ...]
    publish_not_ready: bool

    @property
    def key(self) -> tuple[str, str, str]:
        return ("Selector", self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A workload (or a Pod's template part) kdns cannot read: a warning, never fatal, since
    kdns only borrows these kinds to derive endpoints."""
    what: str                        # Kind/namespace/name
    path: str
    message: str


INPUT_TYPES = (Workload, BarePod, Selector)


def readable(parse, doc: Mapping[str, Any]) -> list:
    """``parse(doc)`` as a list, or an Unreadable saying which field is wrong."""
    try:
        got = parse(doc)
    except FieldError as exc:
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), Mapping) else {}
        what = f"{doc.get('kind')}/{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"
        return [Unreadable(what, exc.path, exc.message)]
    return got if isinstance(got, list) else [got]


# --------------------------------------------------------------------------- parse

def _mapping(obj: Any, key: str, path: str) -> Mapping[str, Any]:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FieldError(path + key, f"must be a mapping, got {type(value).__name__}")
    return value


def _string_map(obj: Mapping[str, Any], key: str, path: str) -> tuple[tuple[str, str], ...]:
    out = []
    for k, v in _mapping(obj, key, path).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise FieldError(f"{path}{key}[{k}]", f"must map strings to strings, got {v!r}")
        out.append((k, v))
    return tuple(sorted(out))


def _count(spec: Mapping[str, Any], key: str, path: str, default: int) -> int:
    value = spec.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FieldError(path + key, f"must be a non-negative integer, got {value!r}")
    return value


def _meta(doc: Mapping[str, Any]) -> tuple[str, str]:
    meta = _mapping(doc, "metadata", "")
    name = meta.get("name")
    if not name or not isinstance(name, str):
        raise FieldError("metadata.name", "is required")
    ns = meta.get("namespace") or "default"
    if not isinstance(ns, str):
        raise FieldError("metadata.namespace", f"must be a string, got {ns!r}")
    return ns, name


def _template(tpl: Mapping[str, Any], path: str, outer: Mapping[str, Any] | None = None) -> Template:
    meta = _mapping(tpl, "metadata", path)
    spec = _mapping(tpl, "spec", path)
    labels = _string_map(meta, "labels", path + "metadata.")
    annotations = dict(_string_map(meta, "annotations", path + "metadata."))
    outer_ann = dict(_string_map(_mapping(outer, "metadata", ""), "annotations", "metadata.")) if outer else {}
    ready = annotations.get(READY_ANNOTATION, outer_ann.get(READY_ANNOTATION, "true")) != "false"
    hostname = spec.get("hostname") or ""
    subdomain = spec.get("subdomain") or ""
    for key, value in (("hostname", hostname), ("subdomain", subdomain)):
        if not isinstance(value, str):
            raise FieldError(f"{path}spec.{key}", f"must be a string, got {value!r}")
    ports = []
    # FindPort (pkg/api/v1/pod/util.go) looks in the containers, and in restartable init
    # containers (sidecars) too.
    groups = [("containers", c) for c in spec.get("containers") or []] + \
        [("initContainers", c) for c in spec.get("initContainers") or []
         if isinstance(c, Mapping) and c.get("restartPolicy") == "Always"]
    for i, (group, c) in enumerate(groups):
        if not isinstance(c, Mapping):
            raise FieldError(f"{path}spec.{group}", "must be a list of mappings")
        for j, p in enumerate(c.get("ports") or []):
            here = f"{path}spec.{group}[{i}].ports[{j}]"
            if not isinstance(p, Mapping):
                raise FieldError(here, "must be a mapping")
            number = p.get("containerPort")
            if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
                raise FieldError(here + ".containerPort", f"must be a port number 1-65535, got {number!r}")
            name = p.get("name") or ""
            protocol = p.get("protocol") or "TCP"
            if not isinstance(name, str) or protocol not in objects.PROTOCOLS:
                raise FieldError(here, f"bad name or protocol {name!r}/{protocol!r}")
            ports.append((name, number, protocol))
    spec_json = json.dumps(tpl, sort_keys=True, separators=(",", ":"), default=str)
    return Template(labels, hostname, subdomain, tuple(ports), ready, spec_json)


def workload_from_dict(doc: Mapping[str, Any]) -> Workload:
    kind = doc["kind"]
    ns, name = _meta(doc)
    spec = _mapping(doc, "spec", "")
    tpl = _mapping(spec, "template", "spec.")
    template = _template(tpl, "spec.template.", doc)
    if kind in ("Deployment", "ReplicaSet"):
        return Workload(kind, ns, name, _count(spec, "replicas", "spec.", 1), template)
    if kind == "StatefulSet":
        service = spec.get("serviceName") or ""
        if not isinstance(service, str):
            raise FieldError("spec.serviceName", f"must be a string, got {service!r}")
        start = _count(_mapping(spec, "ordinals", "spec."), "start", "spec.ordinals.", 0)
        return Workload(kind, ns, name, _count(spec, "replicas", "spec.", 1), template, service, start)
    if kind == "DaemonSet":
        return Workload(kind, ns, name, -1, template)
    # Job: at most `parallelism` pods run at once, and never more than the completions left.
    parallelism = _count(spec, "parallelism", "spec.", 1)
    completions = spec.get("completions")
    if completions is not None:
        parallelism = min(parallelism, _count(spec, "completions", "spec.", 1))
    indexed = spec.get("completionMode") == "Indexed"
    return Workload(kind, ns, name, parallelism, template, indexed=indexed)


def bare_pod_from_dict(doc: Mapping[str, Any]) -> BarePod:
    ns, name = _meta(doc)
    status = _mapping(doc, "status", "")
    meta = _mapping(doc, "metadata", "")
    terminal = status.get("phase") in ("Succeeded", "Failed") or meta.get("deletionTimestamp") is not None
    ip = status.get("podIP") or ""
    tpl = {"metadata": meta, "spec": doc.get("spec") or {}}
    return BarePod(ns, name, _template(tpl, ""), str(ip), terminal)


def selector_from_dict(doc: Mapping[str, Any]) -> list[Selector]:
    """The Service's selector, or nothing for a selector-less or ExternalName Service."""
    ns, name = _meta(doc)
    spec = _mapping(doc, "spec", "")
    selector = _string_map(spec, "selector", "spec.")
    if not selector or spec.get("type") == "ExternalName":
        return []
    ports = []
    for i, p in enumerate(spec.get("ports") or []):
        if not isinstance(p, Mapping):
            continue                                  # service_from_dict reports it
        target = p.get("targetPort")
        if target in (None, "", 0):
            target = p.get("port")                    # API defaulting: targetPort = port
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        ports.append(SelectorPort(p.get("name") or "", p.get("port") or 0,
                                  p.get("protocol") or "TCP", target))
    pna = spec.get("publishNotReadyAddresses") is True
    return [Selector(ns, name, selector, tuple(ports), pna)]
