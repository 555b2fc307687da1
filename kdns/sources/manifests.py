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
import json
import logging
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

from kdns import objects, selector
from kdns.objects import Cluster, FieldError, short, short_str
from kdns.sources import controllers, decode, workloads
from kdns.sources.files import SUFFIXES, Unreadable, files_of, stamp as _stamp  # noqa: F401

log = logging.getLogger("kdns.manifests")

# libyaml's loader parses a 10,000-service dump about ten times faster than the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
ALWAYS_NAMESPACES = ("default", "kube-system", "kube-public")
PARALLEL_BYTES = 8 << 20       # this much YAML/JSON to read is parsed in worker processes
MAX_WORKERS = 8


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


def _documents(path: Path) -> Iterator[tuple[int, Any]]:
    """The generic (exact) reader: every document as builtins. ``decode`` is the fast one."""
    data = path.read_bytes()
    text = data.decode("utf-8")
    if path.suffix == ".json":
        try:
            yield 0, decode.generic(data)          # one value, by far the common case
            return
        except decode.TooDeep:
            raise
        except ValueError:
            pass                                   # several concatenated values, or bad JSON
        decoder = json.JSONDecoder()
        pos, index = 0, 0
        while True:                       # a .json file may hold several concatenated objects
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                return
            doc, pos = decoder.raw_decode(text, pos)
            yield index, doc
            index += 1
    else:
        if decode.depth_over(data):
            raise decode.TooDeep("nested too deep")
        yield from _yaml_documents(text)


# Nodes one YAML document may gain through aliases. Aliases share one parsed node, but
# everything after the parser (type checks, comparisons, error messages) sees the expanded
# tree: a "billion laughs" bomb in metadata.name grew kdns to 2 GB (kube-apiserver's
# CVE-2019-11253). Real manifests use aliases for a few shared blocks.
MAX_ALIAS_NODES = 100_000


class AliasBomb(ValueError):
    pass


