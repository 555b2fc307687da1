"""The name grammar of cluster DNS, pure functions only.

Names served, relative to the cluster zone (read right to left, dns-behavior.md §1):

    <zone>                                  apex: SOA, NS                       §3.8
    dns-version.<zone>                      TXT "1.1.0"                          SPEC §2.2
    ns.dns.<zone>                           A/AAAA of the nameserver             §3.8
    svc.<zone>, pod.<zone>                  structural nodes (NODATA)            §1
    <ns>.svc.<zone>, <ns>.pod.<zone>        namespace nodes (NODATA)             §1, §2.4
    <svc>.<ns>.svc.<zone>                   Service: A/AAAA, CNAME, bare SRV     SPEC §2.3-2.5
    <ep>.<svc>.<ns>.svc.<zone>              endpoint: A/AAAA, SRV                SPEC §2.4, §3.4
    _<port>._<proto>.<svc>.<ns>.svc.<zone>  SRV (one leading '_' optional, Q8)   SPEC §2.3.2, §2.4.2
    <a-b-c-d>.<ns>.pod.<zone>               pod A/AAAA per --pods                §3.7
    <d.c.b.a>.in-addr.arpa                  PTR (4 labels)                       SPEC §2.3.3
    <32 nibbles>.ip6.arpa                   PTR                                  SPEC §2.3.3

Everything else in the cluster zone is NXDOMAIN; wildcards are ordinary labels (CoreDNS >= 1.9).
"""

from __future__ import annotations

import ipaddress

REVERSE_V4 = "in-addr.arpa"
REVERSE_V6 = "ip6.arpa"


def split(qname_lower: str, zones: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """('web.prod.svc.cluster.local.', zones) -> ('cluster.local', ['web', 'prod', 'svc']).

    ``zones`` must be sorted longest first so the longest matching zone wins.
    """
    name = qname_lower[:-1] if qname_lower.endswith(".") else qname_lower
    for zone in zones:
        if name == zone:
            return zone, []
        if name.endswith(zone) and name[-len(zone) - 1] == ".":
            return zone, name[:-len(zone) - 1].split(".")
    return None


def dashed(ip: str) -> str:
    """Endpoint/pod name of an address (§2.3): 10.244.3.5 -> 10-244-3-5, 2001:db8:: -> 2001-db8--0."""
    out = ip.replace(".", "-").replace(":", "-")
    return out + "0" if out.endswith("-") else out


def pod_ip(label: str) -> str | None:
    """Pod name label -> canonical IP, or None (§3.7): exactly 3 '-' and no '--' means IPv4."""
    if label.count("-") == 3 and "--" not in label:
        text = label.replace("-", ".")
    else:
        text = label.replace("-", ":")
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


def reverse_ip(zone: str, labels: list[str]) -> str | None:
    """Labels left of a reverse zone -> canonical IP, or None if the name is not an address."""
    if zone == REVERSE_V4:
        if len(labels) != 4 or not all(l.isdigit() and (l == "0" or l[0] != "0") for l in labels):
            return None
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(labels))))
        except ValueError:
            return None
    if zone == REVERSE_V6:
        if len(labels) != 32 or not all(len(l) == 1 and l in "0123456789abcdef" for l in labels):
            return None
        nibbles = "".join(reversed(labels))
        return ipaddress.IPv6Address(int(nibbles, 16)).compressed
    return None


def reverse_name(ip: str) -> str:
    """Canonical IP -> its PTR owner name (no trailing dot)."""
    return ipaddress.ip_address(ip).reverse_pointer


def port_proto(port_label: str, proto_label: str) -> tuple[str, str]:
    """'_http', '_TCP' -> ('http', 'tcp'). One leading '_' is stripped from each (Q8)."""
    return (port_label[1:] if port_label.startswith("_") else port_label,
            proto_label[1:] if proto_label.startswith("_") else proto_label)
