"""What the cluster source knows, and the pure step a watch event takes through it.

One Kind per watched resource (Services, EndpointSlices, Namespaces, Pods), the Store of their
objects (one table per kind, as the sink was told), and ``step``: one decoded watch event ->
the change to tell the sink and the resourceVersion to resume from. No I/O here, so the watch
loop's logic is tested with scripted events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from kdns import objects
from kdns.objects import SERVICE_NAME_LABEL, Cluster, EndpointSlice, FieldError, short_str
from kdns.sources import Object

log = logging.getLogger("kdns.cluster")


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


def kinds_for(pods: bool, labels: str | None = None, endpoints: bool = True) -> list[Kind]:
    """The kinds to list and watch: ``labels`` (--labels) selects Services in the API itself;
    without ``endpoints`` (--noendpoints) no EndpointSlice is watched, as CoreDNS."""
    names = ["services"] + (["endpointslices"] if endpoints else []) + ["namespaces"] \
        + (["pods"] if pods else [])
    kinds = [KINDS[n] for n in names]
    if labels:
        kinds[0] = replace(kinds[0], label_selector=labels)
    return kinds


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
        if type(old) is EndpointSlice and type(obj) is EndpointSlice:
            obj = _keep_unchanged(old, obj)
        table[key] = obj
        return ("MODIFIED" if old is not None else "ADDED", obj)


def _keep_unchanged(old: EndpointSlice, new: EndpointSlice) -> EndpointSlice:
    """``new`` holding ``old``'s Endpoint objects wherever they are equal: a rolling update
    rewrites a slice to change one endpoint of many, and each event's freshly decoded copies
    of the others (their IP and pod-name strings, which the snapshot also holds) only made
    the heap grow under churn. Equal objects, so nothing the sink sees differs."""
    if not old.endpoints or not new.endpoints:
        return new
    mine = {ep: ep for ep in old.endpoints}
    kept = tuple([mine.get(ep, ep) for ep in new.endpoints])
    return replace(new, endpoints=kept)


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


class Expired(Exception):
    """The resourceVersion to resume from is gone (410): relist."""


class StreamError(Exception):
    """A non-410 ERROR event inside a watch stream."""
