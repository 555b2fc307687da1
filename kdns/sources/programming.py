"""DNS programming latency (the Kubernetes SLI, as CoreDNS's kubernetes plugin exports it).

The EndpointSlice controller stamps each slice it writes with
``endpoints.kubernetes.io/last-change-trigger-time``: when the change that caused it (a pod
becoming ready, a Service edit) happened. The time from that stamp to kdns serving the slice is
the programming latency of that change. As CoreDNS does, a slice counts only when its Service is
known (cluster_ip or headless_with_selector: the controller writes slices only for Services with a
selector) and the stamp parses; the clocks of the control plane and this node are assumed to agree.
https://github.com/kubernetes/community/blob/master/sig-scalability/slos/dns_programming_latency.md
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Mapping

from kdns import metrics

log = logging.getLogger("kdns.sources")

TRIGGER = "endpoints.kubernetes.io/last-change-trigger-time"


def trigger_time(raw: Mapping[str, Any]) -> float | None:
    """The slice's trigger time (Unix seconds), or None when unstamped or unparseable."""
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    stamp = (meta or {}).get("annotations", {}).get(TRIGGER) if isinstance(meta, Mapping) else None
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        log.warning("DNS programming latency: %s %r is not an RFC 3339 time", TRIGGER, stamp)
        return None


def served(raw: Mapping[str, Any], service, now: float | None = None) -> None:
    """Record that the slice ``raw`` (its Service: ``service``, or None) is now served."""
    if service is None:
        return
    stamp = trigger_time(raw)
    if stamp is None:
        return
    kind = "headless_with_selector" if service.headless else "cluster_ip"
    metrics.PROGRAMMING.labels(kind).observe(max(0.0, (now or time.time()) - stamp))
