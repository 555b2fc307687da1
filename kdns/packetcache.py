"""The packet cache: answers kept exactly as long as the data they were read from.

Key: the query after its 2-byte ID (flags, question as sent, EDNS; a COOKIE option cut out).
Value: [the response after its ID, its stats cell, the deps it was read from, its rotation or
None]. The UDP loops look keys up with a bare ``dict.get``, no lock and no check, so a hit costs
what it cost when the cache was emptied at every snapshot.

Rotation (--loadbalance, as kubeadm's Corefile has CoreDNS's loadbalance): an answer section of
several A or AAAA records whose owner is the question pointer is a run of equal-sized,
position-independent RRs, so each rotation of it is made once, when the answer is stored, and a
hit serves the next one: no slicing or re-encoding per hit (four slices and joins per hit cost
+75% of a hit's instructions, measured under valgrind). Rotations of a large answer (more than
ROTATIONS_MAX bytes for all of them) are sliced per hit instead, to bound the memory.

Validity follows the data, not the snapshot: ``sync`` is called by a UDP loop when it sees a new
snapshot, and drops only the entries whose deps (a Service, a namespace, an IP's PTR, a pod; see
kdns.snapshot.APEX_NS) changed since the version the cache last synced to, as the Holder's log
tells. A changed namespace also drops every entry of a Service key or pod in it, so an answer
below an existing namespace may name its Service key alone (kdns.direct does). ``put`` keeps an answer only if it was computed from the snapshot the cache is synced
to, so an answer computed from data that changed meanwhile can never be stored after its
invalidation went by. In-zone answers are therefore always those of the current snapshot
(a negative answer's SOA serial may be that of the snapshot it was computed from).

Bounded by --cache-size: a full cache drops its oldest quarter (dicts keep insertion order),
FIFO in batches, O(1) amortised per insert. A plain dict, not a cachetools LRU: an LRU hit
costs ~0.25 µs more (its reordering), measured as 5-25% fewer QPS with dnsperf here.

Admission (a doorkeeper, as nginx's proxy_cache_min_uses or TinyLFU's): while the cache has
room every answer is kept; once it is full, an answer is kept only when its question missed
before, recently (``_seen``, a FIFO window as large as the cache). A name asked once, such as
one of 100,000 endpoint names or one step of a search walk, then costs no insert and evicts
no hot answer; a name asked twice is cached on its second miss. Measured on a 10,000-Service
cluster with uniformly random names (workload e), the insert and its eviction were ~3 µs of
a ~15 µs miss.

The dep index is unindexed lazily: an evicted entry leaves its keys in ``_by_dep`` (dropping
a key that is no longer there, or that was put again since, is harmless: at worst one answer
is recomputed), and the index is rebuilt from the entries once it holds twice as many stale keys as
the cache has entries, so it stays within three times the cache whatever names clients make up.
"""

from __future__ import annotations

import itertools
import threading

_ABSENT = object()


