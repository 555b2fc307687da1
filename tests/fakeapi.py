"""An in-process fake Kubernetes API server that speaks the real wire protocol.

No kube-apiserver can be installed where kdns is developed and tested, so the tests run clients
(the `kubernetes` Python client inside kdns, and kubectl) against this. It models what a list +
watch client depends on, with the semantics of the real server:

- discovery: /version, /api, /api/v1, /apis, /apis/<group>[/<version>], /healthz, /readyz,
  and the OpenAPI documents kubectl looks for (v3 root and group-versions, an empty v2);
- services, pods, namespaces (core/v1) and endpointslices (discovery.k8s.io/v1), both the
  all-namespaces and the per-namespace paths, GET of one object; the kinds of a deployment
  manifest (ServiceAccount, ConfigMap, Deployment, ClusterRole(Binding), PodDisruptionBudget)
  are stored and served without interpretation;
- list: one global resourceVersion (like etcd's revision), limit/continue with a consistent
  snapshot per list, 410 Expired for a continue token older than the compaction point,
  labelSelector (=, ==, !=, in, notin, exists, !exists) and fieldSelector on metadata.name and
  metadata.namespace; items without kind/apiVersion, as the real server sends them;
- create (POST), replace (PUT, with resourceVersion conflict checks), delete (DELETE),
  dryRun=All; Services get a clusterIP allocated as the real allocator would;
- watch: HTTP/1.1 chunked, one JSON event per line (ADDED, MODIFIED, DELETED), replayed from a
  bounded per-resource history ring; an in-stream ERROR 410 Expired Status when the requested
  resourceVersion is older than the ring; BOOKMARK events with allowWatchBookmarks;
  sendInitialEvents with the k8s.io/initial-events-end bookmark; timeoutSeconds ends the stream
  cleanly; label selectors turn "object left/entered the selector" into DELETED/ADDED;
- meta.k8s.io/v1 Table responses when the client asks for them (kubectl's default output);
- fault injection driven by the test: HTTP errors at list or watch start (500, 429 with
  Retry-After, 401, 403, ...), streams dropped after N events or right now, JSON lines split
  across chunks, a garbage line at the start of a watch, a stall (requests and streams go
  silent until released), compaction (every older resourceVersion and continue token expires);
- optional https with a throwaway CA (``tls=True``, needs the openssl CLI) and a required
  bearer token (``token=...``), for the in-cluster path.

Not modelled: PATCH (so no `kubectl apply` to existing objects), protobuf bodies (kubectl's
typed generators such as `kubectl create service`), schema validation, finalizers, graceful
deletion, the `default/kubernetes` Service.

Every request is recorded in ``FakeAPI.requests`` and every bookmark in ``FakeAPI.bookmarks``,
so tests can assert what the client asked for and was told.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import ipaddress
import itertools
import json
import re
import os
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Resource:
    name: str            # plural, as in the URL
    group: str           # "" for the core group
    version: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    singular: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The group-qualified resource the real server names in its error messages."""
        return f"{self.name}.{self.group}" if self.group else self.name

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


