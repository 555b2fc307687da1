"""Static manifests -> kdns objects.

Reads files or directories (recursively: *.yaml, *.yml, *.json), multi-document YAML, JSON, and
``kind: List`` (what ``kubectl get -o yaml`` prints). Kinds kdns does not serve are skipped with
one info line per kind, because users point kdns at their whole app's manifests.

Every problem is collected before failing, so a user fixes them all in one go; each line names
the file, the document index, the object (kind/namespace/name) and the field.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from kdns import objects
from kdns.objects import Cluster
from kdns.sources import controllers, workloads
# The readers (kdns.sources.documents) and the per-file parse (kdns.sources.parsefiles);
# ``read`` is used by `kdns env` and `kdns explain` from here, as before the split.
from kdns.sources.documents import read  # noqa: F401
from kdns.sources.files import SUFFIXES, Unreadable, files_of, stamp as _stamp  # noqa: F401
from kdns.sources.parsefiles import _parse_file, _parse_files

log = logging.getLogger("kdns.manifests")

ALWAYS_NAMESPACES = ("default", "kube-system", "kube-public")


class ManifestError(Exception):
    """One or more bad manifests; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def default_paths() -> list[Path]:
    """The embedded example cluster: zones/ in a checkout, kdns.zones when installed."""
    checkout = Path(__file__).resolve().parent.parent.parent / "zones" / "cluster.yaml"
    if checkout.is_file():
        return [checkout]
    return [Path(str(resources.files("kdns.zones").joinpath("cluster.yaml")))]


_TABLES = {objects.Service: "services", objects.EndpointSlice: "slices",
           objects.Namespace: "namespaces", objects.Pod: "pods"}

def load(paths: Iterable[str | os.PathLike], service_cidr: str = "10.96.0.0/12",
         files: dict | None = None, *, derive: workloads.Options = workloads.Options(),
         origins: dict | None = None, derived: list | None = None,
         labels: str | None = None, distinct_ips: bool = True) -> Cluster:
    """Parse manifests into a Cluster; raise ManifestError listing every problem.

    ``files`` (the Watcher's): path -> ((mtime, size), objects) of files that parsed cleanly;
    a file whose stamp is unchanged is not read again, and the dict is updated in place. A file
    in it that cannot be read now, or that holds no document any more (caught half-written, or
    emptied), keeps its objects from then, with a warning: data never vanishes without a word.
    Workloads become pods and EndpointSlices (``derive``: --pod-cidr, --nodes). ``origins``,
    when given, gets (kind, namespace, name) -> "file, document N" of every object read, and
    ``derived`` the controllers.Derived (both for `kdns explain` and `kdns env --workload`).
    ``labels``: a label selector (--labels); Services it does not select are left out.
    ``distinct_ips``: two Services with one clusterIP are a problem (as the API server's
    allocator would have it).
    """
    cluster = Cluster()
    inputs: dict[tuple, Any] = {}
    unreadable: list[str] = []
    problems: list[str] = []
    skipped: dict[str, int] = {}
    seen_ns: set[str] = set(ALWAYS_NAMESPACES)
    paths = list(paths)
    held = files if files is not None else {}
    found, listing = files_of(paths)
    keep: dict[str, str] = {}            # path -> why its last good objects are kept
    for line in listing:
        known = [k for k in held if isinstance(line, Unreadable) and _under(k, line.path)]
        for k in known:
            keep[k] = line
        if not known:
            problems.append(line)
    found = [p for p in found if str(p) not in keep]
    reused = False
    stamps = {path: _stamp(path) for path in found}   # before reading: a later write changes it
    cached = {}
    for path in found:
        hit = held.get(str(path))
        if hit is not None and stamps[path] is not None and hit[0] == stamps[path]:
            cached[path] = hit[1]
    to_parse = [p for p in found if p not in cached]
    parsed = dict(zip(to_parse, _parse_files(to_parse, stamps, labels)))
    for path in to_parse:
        # Written to while we read it: what we read may be half of either version. Read again.
        for _ in range(3):
            now = _stamp(path)
            if now == stamps[path]:
                break
            stamps[path] = now
            parsed[path] = _parse_file(path, labels)
    objects_of: list = []
    for path in found:
        if path in cached:
            # no document index for objects from the cache: a clash below reads all again
            objs, reused = [(path, obj) for obj in cached[path]], True
        else:
            objs, file_problems, file_skipped = parsed[path]
            before = held.get(str(path))
            unreadable = [q for q in file_problems if isinstance(q, Unreadable)]
            if before is not None and unreadable:
                keep[str(path)] = unreadable[0]
                continue
            if before is not None and before[1] and not (objs or file_problems or file_skipped):
                keep[str(path)] = f"{path}: holds no documents now (emptied, or caught half-written)"
                continue
            problems.extend(file_problems)
            for kind, count in file_skipped.items():
                skipped[kind] = skipped.get(kind, 0) + count
            if files is not None:
                if not file_problems and stamps[path] is not None:
                    files[str(path)] = (stamps[path], [obj for _, obj in objs])
                else:
                    files.pop(str(path), None)
        objects_of.append(objs)
    for path, why in keep.items():
        kept = held[path][1]
        log.warning("%s; keeping its %d object(s) from the last good read until it parses with "
                    "at least one document or is deleted", why, len(kept))
        objects_of.append([(Path(path), obj) for obj in kept])
        reused = True
    if files is not None:                # forget deleted files: nothing of theirs may come back
        present = {str(p) for p in found} | set(keep)
        for k in [k for k in files if k not in present]:
            del files[k]
    where_of: dict = {}
    for objs in objects_of:
        for where, obj in objs:
            if origins is not None:
                origins.setdefault(_origin_key(obj), str(where))
            if isinstance(obj, workloads.Unreadable):
                unreadable.append(f"{where}: {obj.what}: field {obj.path}: {obj.message}; no "
                                  f"endpoints derived from it")
                continue
            if isinstance(obj, workloads.INPUT_TYPES):
                if obj.key in inputs and inputs[obj.key] != obj:
                    problems.append(f"{where}: {obj.key[0]}/{obj.key[1]}/{obj.key[2]}: defined "
                                    f"twice with different content")
                inputs[obj.key] = obj
                continue
            key = obj.key if not isinstance(obj, objects.Namespace) else obj.name
            table = getattr(cluster, _TABLES[type(obj)])
            if key in table and table[key] != obj:
                problems.append(f"{where}: {_describe_object(obj)}: defined twice with different content")
                continue
            table[key] = obj
            if isinstance(obj, objects.Service):
                where_of.setdefault(key, where)
            seen_ns.add(obj.name if isinstance(obj, objects.Namespace) else obj.namespace)
    if distinct_ips:
        problems.extend(_shared_cluster_ips(cluster, where_of))
    for kind, count in sorted(skipped.items()):
        log.info("skipping %d %s object(s): kdns serves Services, EndpointSlices, Endpoints, "
                 "Namespaces, Pods and the workloads that make pods", count, kind)
    if problems:
        if reused and files is not None:
            # A clash with an object from a file not re-read: its lines lack the document
            # index; read everything again for messages that name it.
            return load(paths, service_cidr, None, derive=derive, origins=origins, derived=derived,
                        labels=labels, distinct_ips=distinct_ips)
        raise ManifestError(problems)
    # A namespace exists when a Namespace object names it or any object lives in it.
    seen_ns |= {obj.namespace for obj in inputs.values()}
    for ns in sorted(seen_ns - set(cluster.namespaces)):
        cluster.namespaces[ns] = objects.Namespace(ns)
    allocate_cluster_ips(cluster, service_cidr)
    if inputs or unreadable:
        try:
            made = controllers.derive(cluster, list(inputs.values()), derive, unreadable)
        except ValueError as exc:
            raise ManifestError([str(exc)]) from None
        if derived is not None:
            derived.append(made)
    return cluster


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _shared_cluster_ips(cluster: Cluster, where_of: dict) -> list[str]:
    """One line per Service whose clusterIP another Service already has. The API server refuses
    the second (the IP is allocated once), and serving both would make the PTR name one of them
    at random."""
    owner: dict[str, tuple] = {}
    lines = []
    for key, svc in cluster.services.items():          # file order: the first one keeps it
        for ip in svc.addresses:
            first = owner.setdefault(ip, key)
            if first != key:
                lines.append(f"{where_of.get(key)}: Service/{key[0]}/{key[1]}: field spec.clusterIP: "
                             f"{ip} is already the clusterIP of Service/{first[0]}/{first[1]} "
                             f"({where_of.get(first)}); every Service needs its own")
    return lines


