"""The live cluster source: list + watch the Kubernetes API -> kdns objects -> a Sink.

The only module that imports ``kubernetes``. One small reflector per watched kind (Services,
EndpointSlices, Namespaces, and Pods for ``--pods verified``), each in its own thread:

    list (paged: limit/continue)  ->  watch from the list's resourceVersion  ->  watch again
      ^                                   | 410 Gone / too long away              from the last rv
      +-----------------------------------+

- Objects are read as raw JSON (``_preload_content=False`` + ``json.loads``), never as client
  models: building models costs seconds and megabytes at 10k objects (kubernetes-client
  #1231, #1867), and ``kdns.objects.*_from_dict`` strips them at the edge anyway.
- Every request carries a client read timeout: a watch on a dead TCP path would otherwise hang
  forever (kubernetes-client #1148). Bookmarks keep a healthy idle watch talking.
- 410 Expired (in-stream ERROR or on a continue token) means the history we would resume from
  is gone: relist and replace. Anything else (401, 403, 429 with Retry-After, 5xx, dropped or
  stalled connections) is retried from the last resourceVersion with jittered exponential
  backoff; the sink keeps serving the last good data meanwhile, nothing is reset.
- EndpointSlices are watched with the ``kubernetes.io/service-name`` label selector: slices
  without it belong to no Service, and a slice that loses the label arrives as DELETED.

The sink sees ``set_synced(False)`` at start, one ``reset(cluster, True)`` once every kind
has been listed, ``apply(op, obj)`` per later event, and ``reset`` again after any relist.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

import urllib3
import yaml
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from kdns import metrics, objects
from kdns.objects import SERVICE_NAME_LABEL, Cluster, FieldError, short_str
from kdns.sources import Object, Sink, decode, programming

log = logging.getLogger("kdns.cluster")

DEFAULT_KUBECONFIG = "~/.kube/config"
# Where the kubelet mounts a pod's service account token and the cluster CA.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ClusterError(Exception):
    """A problem reaching or reading the API, worded for the user (no traceback)."""


# --------------------------------------------------------------------------- kinds

@dataclass(frozen=True)
class Kind:
    resource: str                                  # plural, as the API names it
    kind: str                                      # for messages
    parse: Callable[[Mapping[str, Any]], Any]      # objects.*_from_dict
    table: str                                     # attribute of Cluster
    path: str                                      # the collection, all namespaces
    label_selector: str | None = None
    namespaced: bool = True

    def key(self, meta: Mapping[str, Any]) -> Any:
        name = meta.get("name") or ""
        if not self.namespaced:
            return name
        return (meta.get("namespace") or "default", name)

    def describe(self, raw: Any) -> str:
        meta = raw.get("metadata") if isinstance(raw, Mapping) else None
        meta = meta if isinstance(meta, Mapping) else {}
        name = short_str(meta.get("name") or "?")
        if self.namespaced:
            return f"{self.kind} {short_str(meta.get('namespace') or '?')}/{name}"
        return f"{self.kind} {name}"


KINDS: dict[str, Kind] = {k.resource: k for k in (
    Kind("services", "Service", objects.service_from_dict, "services", "/api/v1/services"),
    Kind("endpointslices", "EndpointSlice", objects.endpointslice_from_dict, "slices",
         "/apis/discovery.k8s.io/v1/endpointslices", label_selector=SERVICE_NAME_LABEL),
    Kind("namespaces", "Namespace", objects.namespace_from_dict, "namespaces", "/api/v1/namespaces",
         namespaced=False),
    Kind("pods", "Pod", objects.pod_from_dict, "pods", "/api/v1/pods"),
)}

# The list/watch query parameters we send, by the python names the generated list_* methods use.
QUERY = {"limit": "limit", "_continue": "continue", "label_selector": "labelSelector",
         "watch": "watch", "resource_version": "resourceVersion",
         "allow_watch_bookmarks": "allowWatchBookmarks", "timeout_seconds": "timeoutSeconds"}


def lister(api: client.ApiClient, kind: Kind) -> Callable[..., Any]:
    """``kind``'s list (and, with watch=True, watch) call: what CoreV1Api's and DiscoveryV1Api's
    list_*_for_all_namespaces do with _preload_content=False (the raw urllib3 response; an
    ApiException for a non-2xx status), through ApiClient's public param_serialize/call_api.
    Not those classes themselves: importing the generated CoreV1Api costs ~21 MB of RSS for
    code objects kdns never runs (measured on kubernetes 37), an eighth of a 10k-service zone."""
    def call(*, _preload_content: bool = False, _request_timeout=None, **params: Any) -> Any:
        query = [(QUERY[k], v) for k, v in params.items() if v is not None]
        request = api.param_serialize("GET", kind.path, query_params=query,
                                      header_params={"Accept": "application/json"},
                                      auth_settings=["BearerToken"])
        resp = api.call_api(*request, _request_timeout=_request_timeout)
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response
    return call


def kinds_for(pods: bool, labels: str | None = None, endpoints: bool = True) -> list[Kind]:
    """The kinds to list and watch: ``labels`` (--labels) selects Services in the API itself;
    without ``endpoints`` (--noendpoints) no EndpointSlice is watched, as CoreDNS."""
    names = ["services"] + (["endpointslices"] if endpoints else []) + ["namespaces"] \
        + (["pods"] if pods else [])
    kinds = [KINDS[n] for n in names]
    if labels:
        kinds[0] = replace(kinds[0], label_selector=labels)
    return kinds


# --------------------------------------------------------------------------- the store (pure)

class Store:
    """What the source knows: one table per kind, as the sink was (or will be) told.

    ``apply`` is the step the watch loop repeats; it is pure (no I/O) so that it can be tested
    with scripted events.
    """

    def __init__(self) -> None:
        self.cluster = Cluster()

    def table(self, kind: Kind) -> dict:
        return getattr(self.cluster, kind.table)

    def replace(self, kind: Kind, items: dict) -> None:
        setattr(self.cluster, kind.table, items)

    def snapshot(self) -> Cluster:
        """A copy the sink may keep: the dicts are new, the objects are frozen and shared."""
        c = self.cluster
        return Cluster(dict(c.services), dict(c.slices), dict(c.namespaces), dict(c.pods))

    def apply(self, kind: Kind, op: str, raw: Mapping[str, Any]) -> tuple[str, Object] | None:
        """One ADDED/MODIFIED/DELETED event -> the (op, object) to tell the sink, or None.

        An object that no longer parses is dropped rather than kept at its old state: a relist
        would skip it too, and the source must converge to the same answer either way.
        """
        meta = raw.get("metadata") if isinstance(raw, Mapping) else None
        if not isinstance(meta, Mapping) or not meta.get("name"):
            log.warning("skipping a %s event from the API without metadata.name", kind.kind)
            return None
        for what in ("name", "namespace"):
            value = meta.get(what)
            if value is not None and not isinstance(value, str):
                # Not a key we could store or delete by (a list is not even hashable): an
                # object kdns cannot use, skipped like any other, never a TypeError + relist.
                log.warning("skipping a %s event from the API: field metadata.%s: must be a string, "
                            "got %s", kind.kind, what, type(value).__name__)
                return None
        key = kind.key(meta)
        table = self.table(kind)
        if op == "DELETED":
            old = table.pop(key, None)
            return ("DELETED", old) if old is not None else None
        try:
            obj = kind.parse(raw)
        except FieldError as exc:
            log.warning("skipping %s from the API: field %s: %s", kind.describe(raw), exc.path, exc.message)
            old = table.pop(key, None)
            return ("DELETED", old) if old is not None else None
        old = table.get(key)
        if old == obj:
            return None                  # nothing DNS can see changed (status, annotations...)
        table[key] = obj
        return ("MODIFIED" if old is not None else "ADDED", obj)


class BadEvent(ValueError):
    """A watch line that is not a watch event."""


def step(store: Store, kind: Kind, event: Any) -> tuple[tuple[str, Object] | None, str | None]:
    """One decoded watch event -> (the change to tell the sink, the resourceVersion to resume
    from); either may be None. Pure apart from ``store``: the watch loop repeats this step.

    BOOKMARK only moves the resourceVersion (its object carries nothing else: never parse it).
    ERROR 410 raises Expired (relist); any other ERROR raises StreamError (back off, resume).
    """
    if not isinstance(event, Mapping):
        raise BadEvent("not a JSON object")
    op, raw = event.get("type"), event.get("object")
    if not isinstance(op, str) or not isinstance(raw, Mapping):
        raise BadEvent("no type or no object")
    meta = raw.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    rv = rv if isinstance(rv, str) and rv else None
    if op == "BOOKMARK":
        return None, rv
    if op == "ERROR":
        if raw.get("code") == 410:
            raise Expired(f"watch expired: {raw.get('message', '')}")
        raise StreamError(f"ERROR event {raw.get('code')} {raw.get('reason', '')}: {raw.get('message', '')}")
    if op not in ("ADDED", "MODIFIED", "DELETED"):
        log.warning("%s: skipping a watch event of unknown type %r", kind.resource, op)
        return None, None
    return store.apply(kind, op, raw), rv


def parse_items(kind: Kind, items: list) -> dict:
    out = {}
    for raw in items:
        try:
            obj = kind.parse(raw)
        except FieldError as exc:
            log.warning("skipping %s from the API: field %s: %s", kind.describe(raw), exc.path, exc.message)
            continue
        meta = raw.get("metadata") or {}
        out[kind.key(meta)] = obj
    return out


# --------------------------------------------------------------------------- connection

def load_configuration(kubeconfig: str | None = None, context: str | None = None,
                       in_cluster: bool = False) -> client.Configuration:
    """The usual resolution: --in-cluster (service account), else --kubeconfig, else
    $KUBECONFIG (a path list), else ~/.kube/config; --context picks the context."""
    cfg = client.Configuration()
    if in_cluster:
        try:
            kube_config.incluster_config.InClusterConfigLoader(
                token_filename=os.path.join(SERVICE_ACCOUNT_DIR, "token"),
                cert_filename=os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt"),
            ).load_and_set(cfg)           # re-reads the (rotated, bound) token every minute
        except ConfigException as exc:
            raise ClusterError(f"--in-cluster: {exc} (is kdns running in a pod with a service account?)") from None
    else:
        source = "--kubeconfig" if kubeconfig else "KUBECONFIG" if os.environ.get("KUBECONFIG") else "default"
        paths = kubeconfig or os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
        existing = [p for p in paths.split(os.pathsep) if p and os.path.exists(os.path.expanduser(p))]
        if not existing:
            hint = " (use --kubeconfig, set KUBECONFIG, or --in-cluster inside a pod)" if source == "default" else ""
            raise ClusterError(f"kubeconfig {paths}: no such file{hint}")
        try:
            # persist_config=False: never rewrite the user's kubeconfig (refreshed tokens).
            kube_config.load_kube_config(config_file=os.pathsep.join(existing), context=context,
                                         client_configuration=cfg, persist_config=False)
        except ConfigException as exc:
            where = f"context {context!r} in " if context else ""
            raise ClusterError(f"{where}kubeconfig {paths}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ClusterError(f"kubeconfig {paths}: not YAML: {' '.join(str(exc).split())}") from None
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:   # unreadable, odd shapes
            raise ClusterError(f"kubeconfig {paths}: not a usable kubeconfig "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    # Our loops do the retrying (with backoff and Retry-After); urllib3's silent retries
    # would multiply every read timeout.
    cfg.retries = False
    return cfg


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ApiException) and not exc.status:
        return " ".join(str(exc.reason).split())     # no HTTP response: TLS and the like
    if isinstance(exc, ApiException):
        message = ""
        try:
            status = json.loads(exc.body or "")
            message = status.get("message") or ""
        except (ValueError, AttributeError):
            pass
        text = f"HTTP {exc.status} {exc.reason or ''}".rstrip()
        return f"{text}: {message}" if message else text
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "no data before the read timeout"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return f"connection broken ({exc.args[0] if exc.args else exc})"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return f"cannot connect ({str(exc).rsplit(': ', 1)[-1]})"
    return f"{type(exc).__name__}: {exc}"


def retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None)
    if not headers:
        return None
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None                       # an HTTP-date: fall back to our own backoff


class Expired(Exception):
    """The resourceVersion to resume from is gone (410): relist."""


class StreamError(Exception):
    """A non-410 ERROR event inside a watch stream."""


class SinkError(Exception):
    """The sink raised: its state is unknown, so the kind is relisted and reset."""


RETRYABLE = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError, StreamError)


def _list(api: client.ApiClient, kind: Kind, page_size: int, timeout: tuple[float, float]) -> tuple[dict, str]:
    """All items of a kind, stripped to objects (``parse_items``) page by page, and the list's
    resourceVersion. Stripping each page as it comes keeps one page of raw JSON alive, not the
    whole cluster's: at 10,000 Services and 100,000 endpoints the raw dicts of every page held
    at once cost ~170 MB of RSS that stayed after the listing (a fragmented heap)."""
    fn = lister(api, kind)
    items: dict = {}
    token = None
    while True:
        try:
            resp = fn(limit=page_size, _continue=token, label_selector=kind.label_selector,
                      _preload_content=False, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 410:
                # The continue token outlived the server's snapshot: start the list again.
                raise Expired(describe_error(exc)) from None
            raise
        try:
            data = resp.data
        finally:
            resp.release_conn()
        try:
            # Typed Structs of only the fields kdns reads (kdns.sources.decode: ~5x faster
            # than json.loads, a third of the memory); a page they do not fit goes the
            # generic way, which words its problems.
            page = decode.page(data)
            del data
            items.update(parse_items(kind, [decode.to_dict(i) for i in page.items or ()]))
            meta = decode.to_dict(page.metadata) if page.metadata is not None else {}
        except decode.Unsure:
            doc = decode.generic(data)
            if not isinstance(doc, dict) or not isinstance(doc.get("items", []), list):
                raise ValueError(f"list of {kind.resource} is not a {kind.kind}List") from None
            items.update(parse_items(kind, doc.get("items") or []))
            meta = doc.get("metadata") or {}
            del doc
        meta = meta if isinstance(meta, dict) else {}
        token = meta.get("continue")
        if not token:
            rv = meta.get("resourceVersion")
            if not rv or not isinstance(rv, str):
                raise ValueError(f"list of {kind.resource} has no metadata.resourceVersion")
            return items, rv


# The API server refuses objects past ~1.5 MB; a watch "line" this long without a newline is
# a broken or hostile stream. Past it the stream is dropped and the watch resumes.
MAX_LINE = 16 << 20


class LineTooLong(ValueError):
    """A watch line over the cap: the stream is abandoned (a retryable error)."""


def _lines(resp: Any, max_line: int = MAX_LINE) -> Iterator[bytes]:
    """One watch event per line; a line may span chunks and a chunk may hold many lines.
    The pieces of a long line are kept in a list and joined once: appending each chunk to
    one bytes object copied the line once per chunk (a 50 MB object took 20 s to arrive)."""
    parts: list[bytes] = []
    size = 0
    for chunk in resp.stream(65536, decode_content=True):
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            if parts:
                parts.append(chunk[start:nl])
                line = b"".join(parts)
                parts, size = [], 0
            else:
                line = chunk[start:nl]
            start = nl + 1
            if len(line) > max_line:
                raise LineTooLong(f"a watch line of {len(line)} bytes, over the {max_line}-byte cap")
            if line.strip():
                yield line
        if start < len(chunk):
            size += len(chunk) - start
            if size > max_line:
                raise LineTooLong(f"a watch line over the {max_line}-byte cap without a newline")
            parts.append(chunk[start:] if start else chunk)
    if parts:
        line = b"".join(parts)
        if line.strip():
            yield line


# --------------------------------------------------------------------------- backoff

class Backoff:
    """Jittered exponential backoff (client-go style: 0.8 s doubling up to 30 s)."""

    def __init__(self, base: float = 0.8, cap: float = 30.0, rng: Callable[[], float] = random.random):
        self.base, self.cap, self.rng = base, cap, rng
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.failures))
        self.failures += 1
        return delay * (0.5 + 0.5 * self.rng())           # in [delay/2, delay]

    def reset(self) -> None:
        self.failures = 0


# --------------------------------------------------------------------------- the source

@dataclass
class Stats:
    """Counters for /metrics; plain ints (one writer per key, read without locks)."""

    events: dict[str, int] = field(default_factory=dict)       # per kind
    relists: dict[str, int] = field(default_factory=dict)      # per kind, not counting the first
    errors: dict[str, int] = field(default_factory=dict)       # per kind
    skipped: int = 0
    last_event_received: float = 0.0     # time.perf_counter() when the last event line arrived


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 90.0                 # > the apiserver's ~60 s bookmark cadence
    list_read: float = 60.0
    watch: float = 300.0               # server-side timeoutSeconds, jittered up to 2x
    relist_after: float = 300.0        # away longer than this: relist instead of resuming
    backoff_base: float = 0.8
    backoff_cap: float = 30.0
    retry_after_cap: float = 300.0
    page_size: int = 500
    max_line: int = MAX_LINE           # bytes of one watch line (one object) at most


class ClusterSource:
    """Lists and watches the API in background threads and tells ``sink`` what it learns."""

    def __init__(self, sink: Sink, kubeconfig: str | None = None, context: str | None = None,
                 in_cluster: bool = False, pods: bool = False, *, timeouts: Timeouts = Timeouts(),
                 configuration: client.Configuration | None = None, labels: str | None = None,
                 endpoints: bool = True):
        self.sink = sink
        self.timeouts = timeouts
        self.kinds = kinds_for(pods, labels, endpoints)
        self.configuration = configuration or load_configuration(kubeconfig, context, in_cluster)
        self.store = Store()
        self.stats = Stats()
        self.synced = False
        self._listed: set[str] = set()
        self._forbidden: dict[str, str] = {}     # optional kinds the account may not list: why
        self._lock = threading.Lock()            # store + sink calls, in one order
        self._stop = threading.Event()
        self._reflectors = [_Reflector(self, k) for k in self.kinds]
        self._threads: list[threading.Thread] = []

    @property
    def host(self) -> str:
        return self.configuration.host

    def start(self) -> None:
        self.sink.set_synced(False)
        for r in self._reflectors:
            t = threading.Thread(target=self._guarded, args=(r,), name=f"kdns-watch-{r.kind.resource}",
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for r in self._reflectors:
            r.interrupt()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for r, t in zip(self._reflectors, self._threads):
            if not t.is_alive():
                r.api.close()              # its connection pool; a live thread still owns it

    def _guarded(self, reflector: "_Reflector") -> None:
        """A reflector's thread: if it ever ends while kdns runs, say so (and failed() tells
        /ready), never a silent stop of that kind's updates."""
        try:
            reflector.run()
        except BaseException as exc:          # noqa: BLE001 - the thread ends here either way
            log.critical("the watch of %s stopped: %s: %s; its changes are no longer served, "
                         "/ready says 503", reflector.kind.resource, type(exc).__name__, exc,
                         exc_info=not isinstance(exc, SystemExit))
        else:
            if not self._stop.is_set():
                log.critical("the watch of %s stopped; its changes are no longer served, /ready "
                             "says 503", reflector.kind.resource)

    def failed(self) -> str | None:
        """Why the API is no longer watched (for /ready), or None while every watch runs."""
        if self._stop.is_set():
            return None
        dead = [r.kind.resource for r, t in zip(self._reflectors, self._threads) if not t.is_alive()]
        return f"the watch of {', '.join(dead)} stopped (see the log)" if dead else None

    def waiting_for(self) -> str:
        """The kinds not fully listed yet, for /ready's reason ("" once synced)."""
        return ", ".join(k.resource for k in self.kinds if k.resource not in self._listed)

    def problem(self) -> str | None:
        """Why this source must not take traffic although it serves (for /ready), or None."""
        return "; ".join(list(self._forbidden.values())) or None

    def forbidden(self, kind: Kind, exc: BaseException) -> None:
        """An optional kind (pods, for --pods verified) the account may not list: serve the rest
        as if it were empty, and say not ready, rather than hold the whole zone at SERVFAIL.
        Retrying goes on: granting the rule heals it without a restart."""
        if kind.resource in self._forbidden:
            return
        why = (f"forbidden to list {kind.resource}: --pods verified needs list and watch on pods "
               f"(apply deploy/kdns-pods-verified.yaml); serving Services, pod names get NXDOMAIN")
        log.error("%s (%s)", why, describe_error(exc))
        self._forbidden[kind.resource] = why
        if kind.resource not in self._listed:
            self.listed(kind, {})

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.synced and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.01)
        return self.synced

    # ---------------------------------------------------------------- called by reflectors

    def listed(self, kind: Kind, items: dict) -> None:
        with self._lock:
            self.store.replace(kind, items)
            self._listed.add(kind.resource)
            if len(self._listed) == len(self.kinds):
                first = not self.synced
                self.synced = True
                self._tell(self.sink.reset, self.store.snapshot(), True)
                if first:
                    log.info("synced with %s: %d services, %d endpointslices, %d namespaces%s",
                             self.host, len(self.store.cluster.services), len(self.store.cluster.slices),
                             len(self.store.cluster.namespaces),
                             f", {len(self.store.cluster.pods)} pods" if len(self.kinds) > 3 else "")

    def event(self, kind: Kind, event: Any) -> str | None:
        """Take one watch event; returns the resourceVersion to resume from, if it has one."""
        with self._lock:
            change, rv = step(self.store, kind, event)
            # Before the first full sync the store collects; the first reset carries it all.
            if change is not None and self.synced:
                self._tell(self.sink.apply, *change)
                if kind.resource == "endpointslices" and change[0] != "DELETED":
                    programming.served(event.get("object") or {}, self.store.cluster.services.get(
                        (change[1].namespace, change[1].service_name)))
            return rv

    def _tell(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception as exc:   # noqa: BLE001 - a serving-side bug must not kill the watch
            what = f"{args[0]} {type(args[1]).__name__} {getattr(args[1], 'name', '')}" \
                if len(args) == 2 and isinstance(args[0], str) else "a full reset"
            log.exception("the serving side failed to take %s; relisting to recover", what)
            raise SinkError(str(exc)) from exc


class _Reflector:
    def __init__(self, source: ClusterSource, kind: Kind):
        self.source = source
        self.kind = kind
        self.rv: str | None = None
        self.api = client.ApiClient(configuration=source.configuration)
        self.backoff = Backoff(source.timeouts.backoff_base, source.timeouts.backoff_cap)
        self.last_contact = time.monotonic()
        self.expired_in_a_row = 0
        self.relist_reason = "start"
        self._resp: Any = None

    def interrupt(self) -> None:
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()            # unblocks a read in the reflector's thread
            except Exception:              # noqa: BLE001 - already closed is fine
                pass

    def run(self) -> None:
        stop = self.source._stop
        t = self.source.timeouts
        name = self.kind.resource
        stats = self.source.stats
        while not stop.is_set():
            try:
                if self.rv is not None and time.monotonic() - self.last_contact > t.relist_after:
                    log.info("%s: away from the API for over %.0fs, relisting", name, t.relist_after)
                    self.rv = None
                    self.relist_reason = "error"
                if self.rv is None:
                    relist = name in self.source._listed
                    items, rv = _list(self.api, self.kind, t.page_size, (t.connect, t.list_read))
                    if self.source._forbidden.pop(name, None):
                        log.info("%s: listed; the missing permission was granted", name)
                    self.last_contact = time.monotonic()
                    self.source.listed(self.kind, items)
                    self.rv = rv
                    metrics.RELISTS.labels(name, self.relist_reason if relist else "start").inc()
                    if relist:
                        stats.relists[name] = stats.relists.get(name, 0) + 1
                        log.info("%s: relisted at resourceVersion %s (%d objects)", name, rv, len(items))
                started = time.monotonic()
                if self._watch() == 0 and time.monotonic() - started < 1.0:
                    # Ended cleanly at once with nothing said: a misbehaving server or proxy;
                    # don't spin on it.
                    stop.wait(self.backoff.next())
            except Expired as exc:
                self.rv = None
                self.relist_reason = "gone"
                # The first 410 relists at once; 410s in a row (nothing but expiries in
                # between) mean something is off: back off rather than hammer the server.
                delay = self.backoff.next() if self.expired_in_a_row else 0.0
                self.expired_in_a_row += 1
                log.info("%s: %s; relisting%s", name, exc, f" in {delay:.1f}s" if delay else "")
                stop.wait(delay)
            except RETRYABLE as exc:
                if stop.is_set():
                    break
                stats.errors[name] = stats.errors.get(name, 0) + 1
                metrics.WATCH_ERRORS.labels(name, _reason(exc)).inc()
                delay = self.backoff.next()
                hint = retry_after(exc)
                if hint is not None:
                    delay = min(hint, t.retry_after_cap) + 0.1 * self.backoff.rng()
                if getattr(exc, "status", None) == 403 and self.kind.resource == "pods":
                    self.source.forbidden(self.kind, exc)
                what = "listing" if self.rv is None else "watching"
                log.warning("%s %s at %s: %s; retrying in %.1fs", what, name, self.source.host,
                            describe_error(exc) + _advice(exc, self.kind), delay)
                stop.wait(delay)
            except SinkError:
                self.rv = None
                self.relist_reason = "error"
                stop.wait(self.backoff.next())
            except Exception:        # noqa: BLE001 - a bug: say so, start over, keep the thread
                log.exception("%s: unexpected error; relisting", name)
                self.rv = None
                self.relist_reason = "error"
                stop.wait(self.backoff.next())
            finally:
                self._resp = None

    def _watch(self) -> int:
        """One watch request, read to its end; returns how many lines it carried."""
        t = self.source.timeouts
        stats = self.source.stats
        name = self.kind.resource
        fn = lister(self.api, self.kind)
        try:
            resp = fn(watch=True, resource_version=self.rv, allow_watch_bookmarks=True,
                      timeout_seconds=int(t.watch * (1 + random.random())),
                      label_selector=self.kind.label_selector,
                      _preload_content=False, _request_timeout=(t.connect, t.read))
        except ApiException as exc:
            if exc.status == 410:
                raise Expired(f"watch from resourceVersion {self.rv}: {describe_error(exc)}") from None
            raise
        self._resp = resp
        if self.source._stop.is_set():
            resp.shutdown()
        self.last_contact = time.monotonic()
        lines = 0
        try:
            for line in _lines(resp, t.max_line):
                lines += 1
                stats.last_event_received = time.perf_counter()
                self.last_contact = time.monotonic()
                try:
                    event = decode.event(line)
                    op = event.get("type") if isinstance(event, dict) else None
                    if op in EVENT_TYPES:
                        metrics.WATCH_EVENTS.labels(name, op).inc()
                    is_error = op == "ERROR"
                    if not is_error:
                        if self.backoff.failures:
                            log.info("watching %s again at resourceVersion %s", name, self.rv)
                        self.backoff.reset()           # the stream works: a later failure starts small
                        self.expired_in_a_row = 0
                    rv = self.source.event(self.kind, event)
                except (ValueError, RecursionError) as exc:     # json or BadEvent
                    stats.skipped += 1
                    log.warning("%s: skipping an undecodable watch event: %s", name, exc)
                    continue
                except Expired as exc:
                    raise Expired(f"watch from resourceVersion {self.rv}: {exc}") from None
                if isinstance(event, dict) and event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    stats.events[name] = stats.events.get(name, 0) + 1
                if rv:
                    self.rv = rv
        except LineTooLong:
            resp.close()                   # unread bytes: the connection is not reusable
            raise
        finally:
            resp.release_conn()
        # A clean end (timeoutSeconds reached): watch again from where we are.
        return lines


EVENT_TYPES = frozenset(("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"))


def _reason(exc: BaseException) -> str:
    """A bounded label for kdns_watch_errors: the HTTP status, or what broke."""
    status = getattr(exc, "status", None)
    if isinstance(exc, ApiException) and status:
        return str(status)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "timeout"
    if isinstance(exc, (urllib3.exceptions.ProtocolError, urllib3.exceptions.NewConnectionError,
                        ConnectionError)):
        return "disconnect"
    if isinstance(exc, StreamError):
        return "stream"
    return "error"


def _advice(exc: BaseException, kind: Kind) -> str:
    status = getattr(exc, "status", None)
    if status == 403:
        return (f" (the account needs list and watch on {kind.resource}; see the ClusterRole in "
                "deploy/kdns.yaml)")
    if status == 401:
        return " (the credentials were rejected; check the kubeconfig user or the service account token)"
    return ""


# --------------------------------------------------------------------------- one-shot listing

def list_cluster(kubeconfig: str | None = None, context: str | None = None, in_cluster: bool = False,
                 *, pods: bool = False, configuration: client.Configuration | None = None,
                 timeouts: Timeouts = Timeouts()) -> Cluster:
    """One full listing of every kind (for ``kdns env --kubeconfig``); ClusterError on failure."""
    cfg = configuration or load_configuration(kubeconfig, context, in_cluster)
    api = client.ApiClient(configuration=cfg)
    store = Store()
    try:
        for kind in kinds_for(pods):
            for attempt in range(3):
                try:
                    items, _ = _list(api, kind, timeouts.page_size, (timeouts.connect, timeouts.list_read))
                    break
                except Expired:
                    if attempt == 2:
                        raise ClusterError(f"listing {kind.resource} at {cfg.host}: the list kept "
                                           "expiring while paging; try again") from None
                except RETRYABLE as exc:
                    raise ClusterError(f"listing {kind.resource} at {cfg.host}: "
                                       f"{describe_error(exc)}{_advice(exc, kind)}") from None
            store.replace(kind, items)
    finally:
        api.close()
    return store.snapshot()