def _yaml_documents(text: str) -> Iterator[tuple[int, Any]]:
    loader = _YAML_LOADER(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if "*" in text:
                _check_aliases(node, index)
            yield index, loader.construct_document(node)
            index += 1
    finally:
        loader.dispose()


def _check_aliases(root: Any, index: int) -> None:
    """AliasBomb if aliases expand document ``index`` by more than MAX_ALIAS_NODES nodes.
    Sizes are memoised per node, so this is linear in the nodes parsed, not the expansion."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                total += size(v)
        sizes[id(node)] = total
        return total

    if size(root) - len(sizes) > MAX_ALIAS_NODES:
        raise AliasBomb(f"document {index}: YAML aliases expand it by more than {MAX_ALIAS_NODES} "
                        "nodes (an alias bomb?)")


def _describe(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "document"
    kind = short_str(doc.get("kind") or "?")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = short_str(meta.get("name") or "?")
    ns = short_str(meta.get("namespace")) if meta.get("namespace") else None
    if kind == "Namespace":
        return f"{kind}/{name}"
    return f"{kind}/{ns or 'default'}/{name}"


def read(paths: Iterable[str | os.PathLike], problems: list[str]) -> Iterator[tuple[Any, Any]]:
    """Every object in the files, one at a time, as (where, dict); ``str(where)`` is
    "file, document N[, items[J]]". Files that do not parse add a line to ``problems``.

    A generator, so that only one document's raw dicts are alive at a time: a whole cluster's
    worth of parsed YAML would cost several times the memory of the objects kept from it.
    """
    files, missing = files_of(paths)
    problems.extend(missing)
    for path in files:
        yield from _file_documents(path, problems)


def _file_documents(path: Path, problems: list[str]) -> Iterator[tuple[Any, Any]]:
    try:
        for index, doc in _documents(path):
            if doc is None:
                continue
            # kind: List, and typed lists such as ServiceList from the API.
            if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") \
                    and isinstance(doc.get("items"), list):
                for j, item in enumerate(doc.get("items") or []):
                    yield _Where(path, index, j), item
            else:
                yield _Where(path, index, None), doc
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: does not parse: {_short(' '.join(str(exc).split()))}")
    except (AliasBomb, decode.TooDeep) as exc:
        problems.append(f"{path}: does not parse: {exc}")
    except RecursionError:
        problems.append(f"{path}: does not parse: nested too deep")
    except MemoryError:
        problems.append(f"{path}: does not parse: too big to hold in memory")
    except OSError as exc:
        problems.append(Unreadable(path, f"{path}: cannot read: {exc.strerror or exc}"))


class _Where:
    """Where a document came from; formatted only when a problem is reported."""

    __slots__ = ("path", "index", "item")

    def __init__(self, path: Path, index: int, item: int | None):
        self.path, self.index, self.item = path, index, item

    def __str__(self) -> str:
        where = f"{self.path}, document {self.index}"
        return where if self.item is None else f"{where}, items[{self.item}]"


_TABLES = {objects.Service: "services", objects.EndpointSlice: "slices",
           objects.Namespace: "namespaces", objects.Pod: "pods"}

_PARSERS: dict[str, Callable[[Any], Any]] = {
    # A Service and a Pod also give what the EndpointSlice controller reads of them (selector,
    # targetPorts; labels, container ports), for controllers.derive.
    "Service": lambda doc: [objects.service_from_dict(doc), *workloads.selector_from_dict(doc)],
    "EndpointSlice": objects.endpointslice_from_dict,
    "Endpoints": objects.endpoints_from_dict,
    "Namespace": objects.namespace_from_dict,
    "Pod": lambda doc: [objects.pod_from_dict(doc), *workloads.readable(workloads.bare_pod_from_dict, doc)],
    **{kind: (lambda doc: workloads.readable(workloads.workload_from_dict, doc))
       for kind in workloads.WORKLOAD_KINDS},
}


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


def _parse_file(path: Path, labels: str | None = None) -> tuple[list, list[str], dict[str, int]]:
    """One file: its (where, object) pairs, its problems, the kinds it skipped (picklable, for
    the worker processes of _parse_files)."""
    problems: list[str] = []
    skipped: dict[str, int] = {}
    try:
        return list(_file_objects(path, problems, skipped, labels)), problems, skipped
    except RecursionError:               # whichever decoder or walk met it: a problem, not a crash
        return [], problems + [f"{path}: does not parse: nested too deep"], skipped
    except ValueError as exc:            # a decoder's own error type, not one listed above
        return [], problems + [f"{path}: does not parse: {_short(' '.join(str(exc).split()))}"], skipped


def _short(text: str, limit: int = 200) -> str:
    """A quoted value or decoder message cut to a prefix: one line, never the whole input."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _parse_files(paths: list[Path], stamps: dict,
                 labels: str | None = None) -> list[tuple[list, list[str], dict[str, int]]]:
    """_parse_file of each path, in order. Parsing YAML is CPU-bound (libyaml composes, PyYAML's
    Python constructors build: ~30 s for a 10,000-Service dump on one core), so past
    PARALLEL_BYTES the files are shared out to worker processes (``python -c``, never a fork: a
    reload runs beside threads; not multiprocessing, whose spawn re-runs the caller's main
    module) and their objects come back pickled, a few percent of the parse."""
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                  len(paths), MAX_WORKERS)
    size = sum(stamps[p][1] for p in paths if stamps.get(p))
    if workers > 1 and size >= PARALLEL_BYTES:
        try:
            return _in_workers(paths, stamps, workers, labels)
        except (OSError, EOFError, pickle.UnpicklingError, subprocess.SubprocessError) as exc:
            log.warning("parsing the manifests in %d processes failed (%s); parsing them here",
                        workers, exc)
    return [_parse_file(p, labels) for p in paths]


