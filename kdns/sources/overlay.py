"""Static objects from manifests added to a live cluster's (--manifests with --kubeconfig).

Two sources feed one sink: ``Overlay.api`` takes the API source's calls, ``Overlay.static`` the
manifest Watcher's. The sink sees the union; where both have an object with the same key, the
API's wins (it is the cluster's truth; the manifest is the operator's addition), with one
warning naming both. When the API's object goes, the manifest's comes back.

Namespaces are not conflicts: both sides saying a namespace exists is the same fact.
"""

from __future__ import annotations

import logging
import threading

from kdns import objects
from kdns.objects import Cluster

log = logging.getLogger("kdns.overlay")

_TABLES = ("services", "slices", "namespaces", "pods")
_KINDS = {"services": "Service", "slices": "EndpointSlice", "pods": "Pod"}


def _table_of(obj) -> str:
    if isinstance(obj, objects.Service):
        return "services"
    if isinstance(obj, objects.EndpointSlice):
        return "slices"
    if isinstance(obj, objects.Namespace):
        return "namespaces"
    return "pods"


def _key(obj):
    return obj.name if isinstance(obj, objects.Namespace) else obj.key


class _Side:
    def __init__(self, overlay: "Overlay", is_api: bool):
        self.overlay, self.is_api = overlay, is_api

    def reset(self, cluster: Cluster, synced: bool = True) -> None:
        self.overlay._reset(self.is_api, cluster, synced)

    def apply(self, op: str, obj) -> None:
        self.overlay._apply(self.is_api, op, obj)

    def set_synced(self, synced: bool) -> None:
        if self.is_api:
            self.overlay.sink.set_synced(synced)


class Overlay:
    def __init__(self, sink, static: Cluster, where: str):
        self.sink = sink
        self.where = where                     # the manifest paths, for the warning
        self._lock = threading.Lock()
        self._static = {t: dict(getattr(static, t)) for t in _TABLES}
        self._api: dict[str, dict] = {t: {} for t in _TABLES}
        self._warned: set = set()
        self._synced = False
        self.api = _Side(self, True)
        self.static = _Side(self, False)

    def merged(self) -> Cluster:
        out = Cluster()
        for t in _TABLES:
            table = dict(self._static[t])
            for key, obj in self._api[t].items():
                if key in table and t != "namespaces":
                    self._warn(t, key)
                table[key] = obj
            setattr(out, t, table)
        return out

    def _warn(self, table: str, key) -> None:
        if (table, key) in self._warned:
            return
        self._warned.add((table, key))
        name = "/".join(key) if isinstance(key, tuple) else key
        log.warning("%s %s is both in the API and in the manifests (%s): the API's object wins",
                    _KINDS[table], name, self.where)

    def _reset(self, is_api: bool, cluster: Cluster, synced: bool) -> None:
        with self._lock:
            side = self._api if is_api else self._static
            for t in _TABLES:
                side[t] = dict(getattr(cluster, t))
            if is_api:
                self._synced = synced
            self.sink.reset(self.merged(), self._synced)

    def _apply(self, is_api: bool, op: str, obj) -> None:
        with self._lock:
            t, key = _table_of(obj), _key(obj)
            mine, other = (self._api, self._static) if is_api else (self._static, self._api)
            if op == "DELETED":
                mine[t].pop(key, None)
            else:
                mine[t][key] = obj
            if is_api:
                if op == "DELETED":
                    back = self._static[t].get(key)
                    if back is not None:
                        self.sink.apply("ADDED", back)     # the manifest's object again
                        return
                elif key in self._static[t] and t != "namespaces":
                    self._warn(t, key)
                self.sink.apply(op, obj)
            elif key not in other[t]:
                self.sink.apply(op, obj)               # the API has none: the manifest's counts
            elif t != "namespaces":
                self._warn(t, key)
