"""The frozen configuration of one kdns process, validated once, early."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass, field

PODS_MODES = ("disabled", "insecure", "verified")
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")
# DNS Flag Day 2020: answers above 1232 bytes go over TCP rather than risk IP fragmentation.
MAX_UDP_PAYLOAD = 1232


class ConfigError(ValueError):
    pass


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """'127.0.0.1:5353', '[::1]:5353', '::1', '0.0.0.0' -> (host, port)."""
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{text!r}: expected ':PORT' after ']'")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, text)
    elif ":" in text:
        # '::1:5353' is itself a valid IPv6 address (port 53), and almost never what was meant.
        head, _, tail = text.rpartition(":")
        if tail.isdigit() and _is_ip(head):
            raise ConfigError(f"{text!r}: an IPv6 address with a port needs brackets: write "
                              f"[{head}]:{tail} for port {tail} (or [{text}] for that address, port "
                              f"{default_port})")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{text!r}: {host!r} is not an IP address") from None
        host = "127.0.0.1"
    return host, port


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def format_hostport(host: str, port: int) -> str:
    """The inverse of parse_hostport: IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"{whole!r}: port must be 0-65535")
    return int(text)


def normalize_zone(zone: str, flag: str = "--domain", root_ok: bool = False) -> str:
    """'Cluster.Local.' -> 'cluster.local'; with ``root_ok``, '.' -> '' (every zone)."""
    zone = zone.strip().rstrip(".").lower()
    if root_ok and not zone:
        return ""
    if not zone or any(not label or len(label) > 63 for label in zone.split(".")):
        raise ConfigError(f"{flag} {zone!r}: not a DNS name")
    return zone


@dataclass(frozen=True, slots=True)
class Config:
    domain: str = "cluster.local"
    ttl: int = 5
    pods: str = "insecure"
    endpoint_pod_names: bool = False
    # CoreDNS reads only conditions.ready; this opt-in also publishes not-ready endpoints of
    # Services with publishNotReadyAddresses (hand-written slices), dns-behavior.md §2.2.
    publish_not_ready: bool = False
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 5353),)
    service_cidr: str = "10.96.0.0/12"
    # Identity for the apex NS record (dns-behavior.md §3.8): the Service whose endpoints hold
    # this pod IP is the nameserver; without one, ns.dns.<zone> with the listen addresses.
    pod_ip: str = ""
    ns_addresses: tuple[str, ...] = field(default=())
    cache_size: int = 20000
    udp_batch: int = 64
    # Rotate A/AAAA RRsets of several records between answers (kubeadm's Corefile has
    # CoreDNS's loadbalance), so clients do not all pile onto the first address.
    loadbalance: bool = True
    # The kubernetes plugin's options (CoreDNS plugin/kubernetes/README.md). Extra zones are
    # served from the same data as ``domain`` (one kubernetes block with several zones); record
    # data (PTR targets, SRV targets of other zones' names) keeps using ``domain``.
    extra_zones: tuple[str, ...] = ()
    namespaces: frozenset[str] | None = None       # None = every namespace is served
    ignore_empty_service: bool = False
    noendpoints: bool = False
    # Zones (lower case, no trailing dot; "" = every zone) whose NXDOMAIN goes on to the
    # forwarder, as CoreDNS's fallthrough. kubeadm's Corefile falls through the reverse zones.
    fallthrough: tuple[str, ...] = REVERSE_ZONES
    # TCP against slow clients (kdns.tcp): a whole message within tcp_message_timeout of its
    # first byte, a connection closed after tcp_idle_timeout with nothing in flight.
    tcp_idle_timeout: float = 15.0
    tcp_message_timeout: float = 3.0
    tcp_max_connections: int = 256
    tcp_max_per_client: int = 32

    def __post_init__(self) -> None:
        for flag, value in (("--tcp-idle-timeout", self.tcp_idle_timeout),
                            ("--tcp-message-timeout", self.tcp_message_timeout)):
            if not 0 < value <= 3600:
                raise ConfigError(f"{flag} {value:g}: must be more than 0 and at most 3600 seconds")
        if not 1 <= self.tcp_max_connections <= 65535:
            raise ConfigError(f"--tcp-connections {self.tcp_max_connections}: must be 1-65535")
        if not 1 <= self.tcp_max_per_client <= self.tcp_max_connections:
            raise ConfigError(f"--tcp-max-per-client {self.tcp_max_per_client}: must be 1 to "
                              f"--tcp-connections ({self.tcp_max_connections})")
        if not 1 <= self.udp_batch <= 1024:
            raise ConfigError(f"--udp-batch {self.udp_batch}: must be 1-1024")
        if not 0 <= self.ttl <= 3600:
            raise ConfigError(f"--ttl {self.ttl}: must be 0-3600")
        if self.pods not in PODS_MODES:
            raise ConfigError(f"--pods {self.pods!r}: must be one of {', '.join(PODS_MODES)}")
        try:
            ipaddress.ip_network(self.service_cidr, strict=False)
        except ValueError:
            raise ConfigError(f"--service-cidr {self.service_cidr!r}: not a CIDR") from None
        if self.pod_ip:
            try:
                ipaddress.ip_address(self.pod_ip)
            except ValueError:
                raise ConfigError(f"--pod-ip {self.pod_ip!r}: not an IP address") from None

        for zone in self.extra_zones:
            if zone == self.domain or zone in REVERSE_ZONES or _under(zone, self.domain) \
                    or _under(self.domain, zone):
                raise ConfigError(f"--zone {zone!r}: overlaps the cluster zone {self.domain!r} "
                                  "or a reverse zone")

    @property
    def zones(self) -> tuple[str, ...]:
        """Served zones, longest first, so the longest match wins."""
        return tuple(sorted((self.domain, *self.extra_zones, *REVERSE_ZONES), key=len, reverse=True))

    def falls_through(self, qname_lower: str) -> bool:
        """Whether a NXDOMAIN for this name (lower case, trailing dot) goes on to the forwarder."""
        name = qname_lower[:-1]
        for zone in self.fallthrough:
            if not zone or name == zone or _under(name, zone):
                return True
        return False


