"""The churn driver: EndpointSlice changes written to an API server over HTTP, at a set rate.

Run as its own process (``python -m kdns.bench.churn``), so the changes cost neither kdns's CPU
nor the harness's GIL. It replaces one EndpointSlice per change (a plain PUT of the whole
object, as the EndpointSlice controller does), cycling through the slices of a plan file so that
consecutive changes touch different Services. Each Service rolls its pods one at a time, the way
a Deployment rollout or a readiness flap looks from DNS: first an endpoint goes not-ready
(``ready: false, terminating: true``), then it comes back ready with a new address.

Bounded three ways: at most ``--count`` changes, at most ``--duration`` seconds, and it stops at
SIGTERM. It prints one JSON line on exit: changes sent, errors, the rate it held, how far it
fell behind schedule, and the last new address it published (so the harness can check kdns is
answering with the latest data, not only quickly).

    python -m kdns.bench.churn --api http://127.0.0.1:PORT --plan slices.json --rate 100 \\
        --count 1000 --duration 10
"""

from __future__ import annotations

import argparse
import copy
import http.client
import ipaddress
import itertools
import json
import random
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from kdns.bench.cluster import DOMAIN

# New pod addresses: outside the generator's service (10.96/12) and pod (10.244/14) networks and
# the watch report's 10.255/16.
FRESH_NET = ipaddress.ip_network("10.248.0.0/14")
SERVICE_LABEL = "kubernetes.io/service-name"
DOWN = 32                # pods down at once across the cluster (each back 2 * DOWN changes later)


def slice_path(doc: dict) -> str:
    meta = doc["metadata"]
    return f"/apis/discovery.k8s.io/v1/namespaces/{meta['namespace']}/endpointslices/{meta['name']}"


def endpoint_fqdn(doc: dict, ep: dict) -> str:
    """The name kdns serves for one endpoint of this slice (dns-behavior.md §3.4)."""
    meta = doc["metadata"]
    label = ep.get("hostname") or ep["addresses"][0].replace(".", "-")
    return f"{label}.{meta['labels'][SERVICE_LABEL]}.{meta['namespace']}.svc.{DOMAIN}."


def changes(slices: list[dict], seed: int = 11) -> Iterator[tuple[dict, tuple[str, str] | None]]:
    """Endless (new slice object, (qname, address) it makes answerable or None) pairs.

    Slices are taken round-robin in a shuffled order, and each one's endpoints are rolled in
    turn: endpoint k of slice i goes not ready, then the pod that went not ready ``DOWN`` slices
    earlier comes back ready on a fresh address. Every other change is thus a new address, and
    two changes of one slice are at least DOWN changes apart when there are more slices than
    that (the driver also never has two of one slice in flight, so they cannot land out of
    order)."""
    # The plan's objects are changed in place (a deep copy of 10,000 Services' slices up front
    # takes seconds); each yielded version is a copy of one slice.
    docs = [d for d in slices if d.get("endpoints")]
    if not docs:
        raise ValueError("the churn plan holds no EndpointSlice with endpoints")
    random.Random(seed).shuffle(docs)
    rolling = [0] * len(docs)                 # the endpoint each slice rolls next
    fresh = itertools.count()
    down: deque[int] = deque()                # slices with an endpoint down, oldest first

    def back_up(j: int) -> tuple[dict, tuple[str, str]]:
        doc = docs[j]
        ep = doc["endpoints"][rolling[j]]
        ip = str(FRESH_NET.network_address + 2 + next(fresh) % (FRESH_NET.num_addresses - 4))
        ep["addresses"] = [ip]
        ep["conditions"] = {"ready": True, "serving": True, "terminating": False}
        rolling[j] = (rolling[j] + 1) % len(doc["endpoints"])
        return copy.deepcopy(doc), (endpoint_fqdn(doc, ep), ip)

    while True:
        for i, doc in enumerate(docs):
            if i in down:                     # fewer slices than DOWN: bring it back first
                down.remove(i)
                yield back_up(i)
            doc["endpoints"][rolling[i]]["conditions"] = {"ready": False, "serving": False,
                                                          "terminating": True}
            yield copy.deepcopy(doc), None
            down.append(i)
            if len(down) > DOWN:
                yield back_up(down.popleft())


