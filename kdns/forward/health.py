"""Policy and health: which upstream is asked first, how long to wait for it, and whether it is up.

- Order (``--policy``): ``sequential`` asks the upstreams in the order given, ``round_robin``
  starts each query at the next one, ``random`` shuffles them per query (CoreDNS forward's
  policies). Healthy upstreams always come before the ones marked down; when every upstream is
  down they are all still tried, in the same order (CoreDNS does the same: a probe may lag).
- Timeouts adapt to measured latency, as unbound's infra cache does (RFC 6298 estimator):
  RTO = SRTT + 4 RTTVAR, at least MIN_RTO, at most the per-attempt cap, doubled after every
  timeout. So against a 1 ms upstream the first retry goes out after MIN_RTO, not after a fixed
  second; an upstream not yet measured starts at INITIAL_RTO (unbound: 376 ms).
- Health: an upstream that times out, refuses the connection or answers SERVFAIL/REFUSED/FORMERR
  is marked down and probed in the background every HEALTH_INTERVAL with ``. IN NS`` (CoreDNS
  forward's health_check); a NOERROR or NXDOMAIN reply marks it up again, as does any good reply
  to a real query.
"""

from __future__ import annotations

import logging
import random
from typing import Callable, Sequence

from kdns.config import format_hostport
from kdns.forward.cache import NOERROR, NXDOMAIN, T_NS
from kdns.forward.transport import Reactor, Transport
from kdns.metrics import (FORWARD_HEALTHCHECK_FAILURES, FORWARD_HEALTHY, shared_gauge,
                          unshare_gauge)
from kdns.rawwire import opt_rr

log = logging.getLogger("kdns.forward")

POLICIES = ("sequential", "round_robin", "random")
INITIAL_RTO = 0.4
# unbound's floor is 50 ms; twice that leaves room for a busy node (a loaded kubelet, GC) before
# a duplicate query goes out.
MIN_RTO = 0.1
HEALTH_INTERVAL = 0.5          # CoreDNS forward health_check default
PROBE_TIMEOUT = 1.0


class Health:
    """Per-upstream RTT estimate and up/down state; reactor thread only (reads from anywhere)."""

    def __init__(self, reactor: Reactor, transport: Transport, policy: str = "sequential",
                 cap: float = 1.5, initial_rto: float = INITIAL_RTO,
                 rng: random.Random | None = None, on_change: Callable[[int, bool], None] | None = None):
        if policy not in POLICIES:
            raise ValueError(f"--policy {policy!r}: must be one of {', '.join(POLICIES)}")
        self.reactor = reactor
        self.transport = transport
        self.policy = policy
        self.cap = cap
        n = len(transport.upstreams)
        self.names = [format_hostport(*u) for u in transport.upstreams]
        self.srtt: list[float | None] = [None] * n
        self.rttvar = [0.0] * n
        self.rto = [min(cap, initial_rto)] * n
        self.down = [False] * n
        self._probing = [False] * n
        self._next = 0
        self._rng = rng or random.Random()
        self._on_change = on_change
        for i, name in enumerate(self.names):
            shared_gauge(FORWARD_HEALTHY, name, self, lambda i=i: 0 if self.down[i] else 1,
                         lambda values: min(values, default=1))

    def close(self) -> None:
        for name in self.names:
            unshare_gauge(FORWARD_HEALTHY, name, self)

    # -- order -------------------------------------------------------------------------------

    def order(self) -> list[int]:
        n = len(self.names)
        if self.policy == "round_robin":
            start, self._next = self._next, (self._next + 1) % n
            ring = [(start + k) % n for k in range(n)]
        elif self.policy == "random":
            ring = list(range(n))
            self._rng.shuffle(ring)
        else:
            ring = list(range(n))
        return [i for i in ring if not self.down[i]] + [i for i in ring if self.down[i]]

    # -- what happened -----------------------------------------------------------------------

    def answered(self, i: int, rtt: float) -> None:
        srtt = self.srtt[i]
        if srtt is None:
            self.srtt[i], self.rttvar[i] = rtt, rtt / 2
        else:
            self.rttvar[i] = 0.75 * self.rttvar[i] + 0.25 * abs(srtt - rtt)
            self.srtt[i] = 0.875 * srtt + 0.125 * rtt
        self.rto[i] = min(self.cap, max(MIN_RTO, self.srtt[i] + 4 * self.rttvar[i]))
        self._set(i, False)

    def timed_out(self, i: int) -> None:
        self.rto[i] = min(self.cap, self.rto[i] * 2)
        self._set(i, True)

    def failed(self, i: int) -> None:
        self._set(i, True)

    def _set(self, i: int, down: bool) -> None:
        if self.down[i] == down:
            return
        self.down[i] = down
        log.info("upstream %s is %s", self.names[i], "down: probing it" if down else "up")
        if self._on_change:
            self._on_change(i, down)
        if down and not self._probing[i]:
            self._probing[i] = True
            self.reactor.later(HEALTH_INTERVAL, self._probe, i)

    # -- probes ------------------------------------------------------------------------------

    def _probe(self, i: int) -> None:
        if not self.down[i]:
            self._probing[i] = False
            return
        state: dict = {}

        def done(reply: bytes | None, why: str) -> None:
            if state.get("over"):
                return
            state["over"] = True
            timer.cancel()
            ok = reply is not None and len(reply) >= 12 and reply[2] & 0x80 and (
                reply[3] & 0x0F) in (NOERROR, NXDOMAIN)
            if ok:
                self._probing[i] = False
                self._set(i, False)
                return
            FORWARD_HEALTHCHECK_FAILURES.labels(self.names[i]).inc()
            self.reactor.later(HEALTH_INTERVAL, self._probe, i)

        def timeout() -> None:
            ex.cancel()
            done(None, "timeout")

        timer = self.reactor.later(min(PROBE_TIMEOUT, self.cap), timeout)
        ex = self.transport.udp(i, _probe_query, done)


def _probe_query(qid: bytes) -> bytes:
    # ". IN NS", RD=1, with EDNS: what every recursive resolver answers from its priming.
    return qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" + b"\x00" + \
        T_NS.to_bytes(2, "big") + b"\x00\x01" + opt_rr(False)


def upstream_names(upstreams: Sequence[tuple[str, int]]) -> list[str]:
    return [format_hostport(*u) for u in upstreams]