class PacketCache:
    def __init__(self, holder, size: int):
        self.holder = holder
        self.size = max(1, size)
        self.entries: dict[bytes, tuple] = {}
        self._by_dep: dict[object, dict[bytes, None]] = {}     # dep -> keys read from it
        self.version = holder.current.version                  # synced up to this snapshot
        self._seen: dict[bytes, None] = {}       # recent misses not admitted (the doorkeeper)
        self._stale = 0                          # keys in _by_dep whose entry is gone
        self._lock = threading.Lock()
        self.dropped = 0          # entries dropped because their data changed (for tests, metrics)
        self.flushes = 0          # times everything was dropped (a relist, a sync change)

    def sync(self, snap) -> None:
        """Drop the answers that the snapshots after ``self.version`` up to ``snap`` changed."""
        with self._lock:
            if snap.version <= self.version:
                return
            changed = self.holder.changes(self.version, snap.version)
            if changed is None:
                self.dropped += len(self.entries)
                self.flushes += 1
                self.entries.clear()         # clear(), not a new dict: the loops hold its .get
                self._by_dep.clear()
                self._stale = 0
            else:
                by_dep = self._by_dep
                namespaces = []
                for dep in changed:
                    keys = by_dep.pop(dep, None)
                    if keys:
                        for key in keys:
                            self._drop(key)
                    if type(dep) is str and _is_namespace(dep):
                        namespaces.append(dep)
                if namespaces:
                    # Answers below a namespace that exists are indexed under their Service key
                    # (or pod) only: a namespace created or deleted (rare) drops them by a scan.
                    for dep in [d for d in by_dep if type(d) is tuple and d[0] in namespaces]:
                        for key in by_dep.pop(dep):
                            self._drop(key)
            self.version = snap.version

    def put(self, key: bytes, tail: bytes, cell, deps, version: int, rotation=None) -> None:
        """``rotation``: (start, end, record size) of a rotatable run of records in ``tail``."""
        with self._lock:
            if version != self.version:
                return                       # computed from a snapshot the cache has moved past
            if key in self.entries:
                self._drop(key)              # another thread answered the same miss
            entries = self.entries
            if len(entries) >= self.size:
                seen = self._seen
                if seen.pop(key, _ABSENT) is _ABSENT:    # its first miss since the cache filled
                    if len(seen) >= self.size:
                        evict_oldest(seen)
                    seen[key] = None
                    return
                evict_oldest(entries, self._evict)
                if self._stale > 2 * self.size:
                    self._reindex()
            # A dep named twice is dropped twice: harmless.
            entries[key] = [tail, cell, deps, None if rotation is None else _rotations(tail, rotation)]
            by_dep = self._by_dep
            for dep in deps:
                keys = by_dep.get(dep)
                if keys is None:
                    by_dep[dep] = {key: None}
                else:
                    keys[key] = None

    def _evict(self, key: bytes) -> None:
        """Make room: the entry goes, its index keys stay until _reindex (caller holds the lock)."""
        entry = self.entries.pop(key, None)
        if entry is not None:
            self._stale += len(entry[2])

    def _reindex(self) -> None:
        """Rebuild the dep index from the live entries (caller holds the lock)."""
        by_dep: dict[object, dict[bytes, None]] = {}
        for key, entry in self.entries.items():
            for dep in entry[2]:
                keys = by_dep.get(dep)
                if keys is None:
                    by_dep[dep] = {key: None}
                else:
                    keys[key] = None
        self._by_dep = by_dep
        self._stale = 0

    def _drop(self, key: bytes) -> None:
        """Remove an entry and every index reference to it (so the index never outgrows the
        entries, whatever names clients make up). Caller holds the lock."""
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        self.dropped += 1
        by_dep = self._by_dep
        for dep in entry[2]:
            keys = by_dep.get(dep)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del by_dep[dep]


def _is_namespace(dep: str) -> bool:
    """A namespace dep, not an IP's (which holds '.' or ':') nor an '@' one (kdns.snapshot)."""
    return not dep.startswith("@") and "." not in dep and ":" not in dep


ROTATIONS_MAX = 8192     # bytes of precomputed rotations per entry (a 16-record A answer: ~1.5 KB)


def _rotations(tail: bytes, rotation: tuple[int, int, int]) -> list:
    """[turn, every rotation of tail's record run], or [turn, start, end, size] to slice per hit."""
    start, end, size = rotation
    count = (end - start) // size
    if count * len(tail) > ROTATIONS_MAX:
        return [0, start, end, size]
    head, run, rest = tail[:start], tail[start:end], tail[end:]
    return [0, tuple(head + run[k * size:] + run[:k * size] + rest for k in range(count))]


def rotated(entry: list) -> bytes:
    """The entry's response with its record run rotated one record further than last time."""
    rot = entry[3]
    if len(rot) == 2:
        turn, tails = rot
        turn += 1
        if turn == len(tails):
            turn = 0
        rot[0] = turn                # two threads may serve the same turn: harmless
        return tails[turn]
    tail = entry[0]
    turn, start, end, size = rot
    turn += size
    if turn >= end - start:
        turn = 0
    rot[0] = turn
    cut = start + turn
    return tail[:start] + tail[cut:end] + tail[start:cut] + tail[end:]


def evict_oldest(cache: dict, drop=None) -> None:
    """Drop the oldest quarter of a full dict cache (dicts keep insertion order): FIFO in
    batches, O(1) amortised per insert, and no cliff where every hot name misses at once.
    ``drop(key)`` removes one entry (default: pop it; PacketCache also unindexes it)."""
    for key in list(itertools.islice(cache, max(1, len(cache) // 4))):
        if drop is None:
            cache.pop(key, None)    # another UDP thread may have dropped it already
        else:
            drop(key)