class Driver:
    """Writes ``count`` changes at ``rate`` per second over ``connections`` keep-alive
    connections (one PUT waits for its answer; several connections keep the schedule when the
    server takes longer than 1/rate per request)."""

    def __init__(self, api: str, slices: list[dict], *, rate: float, count: int, duration: float,
                 connections: int = 4, seed: int = 11):
        url = urlsplit(api)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"--api must be http://HOST:PORT, not {api!r}")
        self.host, self.port = url.hostname, url.port or 80
        self.rate, self.count, self.duration = rate, count, duration
        self.connections = max(1, connections)
        self._changes = changes(slices, seed)
        self._first = next(self._changes)       # the setup work, before the schedule's clock starts
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight: set[str] = set()         # slice paths being written
        self._next = 0
        self.stopping = threading.Event()
        self.sent = self.errors = 0
        self.first_error = ""
        self.behind = 0.0                       # worst lag behind schedule, seconds
        self.last: tuple[int, str, str] | None = None       # (index, qname, address)
        self.started = self.ended = 0.0

    def _take(self) -> tuple[int, dict, tuple[str, str] | None] | None:
        """The next change, in order; it waits while the previous change of the same slice is
        still being written, so a slice's versions land in the order they were made."""
        with self._lock:
            if self.stopping.is_set() or self._next >= self.count:
                return None
            i = self._next
            self._next += 1
            if self._first is not None:
                (doc, check), self._first = self._first, None
            else:
                doc, check = next(self._changes)
            path = slice_path(doc)
            while path in self._in_flight and not self.stopping.is_set():
                self._idle.wait(0.1)
            if self.stopping.is_set():
                return None
            self._in_flight.add(path)
        return i, doc, check

    def _done(self, doc: dict) -> None:
        with self._lock:
            self._in_flight.discard(slice_path(doc))
            self._idle.notify_all()

    def _worker(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        deadline = self.started + self.duration
        try:
            while True:
                item = self._take()
                if item is None:
                    return
                i, doc, check = item
                due = self.started + i / self.rate
                now = time.monotonic()
                if due > deadline or now > deadline:
                    self.stopping.set()
                    self._done(doc)
                    return
                if due > now and self.stopping.wait(due - now):
                    self._done(doc)
                    return
                if due <= now:
                    with self._lock:
                        self.behind = max(self.behind, now - due)
                ok, error = self._put(conn, doc)
                self._done(doc)
                with self._lock:
                    if ok:
                        self.sent += 1
                        if check and (self.last is None or i > self.last[0]):
                            self.last = (i, *check)
                    else:
                        self.errors += 1
                        self.first_error = self.first_error or error
                if not ok:
                    conn.close()
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        finally:
            conn.close()

    @staticmethod
    def _put(conn: http.client.HTTPConnection, doc: dict) -> tuple[bool, str]:
        body = json.dumps(doc, separators=(",", ":")).encode()
        try:
            conn.request("PUT", slice_path(doc), body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if resp.status != 200:
            return False, f"HTTP {resp.status}: {data[:200].decode(errors='replace')}"
        return True, ""

    def run(self) -> dict:
        self.started = time.monotonic()
        workers = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.connections)]
        if self.rate > 0 and self.count > 0:
            for w in workers:
                w.start()
            for w in workers:
                w.join(self.duration + 15)      # a PUT is bounded by its 10 s socket timeout
        self.ended = time.monotonic()
        return self.summary()

    def summary(self) -> dict:
        elapsed = max(1e-9, self.ended - self.started)
        out = {"rate_asked": self.rate, "sent": self.sent, "errors": self.errors,
               "elapsed_s": round(elapsed, 3), "rate": round(self.sent / elapsed, 1),
               "behind_s": round(self.behind, 3)}
        if self.first_error:
            out["first_error"] = self.first_error
        if self.last:
            out["last"] = {"qname": self.last[1], "address": self.last[2]}
        return out


class LocalDriver(Driver):
    """The same schedule, written by in-process calls into a fake API (tests/fakeapi.py's
    ``replace``) running in the caller's process: the harness then pays for storing the change
    and encoding its watch event, not for an HTTP client and http.server's request parsing on
    the two cores kdns shares with it (~1 core at 1,000 changes/s, measured)."""

    def __init__(self, api, slices: list[dict], *, rate: float, count: int, duration: float,
                 seed: int = 11):
        super().__init__(api.url, slices, rate=rate, count=count, duration=duration,
                         connections=1, seed=seed)
        self.api = api

    def _put(self, conn, doc: dict) -> tuple[bool, str]:
        try:
            self.api.replace(doc)
        except Exception as exc:                # the fake's HTTPError, or a bad plan object
            return False, f"{type(exc).__name__}: {exc}"
        return True, ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdns.bench.churn", description=__doc__.split("\n\n")[0])
    p.add_argument("--api", required=True, help="the API server, http://HOST:PORT")
    p.add_argument("--plan", type=Path, required=True, help="JSON list of the EndpointSlices to change")
    p.add_argument("--rate", type=float, required=True, help="changes per second")
    p.add_argument("--count", type=int, required=True, help="most changes to write")
    p.add_argument("--duration", type=float, required=True, help="most seconds to run")
    p.add_argument("--connections", type=int, default=4, help="keep-alive connections (default 4)")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    try:
        slices = json.loads(args.plan.read_text())
        driver = Driver(args.api, slices, rate=args.rate, count=args.count, duration=args.duration,
                        connections=args.connections, seed=args.seed)
    except (OSError, ValueError) as exc:
        print(f"kdns.bench.churn: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: driver.stopping.set())
    print(json.dumps(driver.run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
