"""Rate-limited reports of bad input: one log line per kind per interval, with a count.

A flood of malformed packets (or a bug one packet shape triggers) must not turn into a log
line, let alone a traceback, per packet: the log is for the operator, and writing it costs the
loop that answers everyone else.
"""

from __future__ import annotations

import logging
import threading
import time

INTERVAL = 60.0


class BadInputLog:
    def __init__(self, log: logging.Logger, interval: float = INTERVAL, clock=time.monotonic):
        self.log = log
        self.interval = interval
        self.clock = clock
        self._kinds: dict[str, list] = {}       # kind -> [next report time, suppressed count]
        self._lock = threading.Lock()

    def _due(self, kind: str) -> int | None:
        """The number suppressed since the last line if a line is due now, else None."""
        now = self.clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None:
                if len(self._kinds) >= 1000:    # kinds come from our own messages; bound anyway
                    self._kinds.clear()
                self._kinds[kind] = [now + self.interval, 0]
                return 0
            if now < state[0]:
                state[1] += 1
                return None
            suppressed, state[0], state[1] = state[1], now + self.interval, 0
            return suppressed

    def packet(self, why: str) -> None:
        """A malformed packet, answered FORMERR or dropped."""
        suppressed = self._due(why)
        if suppressed is not None:
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            self.log.warning("bad packet: %s; answered FORMERR%s; reported at most once a "
                             "minute per kind", why, more)

    def exception(self, where: str, exc: BaseException, what: str = "") -> None:
        """An unexpected exception while answering: a bug. The traceback is logged once per
        exception type and place (``where``) per interval, never once per packet."""
        suppressed = self._due(f"{where}:{type(exc).__name__}")
        if suppressed is not None:
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            self.log.error("internal error %s%s%s", where, f" ({what})" if what else "", more,
                           exc_info=exc)
