"""What the forwarding tests share: the kdns subprocess wrapper (conftest's, under the name these
tests have always used), the vectors' upstream records, and one line per answer record."""

import dns.rdatatype

from conftest import DATA, ROOT, Kdns as KdnsProcess  # noqa: F401

# The vectors' upstream (cases.yaml header): www.example.com A/AAAA, a node's PTR, NXDOMAIN for
# everything else (tests/dnsstub.py answers these).
UPSTREAM = [
    "www.example.com. 300 IN A 192.0.2.53",
    "www.example.com. 300 IN AAAA 2001:db8::53",
    "9.9.244.10.in-addr.arpa. 300 IN PTR node-9.example.net.",
]


def lines(section) -> list[str]:
    """'owner TTL IN TYPE rdata' for every record of a dnspython message section, in order."""
    return [f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rd}"
            for rrset in section for rd in rrset]
