"""The live cluster source: list + watch the Kubernetes API -> kdns objects -> a Sink.

With kdns.sources.apiread (list pages, watch lines) and kdns.sources.kubeauth (configuration),
the only modules that import ``kubernetes``. One small reflector per watched kind (Services,
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
- The streaming list (Kubernetes 1.32+, ``--api-streaming-list auto``): a kind's first sync and
  every relist is ONE watch with sendInitialEvents=true; its ADDED events up to the BOOKMARK
  annotated ``k8s.io/initial-events-end`` are the list (parsed as list items are), and the same
  stream goes on as the watch. It spares the API server building a whole list in memory. A
  server that refuses it (400/403/422, an ERROR event, a bookmark without the annotation or the
  end of the stream before it: older servers) gets paged lists from then on, for that kind.
- EndpointSlices are watched with the ``kubernetes.io/service-name`` label selector: slices
  without it belong to no Service, and a slice that loses the label arrives as DELETED.

The sink sees ``set_synced(False)`` at start, one ``reset(cluster, True)`` once every kind
has been listed, ``apply(op, obj)`` per later event, and ``reset`` again after any relist.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kdns.sources import kubeimport  # noqa: F401, I001 - first: see there
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException

from kdns import metrics
from kdns.objects import Cluster
from kdns.sources import Sink, decode, programming
# The parts, by job: where the API is and who we are (kubeauth), the kinds, store and pure
# event step (clusterstore), list pages, watch lines and errors (apiread). Their names are
# re-exported: the CLI and the tests use them from here.
from kdns.sources.apiread import (MAX_LINE, RETRYABLE, ApiClient, Backoff, LineTooLong, SinkError,  # noqa: F401
                                  _advice, _lines, _list, _reason, describe_error, lister,
                                  retry_after)
from kdns.sources.clusterstore import (KINDS, BadEvent, Expired, Kind, Store,  # noqa: F401
                                       StreamError, kinds_for, parse_items, step)
from kdns.sources.kubeauth import (DEFAULT_KUBECONFIG, SERVICE_ACCOUNT_DIR,  # noqa: F401
                                   ClusterError, load_configuration)

log = logging.getLogger("kdns.cluster")

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
                 configuration: Configuration | None = None, labels: str | None = None,
                 endpoints: bool = True, streaming_list: bool = False):
        self.sink = sink
        self.timeouts = timeouts
        self.streaming_list = streaming_list      # try sendInitialEvents before paged lists
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
        self.api = ApiClient(configuration=source.configuration)
        self.backoff = Backoff(source.timeouts.backoff_base, source.timeouts.backoff_cap)
        self.last_contact = time.monotonic()
        self.expired_in_a_row = 0
        self.relist_reason = "start"
        self.streaming = source.streaming_list   # False once the server refused it
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
                if self.rv is None and not self.streaming:
                    items, rv = _list(self.api, self.kind, t.page_size, (t.connect, t.list_read))
                    self._synced(items, rv)
                started = time.monotonic()
                if self._watch() == 0 and time.monotonic() - started < 1.0:
                    # Ended cleanly at once with nothing said: a misbehaving server or proxy;
                    # don't spin on it.
                    stop.wait(self.backoff.next())
            except Refused as exc:
                if stop.is_set():
                    break                  # our own shutdown ended the stream
                # Not an outage: this server has no streaming list. Paged lists, at once.
                self.streaming = False
                log.info("%s: the API server refused the streaming list (%s); using paged lists",
                         name, exc)
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

    def _synced(self, items: dict, rv: str) -> None:
        """A full list of the kind (paged, or a streaming list's initial events) is in."""
        name = self.kind.resource
        stats = self.source.stats
        relist = name in self.source._listed
        if self.source._forbidden.pop(name, None):
            log.info("%s: listed; the missing permission was granted", name)
        self.last_contact = time.monotonic()
        self.source.listed(self.kind, items)
        self.rv = rv
        metrics.RELISTS.labels(name, self.relist_reason if relist else "start").inc()
        if relist:
            stats.relists[name] = stats.relists.get(name, 0) + 1
            log.info("%s: relisted at resourceVersion %s (%d objects)", name, rv, len(items))

    def _watch(self) -> int:
        """One watch request, read to its end; returns how many lines it carried. Without a
        resourceVersion it is a streaming list: initial events first (see ``_initial``)."""
        t = self.source.timeouts
        stats = self.source.stats
        name = self.kind.resource
        fn = lister(self.api, self.kind)
        initial: dict | None = {} if self.rv is None else None
        since = {"resource_version": self.rv} if initial is None else {
            "resource_version": "", "send_initial_events": True,
            "resource_version_match": "NotOlderThan"}
        try:
            resp = fn(watch=True, allow_watch_bookmarks=True, **since,
                      timeout_seconds=int(t.watch * (1 + random.random())),
                      label_selector=self.kind.label_selector,
                      _preload_content=False, _request_timeout=(t.connect, t.read))
        except ApiException as exc:
            if initial is not None and exc.status in (400, 403, 422):
                raise Refused(describe_error(exc)) from None
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
                if initial is not None:
                    initial = self._initial(initial, line, resp)
                    continue
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
        if initial is not None:
            raise Refused("the stream ended before the initial-events-end bookmark")
        # A clean end (timeoutSeconds reached): watch again from where we are.
        return lines

    def _initial(self, items: dict, line: bytes, resp: Any) -> dict | None:
        """One line of a streaming list's initial events: ADDED objects go into ``items``
        through parse_items, as a list page's would (the store gets the same objects); the
        initial-events-end BOOKMARK syncs the kind (None: the stream is a plain watch now)."""
        try:
            event = decode.event(line)
        except ValueError as exc:
            self.source.stats.skipped += 1
            log.warning("%s: skipping an undecodable watch event: %s", self.kind.resource, exc)
            return items
        op = event.get("type") if isinstance(event, dict) else None
        raw = event.get("object") if isinstance(event, dict) else None
        if not isinstance(raw, dict):
            resp.close()
            raise Refused(f"a {op} event without an object before the initial-events-end bookmark")
        if op == "ADDED" or op == "MODIFIED":
            items.update(parse_items(self.kind, [raw]))
            return items
        if op == "DELETED":
            items.pop(self.kind.key(raw.get("metadata") or {}), None)
            return items
        meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
        rv = meta.get("resourceVersion")
        annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
        if op == "BOOKMARK" and annotations.get("k8s.io/initial-events-end") == "true" \
                and isinstance(rv, str) and rv:
            self.backoff.reset()
            self.expired_in_a_row = 0
            self._synced(items, rv)
            return None
        resp.close()                       # unread bytes: the connection is not reusable
        if op == "ERROR":
            raise Refused(f"ERROR event {raw.get('code')} {raw.get('reason', '')}: "
                          f"{raw.get('message', '')}".rstrip(": "))
        raise Refused(f"a {op} event before the initial-events-end bookmark")


EVENT_TYPES = frozenset(("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"))


class Refused(Exception):
    """The server does not do the streaming list (why): paged lists from now on."""


# --------------------------------------------------------------------------- one-shot listing

def list_cluster(kubeconfig: str | None = None, context: str | None = None, in_cluster: bool = False,
                 *, pods: bool = False, configuration: Configuration | None = None,
                 timeouts: Timeouts = Timeouts()) -> Cluster:
    """One full listing of every kind (for ``kdns env --kubeconfig``); ClusterError on failure."""
    cfg = configuration or load_configuration(kubeconfig, context, in_cluster)
    api = ApiClient(configuration=cfg)
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
