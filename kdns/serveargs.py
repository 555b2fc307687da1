"""The flags `kdns serve` took to be a drop-in for CoreDNS (the kubernetes plugin's options,
hosts, rewrite, stub domains, forwarding caps), and reading a Corefile or kube-dns ConfigMap
into them: argparse wiring and flag checks, as kdns.cli; the forwarding they configure is
kdns.forward's."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Iterable

from kdns import kubedns, rewrite, translate
from kdns.config import ConfigError, format_hostport, normalize_zone, parse_hostport
from kdns.corefile import CorefileError

log = logging.getLogger("kdns")


def add_zone_forward_args(p: argparse.ArgumentParser) -> None:
    """Stub domains (docs/forwarding.md "Stub domains"): names in a zone go to its own upstreams."""
    p.add_argument("--forward", action="append", default=[], metavar="ZONE=HOST[:PORT][,...]",
                   help="stub domain: names in ZONE go to these upstreams (port 53 by default), "
                        "the longest matching zone winning; every other name keeps --upstream / "
                        "--resolv-conf. Each zone gets the default upstreams' forwarding cache, "
                        "health checks, policy, limits, serve-stale and --allow; repeatable")
    p.add_argument("--forward-except", action="append", default=[], metavar="ZONE",
                   help="names in ZONE are not sent to the default upstreams: SERVFAIL, as "
                        "CoreDNS forward's except at the end of the plugin chain (a --forward "
                        "zone still takes its names); repeatable")
    p.add_argument("--forward-inside-cluster-zone", action="store_true",
                   help="let a --forward zone be the cluster zone, a --zone, a reverse zone or "
                        "inside one: its names then go to the stub, not to the cluster data "
                        "(without this flag that is an error)")


def ttl(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0-86400 seconds")
    return int(text)


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """The kubernetes plugin's options (CoreDNS plugin/kubernetes)."""
    p.add_argument("--zone", action="append", default=[], metavar="ZONE",
                   help="another zone served from the same data as --domain; repeatable")
    p.add_argument("--namespaces", default=None, metavar="NS,...",
                   help="serve only these namespaces; names in others are NXDOMAIN")
    p.add_argument("--labels", default=None, metavar="SELECTOR",
                   help="serve only Services matching this label selector (API syntax)")
    p.add_argument("--ignore-empty-service", action="store_true",
                   help="NXDOMAIN for a Service without ready endpoints")
    p.add_argument("--noendpoints", action="store_true",
                   help="no endpoint records at all (headless Services are NXDOMAIN)")
    p.add_argument("--fallthrough", nargs="*", action="append", default=None, metavar="ZONE",
                   help="NXDOMAIN in these zones (none given: every zone) goes to the upstreams "
                        "(default: in-addr.arpa ip6.arpa, as kubeadm)")
    p.add_argument("--no-fallthrough", action="store_true",
                   help="no NXDOMAIN goes to the upstreams")


def add_records_args(p: argparse.ArgumentParser) -> None:
    """Custom records and rewriting (CoreDNS hosts, rewrite)."""
    p.add_argument("--hosts", default=None, metavar="FILE",
                   help="hosts(5) file: A/AAAA and PTR answered first, TTL --ttl; reloaded on change")
    p.add_argument("--hosts-entry", action="append", default=[], metavar="'IP NAME...'",
                   help="one hosts line; repeatable (a Corefile's inline hosts entries)")
    p.add_argument("--rewrite-name", action="append", default=[], metavar="FROM=TO",
                   help="answer FROM as TO, the answer owned by FROM again; repeatable")
    p.add_argument("--rewrite-suffix", action="append", default=[], metavar="FROM=TO",
                   help="answer names ending in FROM as ending in TO; repeatable")


def print_corefile(path: str) -> int:
    notes: list[str] = []
    try:
        argv = translate.translate_file(path, notes)
    except CorefileError as exc:
        for line in exc.problems:
            print(f"kdns: {line}", file=sys.stderr)
        return 2
    for line in notes:
        print(f"kdns: note: {line}", file=sys.stderr)
    print(translate.command_line(argv))
    return 0


def with_translation(args, argv: list[str], build_parser):
    """Re-read the command line with the Corefile's (or kube-dns ConfigMap's) flags in front;
    a flag given on the command line replaces the translation's, repeatable ones included."""
    notes: list[str] = []
    try:
        extra = []
        if args.corefile:
            extra += translate.translate_file(args.corefile, notes)
        if args.kube_dns_configmap:
            extra += kubedns.translate_kube_dns(args.kube_dns_configmap)
    except CorefileError as exc:
        for line in exc.problems:
            print(f"kdns: {line}", file=sys.stderr)
        return None
    parser = build_parser()
    at = argv.index("serve")
    given = _given_dests(argv[at + 1:], build_parser)
    translated = vars(parser.parse_args(argv[:at + 1] + extra))
    final = vars(parser.parse_args(argv))
    for group in _DEST_GROUPS:
        if given & group:
            given |= group              # e.g. a source on the command line replaces the Corefile's
    for dest, value in translated.items():
        if dest not in given:
            final[dest] = value
    log.info("from %s: %s", args.corefile or args.kube_dns_configmap, translate.command_line(extra))
    for line in notes:
        log.info("note: %s", line)
    return argparse.Namespace(**final)