RESOURCES = {
    r.name: r for r in (
        Resource("services", "", "v1", "Service", True, ("svc",), "service"),
        Resource("pods", "", "v1", "Pod", True, ("po",), "pod"),
        Resource("namespaces", "", "v1", "Namespace", False, ("ns",), "namespace"),
        Resource("endpointslices", "discovery.k8s.io", "v1", "EndpointSlice", True, (), "endpointslice"),
        # Stored and served, never interpreted: what a deployment manifest (deploy/kdns.yaml)
        # holds, so `kubectl apply --dry-run=server` can be checked against the fake.
        Resource("serviceaccounts", "", "v1", "ServiceAccount", True, ("sa",), "serviceaccount"),
        Resource("configmaps", "", "v1", "ConfigMap", True, ("cm",), "configmap"),
        Resource("deployments", "apps", "v1", "Deployment", True, ("deploy",), "deployment"),
        Resource("clusterroles", "rbac.authorization.k8s.io", "v1", "ClusterRole", False, (), "clusterrole"),
        Resource("clusterrolebindings", "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", False, (),
                 "clusterrolebinding"),
        Resource("poddisruptionbudgets", "policy", "v1", "PodDisruptionBudget", True, ("pdb",),
                 "poddisruptionbudget"),
    )
}
GROUP_VERSIONS = sorted({r.api_version for r in RESOURCES.values()}, key=lambda gv: ("/" in gv, gv))
BY_KIND = {r.kind: r for r in RESOURCES.values()}
VERBS = ["create", "delete", "get", "list", "update", "watch"]
ALWAYS_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class HTTPError(Exception):
    """A Status response: raised inside the server, turned into JSON for the client."""

    def __init__(self, code: int, reason: str, message: str, headers: dict[str, str] | None = None,
                 details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.headers = headers or {}
        self.details = details

    def status(self) -> dict:
        out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           405: "MethodNotAllowed", 409: "Conflict", 410: "Expired", 429: "TooManyRequests",
           500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


@dataclass
class Fault:
    """One injected fault; ``count`` requests consume it (``None`` = until cleared)."""

    verb: str                      # "list" | "watch" | "any"
    resource: str | None           # None matches every resource
    action: str                    # "status" | "drop" | "expire" | "garbage"
    code: int = 500
    retry_after: int | None = None
    after: int = 0                 # drop: events sent before the connection is cut
    line: bytes = b""              # garbage: the raw line sent first
    count: int | None = 1

    def matches(self, verb: str, resource: str) -> bool:
        return (self.verb in ("any", verb)) and self.resource in (None, resource)


@dataclass
class Event:
    rv: int
    type: str
    obj: dict
    old: dict | None               # the previous state, for selector enter/leave transitions


@dataclass
class Stream:
    resource: str
    namespace: str | None
    drop_after: int | None = None
    dropped: bool = False
    sent: int = 0


@dataclass
class Request:
    time: float
    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    watch: bool = False


# --------------------------------------------------------------------------- selectors

_REQ = re.compile(r"\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def parse_label_selector(text: str) -> Callable[[dict], bool]:
    """The label selector grammar of k8s.io/apimachinery/pkg/labels, as a predicate on labels."""
    if not text:
        return lambda labels: True
    parts, depth, cur = [], 0, ""
    for ch in text:                                  # split on commas outside parentheses
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    tests: list[Callable[[dict], bool]] = []
    for part in parts:
        m = _REQ.match(part)
        if not m:
            raise HTTPError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, op, value, setop, values = m.groups()
        if neg and (op or setop):
            raise HTTPError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        if neg:
            tests.append(lambda l, k=key: k not in l)
        elif op in ("=", "=="):
            tests.append(lambda l, k=key, v=value: l.get(k) == v)
        elif op == "!=":
            tests.append(lambda l, k=key, v=value: l.get(k) != v)
        elif setop == "in":
            vs = {v.strip() for v in values.split(",")}
            tests.append(lambda l, k=key, vs=vs: l.get(k) in vs)
        elif setop == "notin":
            vs = {v.strip() for v in values.split(",")}
            tests.append(lambda l, k=key, vs=vs: l.get(k) not in vs)
        else:
            tests.append(lambda l, k=key: k in l)
    return lambda labels: all(t(labels) for t in tests)


def parse_field_selector(text: str) -> Callable[[dict], bool]:
    if not text:
        return lambda obj: True
    tests = []
    for part in text.split(","):
        m = re.match(r"\s*([a-zA-Z.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m or m.group(1) not in ("metadata.name", "metadata.namespace"):
            raise HTTPError(400, "BadRequest", f'field label not supported: "{part}"')
        path, op, value = m.groups()
        key = path.split(".")[1]
        if op == "!=":
            tests.append(lambda o, k=key, v=value: o["metadata"].get(k, "") != v)
        else:
            tests.append(lambda o, k=key, v=value: o["metadata"].get(k, "") == v)
    return lambda obj: all(t(obj) for t in tests)


# --------------------------------------------------------------------------- the server

class FakeAPI:
    """Start with ``FakeAPI().start()`` (or as a context manager); ``url`` is http://127.0.0.1:PORT."""

    def __init__(self, *, history: int = 1000, bookmark_interval: float = 1.0,
                 default_watch_timeout: float = 1800.0, token: str | None = None,
                 service_cidr: str = "10.96.0.0/12", start_rv: int = 1000, tls: bool = False,
                 streaming_list: str = "on"):
        self.history_size = history
        # The streaming list (sendInitialEvents): "on" (1.32+), "refuse" (the WatchList feature
        # gate off: 422 Invalid) or "ignore" (a server older than the parameter: it is dropped,
        # so a watch without resourceVersion replays ADDED events and never sends the
        # initial-events-end bookmark).
        if streaming_list not in ("on", "refuse", "ignore"):
            raise ValueError(f"streaming_list: {streaming_list!r}")
        self.streaming_list = streaming_list
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.token = token
        self.tls = tls                   # https with a throwaway CA (``ca_file``), as in a pod
        self.ca_file: str | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.split_chunks = False        # write each event line as two chunks
        self.requests: list[Request] = []
        self.bookmarks: list[tuple[str, int]] = []    # (resource, resourceVersion) as sent
        self._cond = threading.Condition()
        self._rv = start_rv
        self._objects: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCES}
        self._history: dict[str, deque[Event]] = {r: deque() for r in RESOURCES}
        self._compacted: dict[str, int] = {r: start_rv for r in RESOURCES}
        # The newest event dropped from each ring: an open stream behind it has lost events.
        self._lost: dict[str, int] = {r: 0 for r in RESOURCES}
        self._snapshots: dict[str, tuple[int, str, list[dict]]] = {}
        self._encoded: dict[int, tuple[dict, bytes]] = {}      # id(stored object) -> (it, its list JSON)
        self._faults: list[Fault] = []
        self._streams: list[Stream] = []
        self._stalled = False
        self._stopping = False
        self._net = ipaddress.ip_network(service_cidr)
        self._next_ip = itertools.count(10)
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        with self._cond:
            for ns in ALWAYS_NAMESPACES:
                self._store_create(RESOURCES["namespaces"], "", {"apiVersion": "v1", "kind": "Namespace",
                                                                 "metadata": {"name": ns}})

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "FakeAPI":
        fake = self

        class Handler(_Handler):
            api = fake

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="fakeapi-tls-")
            cert, key = os.path.join(self._tmp.name, "ca.crt"), os.path.join(self._tmp.name, "ca.key")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-keyout", key, "-out", cert, "-subj", "/CN=kubernetes",
                            "-addext", "subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc"],
                           check=True, capture_output=True, timeout=60)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            self.ca_file = cert
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fakeapi",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._stalled = False
            self._cond.notify_all()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> "FakeAPI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def kubeconfig(self, path, *, context: str = "fake", namespace: str = "default") -> str:
        """Write a kubeconfig pointing at this server (plus a second, broken context) to path."""
        user = {"token": self.token} if self.token else {}
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "fake", "cluster": {"server": self.url, **(
                             {"certificate-authority": self.ca_file} if self.ca_file else {})}},
                         {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake",
                                                       "namespace": namespace}},
                         {"name": "nowhere", "context": {"cluster": "nowhere", "user": "fake"}}],
        }
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        return str(path)

    # ---------------------------------------------------------------- test controls

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def fail(self, verb: str = "watch", resource: str | None = None, code: int = 500,
             count: int | None = 1, retry_after: int | None = None) -> None:
        """The next ``count`` matching requests get HTTP ``code`` and a Status body."""
        self._add_fault(Fault(verb, resource, "status", code, retry_after, count=count))

    def drop_after(self, events: int = 0, resource: str | None = None, count: int | None = 1) -> None:
        """The next ``count`` watches are cut (no terminating chunk) after ``events`` events."""
        self._add_fault(Fault("watch", resource, "drop", after=events, count=count))

    def expire_next_watch(self, resource: str | None = None, count: int | None = 1) -> None:
        """The next ``count`` watches get an in-stream ERROR 410 whatever their resourceVersion."""
        self._add_fault(Fault("watch", resource, "expire", count=count))

    def garbage_next_watch(self, resource: str | None = None, line: bytes = b"{this is not json\n",
                           count: int | None = 1) -> None:
        """The next ``count`` watches start with ``line`` (a client must skip it and go on)."""
        self._add_fault(Fault("watch", resource, "garbage", count=count, line=line))

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    def drop_streams(self, resource: str | None = None) -> int:
        """Cut every open watch stream now, as a dying apiserver or a reset TCP path does."""
        with self._cond:
            hit = [s for s in self._streams if resource in (None, s.resource)]
            for s in hit:
                s.dropped = True
            self._cond.notify_all()
            return len(hit)

    def stall(self) -> None:
        """Go silent: new requests get no response and open streams send nothing."""
        with self._cond:
            self._stalled = True
            self._cond.notify_all()

    def unstall(self) -> None:
        with self._cond:
            self._stalled = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        self.stall()
        try:
            yield
        finally:
            self.unstall()

    def compact(self) -> None:
        """Forget all history: any watch or continue token older than now is 410 Expired."""
        with self._cond:
            for r in RESOURCES:
                if self._history[r]:
                    self._lost[r] = max(self._lost[r], self._history[r][-1].rv)
                self._history[r].clear()
                self._compacted[r] = self._rv
            self._snapshots.clear()

    def watchers(self, resource: str | None = None) -> int:
        with self._cond:
            return sum(1 for s in self._streams if resource in (None, s.resource) and not s.dropped)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    def requests_for(self, resource: str, *, watch: bool | None = None) -> list[Request]:
        with self._cond:
            out = []
            for r in self.requests:
                if f"/{resource}" not in r.path:
                    continue
                if watch is not None and r.watch != watch:
                    continue
                out.append(r)
            return out

    # ---------------------------------------------------------------- object helpers (in-process)

    def create(self, obj: dict) -> dict:
        """Create an object (its namespace too, if missing) and return the stored copy."""
        res = BY_KIND[obj["kind"]]
        ns = obj.get("metadata", {}).get("namespace", "default") if res.namespaced else ""
        with self._cond:
            if res.namespaced and ("", ns) not in self._objects["namespaces"]:
                self._store_create(RESOURCES["namespaces"], "", {"apiVersion": "v1", "kind": "Namespace",
                                                                 "metadata": {"name": ns}})
            return copy.deepcopy(self._store_create(res, ns, obj))

    def replace(self, obj: dict) -> dict:
        res = BY_KIND[obj["kind"]]
        meta = obj.get("metadata", {})
        ns = meta.get("namespace", "default") if res.namespaced else ""
        with self._cond:
            return copy.deepcopy(self._store_replace(res, ns, meta["name"], obj, check_rv=False))

    def apply(self, obj: dict) -> dict:
        """Create or replace."""
        res = BY_KIND[obj["kind"]]
        meta = obj.get("metadata", {})
        ns = meta.get("namespace", "default") if res.namespaced else ""
        with self._cond:
            exists = (ns, meta["name"]) in self._objects[res.name]
        return self.replace(obj) if exists else self.create(obj)

    def delete(self, kind: str, namespace: str, name: str, *, cascade: bool = True) -> dict:
        """``cascade=False`` deletes a Namespace alone: the order a watcher may see when the
        namespaces stream runs ahead of the others (a real API empties the namespace first)."""
        res = BY_KIND[kind]
        with self._cond:
            return self._store_delete(res, namespace if res.namespaced else "", name,
                                      cascade=cascade)

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        res = BY_KIND[kind]
        with self._cond:
            obj = self._objects[res.name].get((namespace if res.namespaced else "", name))
            return copy.deepcopy(obj) if obj else None

    def objects(self, kind: str) -> list[dict]:
        res = BY_KIND[kind]
        with self._cond:
            return [copy.deepcopy(o) for _, o in sorted(self._objects[res.name].items())]

    # ---------------------------------------------------------------- store (call with the lock held)

    def _list_item(self, obj: dict) -> bytes:
        """``obj`` as a typed list carries it (no kind or apiVersion), encoded once per version.
        Stored objects are replaced, never changed in place, so the object itself is the key."""
        hit = self._encoded.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        data = json.dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")},
                          separators=(",", ":")).encode()
        if len(self._encoded) > 4 * sum(len(t) for t in self._objects.values()) + 1000:
            self._encoded.clear()
        self._encoded[id(obj)] = (obj, data)
        return data

    def _add_fault(self, fault: Fault) -> None:
        with self._cond:
            self._faults.append(fault)

    def _take_fault(self, verb: str, resource: str) -> Fault | None:
        for f in self._faults:
            if f.matches(verb, resource):
                if f.count is not None:
                    f.count -= 1
                    if f.count <= 0:
                        self._faults.remove(f)
                return f
        return None

    def _bump(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, res: Resource, type_: str, obj: dict, old: dict | None) -> None:
        ring = self._history[res.name]
        ring.append(Event(int(obj["metadata"]["resourceVersion"]), type_, obj, old))
        while len(ring) > self.history_size:
            self._compacted[res.name] = self._lost[res.name] = ring.popleft().rv
        self._cond.notify_all()

    def _prepare(self, res: Resource, ns: str, obj: Any, name: str | None = None) -> dict:
        if not isinstance(obj, dict):
            raise HTTPError(400, "BadRequest", "the body of the request was in an unknown format")
        obj = copy.deepcopy(obj)
        if obj.get("kind") != res.kind:
            raise HTTPError(400, "BadRequest",
                            f"the API version in the data ({obj.get('apiVersion')}) / kind "
                            f"({obj.get('kind')}) does not match the expected {res.api_version} {res.kind}")
        obj["apiVersion"] = res.api_version
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise HTTPError(400, "BadRequest", "metadata must be an object")
        if res.namespaced:
            if meta.get("namespace") not in (None, "", ns):
                raise HTTPError(400, "BadRequest", "the namespace of the provided object does not "
                                "match the namespace sent on the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName") and name is None:
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if name is not None and meta.get("name") != name:
            raise HTTPError(400, "BadRequest", "the name of the object "
                            f"({meta.get('name')}) does not match the name on the URL ({name})")
        if not meta.get("name"):
            raise HTTPError(422, "Invalid", f'{res.kind} "" is invalid: metadata.name: Required value: '
                            "name or generateName is required")
        return obj

    def _default(self, res: Resource, obj: dict, old: dict | None) -> None:
        if res.name == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            for p in spec.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
                    p.setdefault("targetPort", p.get("port"))
            if spec["type"] != "ExternalName":
                ip = spec.get("clusterIP") or (old or {}).get("spec", {}).get("clusterIP")
                if not ip:
                    ip = str(self._net.network_address + next(self._next_ip))
                spec["clusterIP"] = ip
                spec.setdefault("clusterIPs", [ip])
        if res.name == "namespaces":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]

    def _store_create(self, res: Resource, ns: str, body: Any, dry_run: bool = False) -> dict:
        obj = self._prepare(res, ns, body)
        name = obj["metadata"]["name"]
        if res.namespaced and ("", ns) not in self._objects["namespaces"]:
            raise HTTPError(404, "NotFound", f'namespaces "{ns}" not found',
                            details={"name": ns, "kind": "namespaces"})
        if (ns, name) in self._objects[res.name]:
            raise HTTPError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists',
                            details={"name": name, "kind": res.name})
        self._default(res, obj, None)
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta.pop("resourceVersion", None)
        if dry_run:
            meta["resourceVersion"] = str(self._rv)
            return obj
        meta["resourceVersion"] = str(self._bump())
        self._objects[res.name][(ns, name)] = obj
        self._record(res, "ADDED", obj, None)
        return obj

    def _store_replace(self, res: Resource, ns: str, name: str, body: Any, check_rv: bool = True,
                       dry_run: bool = False) -> dict:
        obj = self._prepare(res, ns, body, name)
        old = self._objects[res.name].get((ns, name))
        if old is None:
            raise HTTPError(404, "NotFound", f'{res.qualified} "{name}" not found',
                            details={"name": name, "kind": res.name})
        want = obj["metadata"].get("resourceVersion")
        if check_rv and want and want != old["metadata"]["resourceVersion"]:
            raise HTTPError(409, "Conflict", f'Operation cannot be fulfilled on {res.qualified} "{name}": '
                            "the object has been modified; please apply your changes to the latest "
                            "version and try again", details={"name": name, "kind": res.name})
        self._default(res, obj, old)
        meta = obj["metadata"]
        meta["uid"] = old["metadata"]["uid"]
        meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        if dry_run:
            return obj
        meta["resourceVersion"] = str(self._bump())
        self._objects[res.name][(ns, name)] = obj
        self._record(res, "MODIFIED", obj, old)
        return obj

    def _store_delete(self, res: Resource, ns: str, name: str, dry_run: bool = False,
                      cascade: bool = True) -> dict:
        old = self._objects[res.name].get((ns, name))
        if old is None:
            raise HTTPError(404, "NotFound", f'{res.qualified} "{name}" not found',
                            details={"name": name, "kind": res.name})
        if dry_run:
            return old
        del self._objects[res.name][(ns, name)]
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self._bump())
        self._record(res, "DELETED", gone, old)
        if res.name == "namespaces" and cascade:   # the namespace controller empties it (instantly, here)
            for other in RESOURCES.values():
                if other.namespaced:
                    for key in [k for k in self._objects[other.name] if k[0] == name]:
                        self._store_delete(other, key[0], key[1])
        return gone

    def _select(self, res: Resource, ns: str | None, q: dict[str, str]) -> Callable[[dict], bool]:
        labels = parse_label_selector(q.get("labelSelector", ""))
        fields = parse_field_selector(q.get("fieldSelector", ""))

        def match(obj: dict) -> bool:
            meta = obj["metadata"]
            if ns is not None and meta.get("namespace") != ns:
                return False
            return labels(meta.get("labels") or {}) and fields(obj)
        return match