def _in_workers(paths: list[Path], stamps: dict, workers: int, labels: str | None = None) -> list:
    shares: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for i in sorted(range(len(paths)), key=lambda i: -(stamps.get(paths[i]) or (0, 0))[1]):
        w = loads.index(min(loads))                    # biggest file to the least loaded worker
        shares[w].append(i)
        loads[w] += (stamps.get(paths[i]) or (0, 0))[1]
    root = str(Path(objects.__file__).resolve().parent.parent)   # the kdns being run
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))))
    procs = [subprocess.Popen([sys.executable, "-c", "from kdns.sources.manifests import _worker; _worker()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
             for _ in shares]
    results: list = [None] * len(paths)
    try:
        for proc, share in zip(procs, shares):
            proc.stdin.write(pickle.dumps(([paths[i] for i in share], labels)))
            proc.stdin.close()
        for proc, share in zip(procs, shares):
            for i, result in zip(share, pickle.load(proc.stdout)):
                results[i] = result
            if proc.wait(timeout=60) != 0:
                raise subprocess.SubprocessError(f"worker exited with {proc.returncode}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _worker() -> None:
    """A worker process of _in_workers: paths in (pickled, on stdin), results out (stdout)."""
    paths, labels = pickle.load(sys.stdin.buffer)
    pickle.dump([_parse_file(p, labels) for p in paths], sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()


def _file_objects(path: Path, problems: list[str], skipped: dict[str, int],
                  labels: str | None = None) -> Iterator[tuple[Any, Any]]:
    """(where, object) for every object kdns serves in one file; problems named as load's."""
    selected = selector.parse(labels) if labels else None
    for where, doc in _fast_documents(path, problems):
        if not isinstance(doc, dict):
            problems.append(f"{where}: {_describe(doc)}: must be a mapping with apiVersion and kind")
            continue
        kind = doc.get("kind")
        if not kind or not isinstance(kind, str):
            problems.append(f"{where}: {_describe(doc)}: field kind: is required")
            continue
        parse = _PARSERS.get(kind)
        if parse is None:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        if selected is not None and kind == "Service" and not selected(selector.labels_of(doc)):
            continue                         # --labels: as the API's labelSelector would
        if kind == "EndpointSlice" and doc.get("apiVersion") not in (None, "discovery.k8s.io/v1"):
            problems.append(f"{where}: {_describe(doc)}: field apiVersion: EndpointSlice must be "
                            f"discovery.k8s.io/v1, got {short(doc.get('apiVersion'))}")
            continue
        try:
            obj = parse(doc)
        except FieldError as exc:
            problems.append(f"{where}: {_describe(doc)}: field {exc.path}: {exc.message}")
            continue
        for item in obj if isinstance(obj, list) else [obj]:
            yield where, item


def _fast_documents(path: Path, problems: list[str]) -> Iterator[tuple[Any, Any]]:
    """``_file_documents`` with only the fields kdns reads, decoded in C (kdns.sources.decode);
    a file the fast decoders cannot vouch for is read by the generic ones, which word its
    errors. Unsure is only ever raised before the first document is yielded."""
    try:
        data = path.read_bytes()
        data.decode("utf-8")                        # the generic reader words a bad byte
        if path.suffix == ".json":
            docs: Any = [(0, decode.json_document(data))]
        else:
            docs = list(decode.yaml_documents(data))
        # Pods and workloads are read whole (their pod templates are compared as JSON):
        # the Structs carry only what the other kinds need.
        if any(d is not None and decode.kinds(d) & _WHOLE for _, d in docs):
            raise decode.Unsure("Pods or workloads")
    except (OSError, UnicodeDecodeError, decode.Unsure):
        yield from _file_documents(path, problems)
        return
    del data
    for index, doc in docs:
        if doc is None:
            continue
        for j, obj in decode.items(doc):
            yield _Where(path, index, j), obj


_WHOLE = frozenset(("Pod", *workloads.WORKLOAD_KINDS))


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