def _origin_key(obj) -> tuple[str, str, str]:
    if isinstance(obj, objects.Namespace):
        return ("Namespace", "", obj.name)
    if isinstance(obj, workloads.INPUT_TYPES):
        return obj.key
    return (type(obj).__name__, obj.namespace, obj.name)


def _describe_object(obj) -> str:
    if isinstance(obj, objects.Namespace):
        return f"Namespace/{obj.name}"
    return f"{type(obj).__name__}/{obj.namespace}/{obj.name}"


def allocate_cluster_ips(cluster: Cluster, cidr: str) -> None:
    """Give every Service without a clusterIP a stable address, as an API server would.

    The same namespace/name always hashes to the same slot; a taken slot moves to the next free
    one, visiting services in sorted order, so the result depends only on the set of services.
    """
    pending = sorted(k for k, s in cluster.services.items() if objects.service_without_ip(s))
    if not pending:
        return
    net = ipaddress.ip_network(cidr, strict=False)
    used = {ip for s in cluster.services.values() for ip in s.addresses}
    size = net.num_addresses
    # Skip the network address and the first host (the `kubernetes` service in kubeadm
    # clusters takes .1); stay off the broadcast address for IPv4.
    first, last = 2, size - (2 if net.version == 4 else 1)
    if last < first:
        raise ManifestError([f"--service-cidr {cidr}: too small to allocate cluster IPs"])
    span = last - first + 1
    for key in pending:
        digest = hashlib.sha256(f"{key[0]}/{key[1]}".encode()).digest()
        slot = int.from_bytes(digest[:8], "big") % span
        for probe in range(span):
            ip = str(net.network_address + first + (slot + probe) % span)
            if ip not in used:
                break
        else:
            raise ManifestError([f"--service-cidr {cidr}: no free address left for {key[0]}/{key[1]}"])
        used.add(ip)
        svc = cluster.services[key]
        cluster.services[key] = replace(svc, cluster_ip=ip, cluster_ips=(ip,), allocated=True)
        log.info("allocated clusterIP %s to Service %s/%s (no clusterIP in its manifest)", ip, *key)