# --------------------------------------------------------------------------- tables (kubectl get)

def _age(obj: dict) -> str:
    ts = obj["metadata"].get("creationTimestamp")
    if not ts:
        return "<unknown>"
    secs = int(time.time() - datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())
    secs = max(secs, 0)
    return f"{secs}s" if secs < 120 else f"{secs // 60}m"


def _cells(res: Resource, obj: dict) -> tuple[list[str], list[Any]]:
    name = obj["metadata"]["name"]
    if res.name == "services":
        spec = obj.get("spec", {})
        ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or "<none>"
        ext = spec.get("externalName") or "<none>"
        return (["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age"],
                [name, spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"), ext, ports, _age(obj)])
    if res.name == "endpointslices":
        ports = ",".join(str(p.get("port", "<unset>")) for p in obj.get("ports") or []) or "<unset>"
        addrs = [a for ep in obj.get("endpoints") or [] for a in ep.get("addresses", [])]
        return (["Name", "AddressType", "Ports", "Endpoints", "Age"],
                [name, obj.get("addressType", ""), ports, ",".join(addrs) or "<unset>", _age(obj)])
    if res.name == "namespaces":
        return (["Name", "Status", "Age"], [name, obj.get("status", {}).get("phase", "Active"), _age(obj)])
    if res.name == "pods":
        return (["Name", "Status", "Age"], [name, obj.get("status", {}).get("phase", "Pending"), _age(obj)])
    return (["Name", "Age"], [name, _age(obj)])


def to_table(res: Resource, objs: list[dict], rv: str, *, headers: bool = True,
             full: bool = False, cont: str | None = None) -> dict:
    columns = _cells(res, {"metadata": {"name": ""}})[0]
    rows = []
    for obj in objs:
        if full:
            row_obj = obj
        else:
            row_obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                       "metadata": obj["metadata"]}
        rows.append({"cells": _cells(res, obj)[1], "object": row_obj})
    meta: dict[str, Any] = {"resourceVersion": rv}
    if cont:
        meta["continue"] = cont
    table = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "rows": rows}
    if headers:
        table["columnDefinitions"] = [
            {"name": c, "type": "string", "format": "name" if c == "Name" else "", "description": c,
             "priority": 0} for c in columns]
    return table


