"""The loop probe, as CoreDNS's ``loop`` plugin: at start, send ``HINFO <rand>.<rand>.`` to each
upstream. A query kdns sends straight to an upstream never reaches kdns's own sockets unless the
upstream sends it back, so the first sight of the probe name among clients' queries is a
forwarding loop: reported once (kdns exits with it), and answered SERVFAIL, which breaks the
circle rather than forwarding it again."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Callable, Sequence

from kdns.config import format_hostport as _fmt
from kdns.forward.cache import SERVFAIL, T_HINFO
from kdns.forward.transport import exchange_once
from kdns.rawwire import Query, build_query, error_response, name_to_wire, wire_to_name


class LoopProbe:
    def __init__(self, upstreams: Sequence[tuple[str, int]], timeout: float):
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self.name: bytes | None = None          # wire form, lower case; None until started
        self.detected: str | None = None
        self._on_loop: Callable[[str], None] | None = None
        self._lock = threading.Lock()

    def matches(self, name: bytes) -> bool:
        return self.name is not None and name.lower() == self.name

    def start(self, on_loop: Callable[[str], None], attempts: int = 3,
              interval: float = 1.0) -> threading.Thread:
        self.name = name_to_wire(f"{secrets.randbelow(10**12)}.{secrets.randbelow(10**12)}.")
        self._on_loop = on_loop

        def run() -> None:
            for _ in range(attempts):
                if self.detected:
                    return
                msg, _ = build_query(self.name, T_HINFO)
                for up in self.upstreams:
                    try:
                        exchange_once(up, msg, self.timeout)
                    except OSError:
                        pass
                    if self.detected:
                        return
                time.sleep(interval)

        t = threading.Thread(target=run, name="kdns-loop-probe", daemon=True)
        t.start()
        return t

    def came_back(self, q: Query) -> bytes:
        with self._lock:
            first = self.detected is None
            if first:
                self.detected = (
                    f"forwarding loop detected: kdns's probe query {wire_to_name(q.name)} HINFO, "
                    f"sent to the upstreams {', '.join(_fmt(*u) for u in self.upstreams)}, came back "
                    "to kdns. An upstream forwards to kdns (a node resolv.conf pointing at kdns or "
                    "at a local stub that does?); point --upstream at a real resolver")
        if first and self._on_loop is not None:
            self._on_loop(self.detected)
        return error_response(q, SERVFAIL)