# Flags that say one thing together: giving one on the command line drops all of the group's
# values from the translation.
_DEST_GROUPS = ({"manifests", "kubeconfig", "context", "in_cluster"},
                {"fallthrough", "no_fallthrough"})


def _given_dests(serve_argv: list[str], build_parser) -> set[str]:
    """The dests of the serve options that appear in ``serve_argv``."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve_parser = sub.choices["serve"]
    out = set()
    for token in serve_argv:
        if not token.startswith("--"):
            continue
        flag = token.split("=", 1)[0]
        for action in serve_parser._actions:
            if flag in action.option_strings:
                out.add(action.dest)
    return out


def rewrites(args) -> rewrite.Rules:
    return rewrite.Rules(
        tuple(rewrite.parse_rule(t, "--rewrite-name") for t in args.rewrite_name),
        tuple(rewrite.parse_rule(t, "--rewrite-suffix", suffix=True) for t in args.rewrite_suffix))


def stub_domains(args, zones: Iterable[str]) -> tuple[list[tuple[str, list[tuple[str, int]]]],
                                                        list[str], list[str]]:
    """(stubs, excepted, inside) from --forward, --forward-except and
    --forward-inside-cluster-zone, checked against the served ``zones``; ConfigError says why not."""
    stubs: dict[str, list[tuple[str, int]]] = {}
    inside: list[str] = []
    for text in args.forward:
        zone, ups = _stub(text)
        if zone in stubs:
            raise ConfigError(f"--forward {text}: zone {zone} is already forwarded (--forward "
                              f"{zone}={','.join(format_hostport(*u) for u in stubs[zone])}); give "
                              "one --forward per zone with every address")
        served = next((z for z in zones if zone == z or zone.endswith("." + z)), None)
        if served is not None:
            if not args.forward_inside_cluster_zone:
                where = "is" if zone == served else "is inside"
                raise ConfigError(
                    f"--forward {text}: {zone} {where} {served}, a zone kdns serves from the "
                    "cluster's data; forwarding it would hide those records. To send its names "
                    "to the stub instead, say so with --forward-inside-cluster-zone")
            inside.append(zone)
        stubs[zone] = ups
    excepted = [normalize_zone(z, "--forward-except") for z in args.forward_except]
    return list(stubs.items()), excepted, inside


def _stub(text: str) -> tuple[str, list[tuple[str, int]]]:
    zone, sep, addresses = text.partition("=")
    if not sep or not addresses.strip():
        raise ConfigError(f"--forward {text!r}: expected ZONE=HOST[:PORT][,HOST[:PORT]...]")
    zone = normalize_zone(zone, "--forward", root_ok=True)
    if not zone:
        raise ConfigError(f"--forward {text}: the root zone is every name's: that is --upstream")
    ups = []
    for a in addresses.split(","):
        try:
            ups.append(parse_hostport(a.strip(), 53))
        except ConfigError as exc:
            raise ConfigError(f"--forward {text}: {exc}") from None
    return zone, list(dict.fromkeys(ups))


def forward_problems(args, zones: Iterable[str]) -> list[str]:
    """The --forward flags' errors, each with why (checked before anything is loaded)."""
    try:
        stub_domains(args, tuple(zones))
    except ConfigError as exc:
        return [str(exc)]
    return []


def forwarding(args, bound, cache_size: int, zones: tuple[str, ...]):
    """kdns.forward.zones.Zones for --upstream / --resolv-conf and --forward, or None: no
    upstream anywhere (out-of-zone names get REFUSED). ForwardConfigError says what is wrong."""
    from kdns.forward import choose_upstreams
    from kdns.forward.zones import Zones

    # The default path may be missing (a minimal container): then there is simply no upstream.
    upstreams = choose_upstreams(args.upstream, args.resolv_conf if args.resolv_conf is not None
                                 else "/etc/resolv.conf", bound, missing_ok=args.resolv_conf is None)
    stubs, excepted, inside = stub_domains(args, zones)
    stubs = [(zone, choose_upstreams(ups, "", bound, flag=f"--forward {zone}"))
             for zone, ups in stubs]
    if not upstreams:
        log.warning("no upstream resolvers: names outside the cluster zones%s get REFUSED",
                    " and the stub domains" if stubs else "")
        if not stubs:
            return None
    else:
        log.info("forwarding other names to %s",
                 ", ".join(format_hostport(h, p) for h, p in upstreams))
    for zone, ups in stubs:
        log.info("forwarding %s to %s%s", zone, ", ".join(format_hostport(h, p) for h, p in ups),
                 " (instead of the cluster data)" if zone in inside else "")
    for zone in excepted:
        log.info("not forwarding %s to the default upstreams (SERVFAIL)", zone)
    allow = args.allow or None
    if allow:
        log.info("forwarding for clients in %s only", ", ".join(allow))
    caps = (args.cache_ttl, min(1800, args.cache_ttl) if args.cache_denial_ttl is None
            else args.cache_denial_ttl)
    return Zones(upstreams, stubs, excepted, inside, cache_size=cache_size, own_zones=zones,
                 caps=caps, policy=args.policy, max_concurrent=args.max_concurrent,
                 max_client_forwards=args.max_client_forwards, serve_stale=args.serve_stale,
                 **({"allow": allow} if allow else {}))