# --------------------------------------------------------------------------- HTTP

class _Handler(BaseHTTPRequestHandler):
    api: FakeAPI
    protocol_version = "HTTP/1.1"        # keep-alive and chunked transfer encoding

    def log_message(self, format: str, *args: Any) -> None:   # keep test output clean
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and small chunks go out at once, as Go's net/http does (no Nagle delay).
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.api._connections.add(self.connection)

    def finish(self) -> None:
        self.api._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def send_response(self, code: int, message: str | None = None) -> None:
        if getattr(self, "_req", None) is not None:
            self._req.status = code           # recorded when the status line goes out
        super().send_response(code, message)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # ---------------------------------------------------------------- plumbing

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise HTTPError(400, "BadRequest", "the body of the request was in an unknown format") from None

    def _send_json(self, code: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _dispatch(self, method: str) -> None:
        api = self.api
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        watch = q.get("watch") in ("true", "1")
        req = Request(time.monotonic(), method, url.path, q, watch=watch)
        self._req = req
        with api._cond:
            api.requests.append(req)
            while api._stalled and not api._stopping:     # a hung apiserver: accept, never answer
                api._cond.wait(0.1)
        if api._stopping:
            self.close_connection = True
            return
        try:
            body = self._body()           # DELETE carries DeleteOptions; always drain the body
            if api.token:
                scheme, _, credential = (self.headers.get("Authorization") or "").partition(" ")
                if scheme.lower() != "bearer" or credential.strip() != api.token:
                    raise HTTPError(401, "Unauthorized", "Unauthorized")
            self._route(method, url.path, q, body, req)
        except HTTPError as exc:
            self._send_json(exc.code, exc.status(), exc.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, method: str, path: str, q: dict[str, str], body: Any, req: Request) -> int:
        api = self.api
        parts = [p for p in path.split("/") if p]
        if path in ("/healthz", "/readyz", "/livez"):
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(data)
            return 200
        if method == "GET" and path == "/openapi/v2":
            self._openapi_v2()
            return 200
        if method == "GET":
            doc = self._discovery(path) or self._openapi(path)
            if doc is not None:
                self._send_json(200, doc)
                return 200
        if len(parts) >= 3 and parts[0] == "api" and parts[1] == "v1":
            group, rest = "", parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis" and f"{parts[1]}/{parts[2]}" in GROUP_VERSIONS:
            group, rest = parts[1], parts[3:]
        else:
            raise HTTPError(404, "NotFound", "the server could not find the requested resource")
        ns: str | None = None
        name: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rname, tail = rest[1], rest[2], rest[3:]
        else:
            rname, tail = rest[0], rest[1:]
        res = RESOURCES.get(rname)
        if res is None or res.group != group or len(tail) > 1:
            raise HTTPError(404, "NotFound", "the server could not find the requested resource")
        if tail:
            name = tail[0]
        if res.namespaced is False and ns is not None:
            raise HTTPError(404, "NotFound", "the server could not find the requested resource")
        dry_run = q.get("dryRun") == "All"
        if method == "GET" and name is None:
            verb = "watch" if req.watch else "list"
            with api._cond:
                fault = api._take_fault(verb, res.name)
            if fault and fault.action == "status":
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                raise HTTPError(fault.code, REASONS.get(fault.code, "Unknown"),
                                f"injected fault: {fault.code} for {verb} {res.name}", headers)
            if req.watch:
                return self._watch(res, ns, q, fault)
            return self._list(res, ns, q)
        if method == "GET":
            with api._cond:
                obj = api._objects[res.name].get((ns or "", name))
                if obj is None:
                    raise HTTPError(404, "NotFound", f'{res.qualified} "{name}" not found',
                                    details={"name": name, "kind": res.name})
                obj = copy.deepcopy(obj)
            if "as=Table" in (self.headers.get("Accept") or ""):
                obj = to_table(res, [obj], obj["metadata"]["resourceVersion"],
                               full=q.get("includeObject") == "Object")
            self._send_json(200, obj)
            return 200
        if method == "POST" and name is None:
            with api._cond:
                obj = api._store_create(res, ns or "", body, dry_run)
            self._send_json(201, obj)
            return 201
        if method == "PUT" and name is not None:
            with api._cond:
                obj = api._store_replace(res, ns or "", name, body, dry_run=dry_run)
            self._send_json(200, obj)
            return 200
        if method == "DELETE" and name is not None:
            with api._cond:
                gone = api._store_delete(res, ns or "", name, dry_run)
            self._send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                  "details": {"name": name, "kind": res.name,
                                              "uid": gone["metadata"]["uid"]}})
            return 200
        raise HTTPError(405, "MethodNotAllowed", f"{method} is not supported on this path")

    def _discovery(self, path: str) -> dict | None:
        path = path.rstrip("/") or "/"
        addr = [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.api.port}"}]
        if path == "/version":
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-kdns-fake", "gitCommit": "0" * 40,
                    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
                    "compiler": "gc", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": addr}
        groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                   "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}}
                  for gv in GROUP_VERSIONS if "/" in gv]
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for group in groups:
            if path == f"/apis/{group['name']}":
                return {"kind": "APIGroup", "apiVersion": "v1", **group}
        for gv in GROUP_VERSIONS:
            if path == ("/api/" if gv == "v1" else "/apis/") + gv:
                return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
                    {"name": r.name, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                     "verbs": VERBS, **({"shortNames": list(r.short_names)} if r.short_names else {})}
                    for r in RESOURCES.values() if r.api_version == gv]}
        return None

    def _openapi(self, path: str) -> dict | None:
        """Just enough OpenAPI v3 for kubectl to see that the server validates fields itself.

        kubectl create/replace validate by default; they skip client-side schema validation
        (which would need the full schema) when the group-version document shows a PATCH
        operation for the kind that takes the ``fieldValidation`` query parameter.
        """
        gvs = {("api/" if gv == "v1" else "apis/") + gv: gv for gv in GROUP_VERSIONS}
        if path == "/openapi/v3":
            return {"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}?hash=fake"} for p in gvs}}
        gv = gvs.get(path.removeprefix("/openapi/v3/"))
        if gv is None:
            return None
        paths = {}
        for r in RESOURCES.values():
            if r.api_version != gv:
                continue
            gvk = {"group": r.group, "version": r.version, "kind": r.kind}
            item = f"{r.prefix}/namespaces/{{namespace}}/{r.name}/{{name}}" if r.namespaced \
                else f"{r.prefix}/{r.name}/{{name}}"
            op = {"x-kubernetes-group-version-kind": gvk, "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]}
            paths[item] = {"patch": op, "put": op}
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
                "components": {"schemas": {}}}

    def _openapi_v2(self) -> None:
        """An OpenAPI v2 document without definitions, for kubectl before 1.27 (Debian's 1.20).

        Those validate client-side from /openapi/v2, fetched as protobuf (gnostic's Document),
        and skip kinds the document does not define. The protobuf is field 1 (swagger), field 2
        (info: title, version), written out by hand to avoid a protobuf dependency.
        """
        def field(number: int, payload: bytes) -> bytes:
            return bytes([number << 3 | 2, len(payload)]) + payload
        if "protobuf" in (self.headers.get("Accept") or ""):
            data = field(1, b"2.0") + field(2, field(1, b"Kubernetes") + field(2, b"v1.32.0"))
            ctype = "application/octet-stream"            # what kube-apiserver sends
        else:
            data = json.dumps({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
                               "paths": {}, "definitions": {}}).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # ---------------------------------------------------------------- list

    def _list(self, res: Resource, ns: str | None, q: dict[str, str]) -> int:
        api = self.api
        match = api._select(res, ns, q)
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            raise HTTPError(400, "BadRequest", f"invalid limit {q.get('limit')!r}") from None
        token = q.get("continue")
        with api._cond:
            if token:
                try:
                    snap_id, start = json.loads(base64.urlsafe_b64decode(token.encode()))
                except (ValueError, TypeError):
                    raise HTTPError(400, "BadRequest", "continue key is not valid") from None
                snap = api._snapshots.get(snap_id)
                if snap is None or snap[0] < api._compacted[res.name]:
                    raise HTTPError(410, "Expired", "The provided continue parameter is too old to "
                                    "display a consistent list result. You can start a new list "
                                    "without the continue parameter.")
                rv, _, items = snap
            else:
                rv = api._rv
                items = [o for _, o in sorted(api._objects[res.name].items()) if match(o)]
                snap_id, start = uuid.uuid4().hex, 0
            page = items[start:start + limit] if limit else items[start:]
            cont = None
            if limit and start + limit < len(items):
                api._snapshots[snap_id] = (rv, res.name, items)
                while len(api._snapshots) > 100:
                    api._snapshots.pop(next(iter(api._snapshots)))
                cont = base64.urlsafe_b64encode(json.dumps([snap_id, start + limit]).encode()).decode()
            table = "as=Table" in (self.headers.get("Accept") or "")
            page = [copy.deepcopy(o) for o in page] if table else [api._list_item(o) for o in page]
        if table:
            self._send_json(200, to_table(res, page, str(rv), full=q.get("includeObject") == "Object",
                                          cont=cont))
            return 200
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if cont:
            meta["continue"] = cont
            meta["remainingItemCount"] = len(items) - start - limit
        # Items are encoded once per object version (a 10,000-object list took the fake ~1 s a
        # page to deep-copy and encode on a busy machine: the benchmark timed the fake, not kdns).
        data = (b'{"kind":' + json.dumps(res.kind + "List").encode() + b',"apiVersion":'
                + json.dumps(res.api_version).encode() + b',"metadata":'
                + json.dumps(meta, separators=(",", ":")).encode() + b',"items":[' + b",".join(page) + b"]}")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        return 200

    # ---------------------------------------------------------------- watch

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(_framed(data))

    def _event(self, type_: str, obj: dict, table: Resource | None, first: list[bool], full: bool) -> None:
        if table is not None:
            obj = to_table(table, [obj], obj["metadata"].get("resourceVersion", ""), headers=first[0], full=full)
            first[0] = False
        line = _event_line(type_, obj)
        if self.api.split_chunks and len(line) > 2:
            half = len(line) // 2
            self._chunk(line[:half])
            self.wfile.flush()
            self._chunk(line[half:])
        else:
            self._chunk(line)
        self.wfile.flush()

    def _cut(self) -> None:
        """End the connection without the terminating chunk: the client sees a broken stream."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    def _watch(self, res: Resource, ns: str | None, q: dict[str, str], fault: Fault | None) -> int:
        api = self.api
        match = api._select(res, ns, q)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        table = res if "as=Table" in (self.headers.get("Accept") or "") else None
        full = q.get("includeObject") == "Object"
        try:
            timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else api.default_watch_timeout
        except ValueError:
            raise HTTPError(400, "BadRequest", f"invalid timeoutSeconds {q.get('timeoutSeconds')!r}") from None
        if q.get("sendInitialEvents") == "true" and api.streaming_list == "refuse":
            raise HTTPError(422, "Invalid", "sendInitialEvents: Forbidden: sendInitialEvents is forbidden "
                            "for watch unless the WatchList feature gate is enabled")
        if api.streaming_list == "ignore":
            q = {k: v for k, v in q.items() if k not in ("sendInitialEvents", "resourceVersionMatch")}
        raw_rv = q.get("resourceVersion", "")
        initial_events = q.get("sendInitialEvents") == "true" or raw_rv in ("", "0")
        if q.get("sendInitialEvents") == "true" and q.get("resourceVersionMatch") != "NotOlderThan":
            raise HTTPError(422, "Invalid", "resourceVersionMatch: Forbidden: sendInitialEvents "
                            "requires setting resourceVersionMatch to NotOlderThan")
        stream = Stream(res.name, ns)
        expired_at = None
        with api._cond:
            if raw_rv in ("", "0") or q.get("sendInitialEvents") == "true":
                pos = api._rv
            else:
                try:
                    pos = int(raw_rv)
                except ValueError:
                    raise HTTPError(400, "BadRequest", f"invalid resource version {raw_rv!r}") from None
                if pos < api._compacted[res.name]:
                    expired_at = pos
            initial = [copy.deepcopy(o) for _, o in sorted(api._objects[res.name].items())
                       if match(o)] if initial_events else []
            if fault and fault.action == "expire":
                expired_at = pos
            if fault and fault.action == "drop":
                stream.drop_after = fault.after
            api._streams.append(stream)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.flush()
        first = [True]
        try:
            if fault and fault.action == "garbage":
                self._chunk(fault.line)
                self.wfile.flush()
            if expired_at is not None:
                with api._cond:
                    oldest = api._compacted[res.name] + 1
                self._event("ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                      "status": "Failure", "reason": "Expired", "code": 410,
                                      "message": f"too old resource version: {expired_at} ({oldest})"},
                            None, first, full)
                self._chunk(b"")
                self.wfile.flush()
                return 200
            for obj in initial:
                self._event("ADDED", obj, table, first, full)
                if self._maybe_drop(stream):
                    return 200
            if q.get("sendInitialEvents") == "true" and bookmarks:
                self._event("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version, "metadata": {
                    "resourceVersion": str(pos), "annotations": {"k8s.io/initial-events-end": "true"}}},
                    None, first, full)
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + api.bookmark_interval
            while True:
                with api._cond:
                    while True:
                        now = time.monotonic()
                        if stream.dropped or api._stopping:
                            break
                        if api._stalled:
                            api._cond.wait(0.1)
                            continue
                        if pos < api._lost[res.name]:
                            break                       # fell out of the ring while slow
                        ring = api._history[res.name]
                        if ring and ring[-1].rv > pos:
                            break
                        # Nothing of ours is newer: this watcher is current, as of now.
                        pos = max(pos, api._rv)
                        if now >= deadline or (bookmarks and now >= next_bookmark):
                            break
                        until = deadline if not bookmarks else min(deadline, next_bookmark)
                        api._cond.wait(max(0.0, min(until - now, 0.5)))
                    if stream.dropped or api._stopping:
                        self._cut()
                        return 200
                    if pos < api._lost[res.name]:
                        expired_at = pos
                        events = []
                    else:
                        # The ring is in rv order: walk back from the newest only as far as
                        # this watcher has read (a scan of the whole ring per wakeup costs
                        # milliseconds once it holds thousands of events, e.g. kdns.bench churn).
                        events = []
                        for e in reversed(api._history[res.name]):
                            if e.rv <= pos:
                                break
                            events.append(e)
                        events.reverse()
                    now_rv = api._rv
                if expired_at is not None:
                    self._event("ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                          "status": "Failure", "reason": "Expired", "code": 410,
                                          "message": f"too old resource version: {expired_at}"},
                                None, first, full)
                    self._chunk(b"")
                    self.wfile.flush()
                    return 200
                if table is None and stream.drop_after is None and not api.split_chunks:
                    # All of a wakeup's events in one write: a write per event gave up the GIL
                    # per event, and under churn (kdns.bench: 1,000 events/s from a thread of
                    # this process) each took a switch interval to get it back, so the stream
                    # fell seconds behind the store. Stored objects are never changed in place
                    # (a replace stores a new dict), so they are encoded without a copy.
                    lines = []
                    for e in events:
                        pos = e.rv
                        out = self._filter(e, match)
                        if out is not None:
                            lines.append(_framed(_event_line(*out)))
                            stream.sent += 1
                    if lines:
                        self.wfile.write(b"".join(lines))
                        self.wfile.flush()
                for e in events if table is not None or stream.drop_after is not None \
                        or api.split_chunks else ():
                    pos = e.rv
                    out = self._filter(e, match)
                    if out is None:
                        continue
                    self._event(out[0], copy.deepcopy(out[1]), table, first, full)
                    if self._maybe_drop(stream):
                        return 200
                if not events:
                    now = time.monotonic()
                    if bookmarks and now >= next_bookmark:
                        pos = max(pos, now_rv)
                        self._event("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version,
                                                 "metadata": {"resourceVersion": str(pos)}}, None, first, full)
                        with api._cond:
                            api.bookmarks.append((res.name, pos))
                        next_bookmark = now + api.bookmark_interval
                    if now >= deadline:
                        self._chunk(b"")                # timeoutSeconds: a clean end of stream
                        self.wfile.flush()
                        return 200
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
            return 200
        finally:
            with api._cond:
                if stream in api._streams:
                    api._streams.remove(stream)

    def _maybe_drop(self, stream: Stream) -> bool:
        stream.sent += 1
        if stream.drop_after is not None and stream.sent >= stream.drop_after:
            self._cut()
            return True
        return False

    @staticmethod
    def _filter(e: Event, match: Callable[[dict], bool]) -> tuple[str, dict] | None:
        now = match(e.obj)
        if e.type == "MODIFIED":
            before = e.old is not None and match(e.old)
            if now and before:
                return ("MODIFIED", e.obj)
            if now:
                return ("ADDED", e.obj)
            if before:
                return ("DELETED", e.obj)
            return None
        return (e.type, e.obj) if now else None


# --------------------------------------------------------------------------- object builders

def service(namespace: str, name: str, cluster_ip: str | None = None, *, ports: list[dict] | None = None,
            type: str = "ClusterIP", external_name: str | None = None, **spec: Any) -> dict:
    """A Service as `kubectl get -o json` shows it (ports as [{name, port, protocol}])."""
    s: dict[str, Any] = {"type": type, **spec}
    if ports is not None:
        s["ports"] = ports
    elif type != "ExternalName":
        s["ports"] = [{"name": "http", "port": 80, "protocol": "TCP"}]
    if cluster_ip is not None:
        s["clusterIP"] = cluster_ip
        s["clusterIPs"] = [cluster_ip]
    if external_name is not None:
        s["externalName"] = external_name
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": s}


def endpointslice(namespace: str, name: str, service_name: str | None, addresses: list[str], *,
                  ports: list[dict] | None = None, address_type: str = "IPv4", ready: bool | None = True,
                  hostnames: list[str] | None = None) -> dict:
    labels = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    if service_name is not None:
        labels["kubernetes.io/service-name"] = service_name
    endpoints = []
    for i, addr in enumerate(addresses):
        ep: dict[str, Any] = {"addresses": [addr]}
        if ready is not None:
            ep["conditions"] = {"ready": ready}
        if hostnames and i < len(hostnames) and hostnames[i]:
            ep["hostname"] = hostnames[i]
        endpoints.append(ep)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "addressType": address_type,
            "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}


def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def pod(namespace: str, name: str, ip: str, *, phase: str = "Running", hostname: str = "",
        subdomain: str = "") -> dict:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "example"}]}
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": spec, "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}}


def _event_line(type_: str, obj: dict) -> bytes:
    """One watch event as the API server streams it: a JSON object and a newline."""
    return json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _framed(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)
