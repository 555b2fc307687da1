"""Reloading manifests while serving: the Watcher, and the events that turn one load into the next."""

from __future__ import annotations

import logging
import threading
from typing import Any

from kdns import metrics
from kdns.objects import Cluster
from kdns.sources import workloads
from kdns.sources.files import files_of, stamp as _stamp
from kdns.sources.manifests import ManifestError, load

log = logging.getLogger("kdns.manifests")


class Watcher:
    """Reload the manifests when a file changes; a bad reload keeps the last good data.

    Polls (path, mtime, size) of every file: cheap, and needs no inotify in a container. Only
    the files that changed are read again (the others' objects are kept from the last load),
    and only the objects that changed go to the sink, as watch events: at 10,000 Services a
    one-file edit is a fraction of a second instead of a full re-read and recompile.
    """

    # Past this many changed objects, one reset (a full recompile) beats event by event.
    RESET_ABOVE = 2000

    def __init__(self, paths: list, service_cidr: str, sink, interval: float = 2.0,
                 derive: workloads.Options = workloads.Options(), labels: str | None = None):
        self.paths = paths
        self.labels = labels
        self.service_cidr = service_cidr
        self.derive = derive
        self.sink = sink
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()       # stop() or trigger(): end the wait between polls
        self._forced = False
        self._thread: threading.Thread | None = None
        self._died: str | None = None
        self._seen = self._stamp()
        self._files: dict = {}
        # What the sink holds now (set by loaded()); without it the first reload is a reset.
        self._cluster: Cluster | None = None

    @classmethod
    def loaded(cls, paths: list, service_cidr: str, sink, interval: float = 2.0,
               derive: workloads.Options = workloads.Options(),
               labels: str | None = None) -> tuple["Watcher", Cluster]:
        """Load the manifests (ManifestError on problems) and a Watcher that knows them."""
        watcher = cls(paths, service_cidr, sink, interval, derive, labels)
        cluster = load(paths, service_cidr, watcher._files, derive=derive, labels=labels)
        watcher._cluster = cluster
        return watcher, cluster

    def _stamp(self) -> tuple:
        files, _ = files_of(self.paths)
        return tuple((str(f), _stamp(f)) for f in files)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kdns-manifests", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def trigger(self) -> None:
        """Re-read every file now, changed or not (SIGHUP): safe from a signal handler."""
        self._forced = True
        self._wake.set()

    def failed(self) -> str | None:
        """Why the manifests are no longer watched (for /ready), or None while they are."""
        if self._died is not None:
            return self._died
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._stop.is_set():
            return "the manifest watcher stopped (see the log)"
        return None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # --reload 0: no polling, but SIGHUP still re-reads
                self._wake.wait(self.interval if self.interval > 0 else None)
                self._wake.clear()
                if self._stop.is_set():
                    return
                forced, self._forced = self._forced, False
                try:
                    self.check(force=forced)
                except Exception:            # noqa: BLE001 - a bug in one reload: say so, keep watching
                    log.exception("reloading the manifests failed; still serving the last good "
                                  "data, and still watching")
        except BaseException as exc:
            self._died = f"the manifest watcher stopped: {type(exc).__name__}: {exc}"
            log.critical("%s; no edit will be served from now on, /ready says 503", self._died,
                         exc_info=not isinstance(exc, SystemExit))
        finally:
            if not self._stop.is_set() and self._died is None:
                self._died = "the manifest watcher stopped"
                log.critical("%s; no edit will be served from now on, /ready says 503", self._died)

    def check(self, force: bool = False) -> None:
        """One poll: reload if any file changed, or every file with ``force`` (the loop's step)."""
        stamp = self._stamp()
        if stamp == self._seen and not force:
            return
        self._seen = stamp
        if force:
            # Forget what was read, but not what it held: a file unreadable now still keeps
            # its objects from the last good read.
            for path, (_, objs) in list(self._files.items()):
                self._files[path] = (None, objs)
        try:
            cluster = load(self.paths, self.service_cidr, self._files, derive=self.derive,
                           labels=self.labels)
        except ManifestError as exc:
            for line in exc.problems:
                log.error("%s", line)
            metrics.RELOAD_FAILED.inc()
            log.error("reload failed: still serving the last good manifests")
            return
        changes = diff(self._cluster, cluster) if self._cluster is not None else None
        if changes is None or len(changes) > self.RESET_ABOVE:
            self.sink.reset(cluster, True)
        else:
            for op, obj in changes:
                self.sink.apply(op, obj)
        self._cluster = cluster
        log.info("reloaded manifests: %d services, %d endpoint slices (%s)", len(cluster.services),
                 len(cluster.slices), "all" if changes is None else f"{len(changes)} changed")


def diff(old: Cluster, new: Cluster) -> list[tuple[str, Any]]:
    """The watch events that turn ``old`` into ``new``: namespaces first, deletions last."""
    added, deleted = [], []
    for table in ("namespaces", "services", "slices", "pods"):
        before, after = getattr(old, table), getattr(new, table)
        for key, obj in after.items():
            was = before.get(key)
            if was is None:
                added.append(("ADDED", obj))
            elif was is not obj and was != obj:
                added.append(("MODIFIED", obj))
        deleted.extend(("DELETED", obj) for key, obj in before.items() if key not in after)
    return added + deleted
