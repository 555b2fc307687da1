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


def assert_loop_is_fatal(k, relay) -> None:
    """``k`` (started with wait=False) forwards to ``relay``, which sends every query back to
    k: kdns's loop probe must come back, and kdns exit 1 naming the upstream, no traceback."""
    import socket

    def back_to_kdns(data: bytes) -> bytes | None:
        if not k.port:
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(data, ("127.0.0.1", k.port))
            try:
                return s.recv(65535)
            except socket.timeout:
                return None
    relay.on_query = back_to_kdns
    k.port = k._wait_port()
    assert k.wait_exit() == 1
    assert "forwarding loop detected" in k.log()
    assert f"127.0.0.1:{relay.port}" in k.log() and "Traceback" not in k.log()
    assert relay.count() >= 1 and all(t == "HINFO" for _, _, t in relay.seen)
