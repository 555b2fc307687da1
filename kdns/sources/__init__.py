"""Sources turn manifests or the Kubernetes API into kdns objects; they never build DNS data.

A source hands what it learns to a ``Sink`` (implemented by the serving side), so that imports
point one way: sources -> objects, never sources -> snapshot.
"""

from __future__ import annotations

from typing import Protocol, Union

from kdns.objects import Cluster, EndpointSlice, Namespace, Pod, Service

Object = Union[Service, EndpointSlice, Namespace, Pod]


class Sink(Protocol):
    def reset(self, cluster: Cluster, synced: bool = True) -> None:
        """The whole state (a first list, a relist, a manifest reload). Replaces everything."""

    def apply(self, op: str, obj: Object) -> None:
        """One watch event: op is "ADDED", "MODIFIED" or "DELETED"."""

    def set_synced(self, synced: bool) -> None:
        """Whether every watched kind has been fully listed at least once."""
