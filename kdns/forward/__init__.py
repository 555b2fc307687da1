"""Upstream forwarding for names outside our zones (dns-behavior.md §6), one job per module:

- ``transport``: the reactor thread, UDP sockets per upstream with IDs matched as replies come,
  TCP for truncated replies and TCP clients;
- ``cache``: upstream answers normalised for any client, TTLs counted down (cachetools);
- ``health``: policy (sequential, round_robin, random), adaptive timeouts, background probes;
- ``stale``: serve-stale (RFC 8767);
- ``acl``: who may recurse (``--allow``);
- ``chase``: the ExternalName chase's answer (§3.5);
- ``upstreams``: where the upstreams come from (``--upstream``, ``--resolv-conf``);
- ``loopprobe``: CoreDNS's loop probe, a forwarding loop made fatal;
- ``forwarder``: the Forwarder that ties them together, with its limits.

The byte-level walks are kdns.rawwire's.
"""

from kdns.forward.acl import DEFAULT_ALLOW, Allow, AllowError
from kdns.forward.cache import (FORMERR, MAX_NEGATIVE_TTL, MAX_POSITIVE_TTL, NOERROR, NXDOMAIN,
                                REFUSED, SERVFAIL, T_A, T_AAAA, T_CNAME, T_HINFO, T_NS, T_PTR,
                                T_SOA, Entry, Record, answer_records, normalise, serve)
from kdns.forward.forwarder import DEADLINE, MAX_CLIENT_FORWARDS, MAX_CONCURRENT, Forwarder
from kdns.forward.health import POLICIES
from kdns.forward.stale import STALE_TTL
from kdns.forward.upstreams import ForwardConfigError, choose_upstreams, is_own_address, read_resolv_conf

__all__ = ["DEFAULT_ALLOW", "Allow", "AllowError", "FORMERR", "MAX_NEGATIVE_TTL",
           "MAX_POSITIVE_TTL", "NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", "T_A", "T_AAAA",
           "T_CNAME", "T_HINFO", "T_NS", "T_PTR", "T_SOA", "Entry", "Record", "answer_records",
           "normalise", "serve", "DEADLINE", "MAX_CLIENT_FORWARDS", "MAX_CONCURRENT", "Forwarder",
           "POLICIES", "STALE_TTL", "ForwardConfigError", "choose_upstreams",
           "is_own_address", "read_resolv_conf"]