def _under(name: str, zone: str) -> bool:
    return name.endswith("." + zone)


def add_source_args(p: argparse.ArgumentParser, *, watch: bool = True) -> None:
    """Where the cluster comes from: the same flags for `serve` and `env` (``watch``: the
    long-lived watch's own knobs too)."""
    p.add_argument("--manifests", action="append", default=[], metavar="PATH",
                   help="manifest file or directory (*.yaml, *.yml, *.json, recursive); repeatable; "
                        "default: the embedded example cluster (zones/)")
    p.add_argument("--service-cidr", default="10.96.0.0/12", metavar="CIDR",
                   help="range for Services whose manifest has no clusterIP (default 10.96.0.0/12)")
    p.add_argument("--pod-cidr", default="10.244.0.0/16", metavar="CIDR",
                   help="addresses of the pods kdns derives from workloads in the manifests "
                        "(default 10.244.0.0/16)")
    p.add_argument("--nodes", type=_nodes, default=1, metavar="N",
                   help="nodes a DaemonSet in the manifests runs on: one pod each (default 1)")
    api = p.add_argument_group("live cluster (instead of --manifests)")
    api.add_argument("--kubeconfig", metavar="PATH",
                     help="list and watch the API of this kubeconfig's cluster (default resolution: "
                          "$KUBECONFIG, then ~/.kube/config, when --context is given)")
    api.add_argument("--context", metavar="NAME", help="kubeconfig context to use (default: current)")
    api.add_argument("--in-cluster", action="store_true",
                     help="use the pod's service account (KUBERNETES_SERVICE_HOST, token, CA)")
    if watch:
        api.add_argument("--api-timeout", type=float, default=90.0, metavar="SECONDS",
                         help="client read timeout on API requests, so a dead connection is noticed "
                              "(default 90; bookmarks keep healthy watches talking)")
        api.add_argument("--api-streaming-list", choices=("auto", "off"), default="auto",
                         help="auto (default): sync each kind with one watch that streams the "
                              "list (sendInitialEvents, Kubernetes 1.32+), paged lists if the "
                              "server refuses it; off: always paged lists")


def add_answer_args(p: argparse.ArgumentParser) -> None:
    """What shapes the cluster's answers: one definition for `serve` and for `explain`, which
    must build the very snapshot serve would."""
    p.add_argument("--domain", default="cluster.local", help="cluster domain (default cluster.local)")
    p.add_argument("--ttl", type=int, default=5, help="TTL of cluster records, 0-3600 (default 5)")
    p.add_argument("--pods", default="insecure", choices=["disabled", "insecure", "verified"],
                   help="pod records <a-b-c-d>.<ns>.pod.<zone> (default insecure, as kubeadm)")
    p.add_argument("--endpoint-pod-names", action="store_true",
                   help="name endpoints without a hostname by their pod name, not their dashed IP")
    p.add_argument("--publish-not-ready", action="store_true",
                   help="also publish not-ready endpoints of Services with publishNotReadyAddresses")
    p.add_argument("--pod-ip", default="", metavar="IP",
                   help="this server's pod IP: the Service whose endpoints hold it is the apex NS")


def _nodes(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 5000:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1-5000 nodes")
    return int(text)


def uses_api(args) -> bool:
    return bool(args.kubeconfig or args.context or args.in_cluster)
