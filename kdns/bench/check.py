"""A sample of each workload asked one by one: a server that is fast because it answers wrongly
(REFUSED, NXDOMAIN for everything, a missing SRV) shows up in the table, not as a win."""

from __future__ import annotations

import random

import dns.rcode
import dns.rdatatype

from kdns.bench.servers import ask
from kdns.bench.workloads import Expectations


def sample(port: int, queries: list[tuple[str, str]], expect: Expectations, *, size: int = 40,
           seed: int = 3) -> tuple[int, int, list[str]]:
    """(asked, wrong, first few problems) for up to ``size`` distinct questions."""
    distinct = sorted(set(queries))
    picked = random.Random(seed).sample(distinct, min(size, len(distinct)))
    wrong, problems = 0, []
    for qname, qtype in picked:
        want = expect(qname, qtype)
        r = ask(port, qname, qtype, timeout=1.0, tcp_fallback=True)
        if r is None:
            got = "timeout"
        else:
            n = sum(len(rrset) for rrset in r.answer
                    if rrset.rdtype == dns.rdatatype.from_text(qtype))
            got_rcode = dns.rcode.to_text(r.rcode())
            if got_rcode == want.rcode and n == want.answers:
                continue
            got = f"{got_rcode}/{n}"
        wrong += 1
        if len(problems) < 3:
            problems.append(f"{qname} {qtype}: got {got}, want {want.rcode}/{want.answers}")
    return len(picked), wrong, problems
