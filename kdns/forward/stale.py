"""Serve-stale (RFC 8767): when no upstream answers, an expired answer beats a SERVFAIL.

With ``--serve-stale DURATION`` the forwarding cache keeps entries DURATION past their lifetime.
A query whose upstreams all failed gets the expired entry with every TTL set to STALE_TTL
(§4: 30 s), and for FAILURE_RECHECK seconds after that failure (§5's "failure recheck timer")
the same question is answered stale at once, instead of waiting out the upstreams' deadline
again on every query.
"""

from __future__ import annotations

from kdns.forward.cache import Cache, Entry

STALE_TTL = 30
FAILURE_RECHECK = 30.0
_RECHECK_MEMO = 10000          # keys remembered as recently failed


class Stale:
    def __init__(self, cache: Cache, window: float):
        self.cache = cache
        self.window = window            # seconds past expiry an answer may be served; 0 = off
        self._failed: dict = {}         # key -> clock reading until which it is answered stale

    def on(self) -> bool:
        return self.window > 0

    def after_failure(self, key) -> Entry | None:
        """The stale entry to serve now that every upstream failed for ``key``, if any."""
        if not self.window:
            return None
        entry = self.cache.stale(key)
        if entry is None:
            return None
        now = self.cache.clock()
        if len(self._failed) >= _RECHECK_MEMO:
            self._failed.clear()
        self._failed[key] = now + FAILURE_RECHECK
        return entry

    def recently_failed(self, key) -> Entry | None:
        """The stale entry for ``key`` if its upstreams failed within FAILURE_RECHECK."""
        if not self.window:
            return None
        until = self._failed.get(key)
        if until is None:
            return None
        if self.cache.clock() >= until:
            self._failed.pop(key, None)
            return None
        return self.cache.stale(key)

    def succeeded(self, key) -> None:
        if self._failed:
            self._failed.pop(key, None)
