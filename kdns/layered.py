"""A read-only map published as a big shared base plus a small delta of changes (the Snapshot's
Service and PTR maps): publishing a change copies the delta, not the cluster."""

from __future__ import annotations

_GONE = object()


class LayeredMap:
    """A read-only map published as a big shared ``base`` plus a small ``delta`` of changes.

    Publishing a change copies only the delta, so an event in a 100,000-endpoint cluster costs
    O(changes since the last compaction), not O(cluster); the writer folds the delta into a new
    base once it grows past ``COMPACT_AT`` (an amortised copy).
    """

    __slots__ = ("base", "delta")
    COMPACT_AT = 2048

    def __init__(self, base: dict | None = None, delta: dict | None = None):
        self.base = base if base is not None else {}
        self.delta = delta if delta is not None else {}

    def get(self, key, default=None):
        value = self.delta.get(key, _GONE)
        if value is _GONE:
            return self.base.get(key, default)
        return default if value is None else value

    def __contains__(self, key) -> bool:
        return self.get(key) is not None

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def keys(self):
        for key, value in self.delta.items():
            if value is not None:
                yield key
        for key in self.base:
            if key not in self.delta:
                yield key

    def __iter__(self):
        return self.keys()

    def items(self):
        for key in self.keys():
            yield key, self[key]

    def values(self):
        for key in self.keys():
            yield self[key]

    def with_changes(self, changes: dict) -> "LayeredMap":
        """A new map with ``changes`` applied (value None deletes); self is not modified."""
        delta = {**self.delta, **changes}
        if len(delta) < self.COMPACT_AT:
            return LayeredMap(self.base, delta)
        base = {**self.base, **delta}
        for key, value in delta.items():
            if value is None:
                del base[key]
        return LayeredMap(base)
