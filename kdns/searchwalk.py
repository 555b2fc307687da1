"""A pod's stub resolver walking its search list, step by step (`kdns explain --from/--pod`).

The kubelet writes, for dnsPolicy ClusterFirst (pkg/kubelet/network/dns/dns.go
generateSearchesForDNSClusterFirst):

    search <ns>.svc.<zone> svc.<zone> <zone>
    options ndots:5

and the two C libraries walk it differently (dns-behavior.md §4, §7; tests/test_resolvers.py
runs both against a real kdns):

- glibc (res_nsearch): a name with >= ndots dots is tried as is first; otherwise the search
  list first and the name as is last. getaddrinfo asks A and AAAA for each candidate; a
  candidate answers when either reply is NOERROR with records. NXDOMAIN, NODATA and SERVFAIL
  all go on to the next candidate.
- musl (lookup_name.c name_from_dns_search): a name with >= ndots dots (or a trailing dot) is
  tried only as is. A candidate with a NXDOMAIN reply goes on; anything else stops the walk:
  records answer, NODATA ends it with no address, SERVFAIL with EAI_AGAIN.

Pure: ``step(name, qtype)`` gives each reply as (rcode, answer count, forwarded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

NDOTS = 5
NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
A, AAAA = 1, 28


def search_list(namespace: str, domain: str) -> list[str]:
    return [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]


def candidates(name: str, search: list[str], resolver: str, ndots: int = NDOTS) -> list[str]:
    if name.endswith("."):
        return [name]
    dots = name.count(".")
    searched = [f"{name}.{s}." for s in search]
    if dots >= ndots:
        return [name + "."] if resolver == "musl" else [name + ".", *searched]
    return [*searched, name + "."]


@dataclass
class Query:
    name: str
    qtype: int
    rcode: int
    answers: int
    forwarded: bool = False        # outside the cluster zones: the upstream's answer, not kdns's


@dataclass
class Step:
    name: str
    queries: list[Query] = field(default_factory=list)
    verdict: str = ""              # "answers", "next", "stops", "unknown"
    why: str = ""


@dataclass
class Walk:
    name: str
    resolver: str
    search: list[str]
    steps: list[Step] = field(default_factory=list)
    answered_by: str | None = None     # the candidate that answers; None: not found (or unknown)
    outcome: str = ""


def walk(name: str, search: list[str], resolver: str, qtypes: list[int],
         step: Callable[[str, int], Query], ndots: int = NDOTS) -> Walk:
    w = Walk(name, resolver, search)
    names = candidates(name, search, resolver, ndots)
    for i, cand in enumerate(names):
        s = Step(cand, [step(cand, t) for t in qtypes])
        w.steps.append(s)
        last = i == len(names) - 1
        if any(q.forwarded and q.rcode < 0 for q in s.queries):
            s.verdict, s.why = "unknown", "outside the cluster zones: the upstream decides (use --ask)"
            w.outcome = f"{cand} is forwarded upstream; kdns cannot tell what it answers"
            return w
        answered = any(q.rcode == NOERROR and q.answers for q in s.queries)
        if resolver == "musl":
            first_bad = next((q for q in s.queries if q.rcode != NOERROR), None)
            if first_bad is not None and first_bad.rcode == NXDOMAIN:
                s.verdict, s.why = "next", "NXDOMAIN: musl goes on"
            elif first_bad is not None:
                s.verdict, s.why = "stops", f"rcode {first_bad.rcode}: musl gives up (EAI_AGAIN/EAI_FAIL)"
                w.outcome = f"musl stops at {cand}: the lookup fails"
                return w
            elif answered:
                s.verdict, s.why = "answers", "records: the lookup succeeds"
            else:
                s.verdict, s.why = "stops", "NODATA: musl stops here, the name has no address"
                w.outcome = f"musl stops at {cand} (NODATA): the lookup fails without trying further names"
                return w
        else:
            if answered:
                s.verdict, s.why = "answers", "records: the lookup succeeds"
            else:
                kinds = sorted({_rc(q) for q in s.queries})
                s.verdict, s.why = "next", f"{'/'.join(kinds)}: glibc goes on"
        if s.verdict == "answers":
            w.answered_by = cand
            w.outcome = f"{cand} answers"
            return w
        if last:
            w.outcome = "no candidate answers: the lookup fails (not found)"
    return w


def _rc(q: Query) -> str:
    if q.rcode == NOERROR:
        return "NODATA"
    return {NXDOMAIN: "NXDOMAIN", SERVFAIL: "SERVFAIL"}.get(q.rcode, f"rcode {q.rcode}")
