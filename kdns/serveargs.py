"""The flags `kdns serve` took to be a drop-in for CoreDNS (the kubernetes plugin's options,
hosts, rewrite, forwarding caps), and reading a Corefile or kube-dns ConfigMap into them:
argparse wiring only, as kdns.cli."""

from __future__ import annotations

import argparse
import logging
import sys

from kdns import rewrite, translate
from kdns.corefile import CorefileError

log = logging.getLogger("kdns")


def add_pending_args(p: argparse.ArgumentParser) -> None:
    # Flags the forwarder does not do yet (per-zone forwarding): accepted, so that a Corefile's
    # translation is whole, and refused at startup with the reason (never silently dropped).
    # (--policy is kdns.cli's own now.)
    for flag, meta in (("--forward", "ZONE=HOST[:PORT][,...]"), ("--forward-except", "ZONE")):
        p.add_argument(flag, action="append", default=[], metavar=meta, help=argparse.SUPPRESS)


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
            extra += translate.translate_kube_dns(args.kube_dns_configmap)
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


def pending_flags(args) -> list[str]:
    """Flags a Corefile may translate to that this kdns cannot honour yet, each with why."""
    out = []
    if args.forward:
        out.append(f"--forward {args.forward[0]}: per-zone forwarding (stub domains) is not in this "
                   "kdns yet; it comes with the new forwarder (issue 12)")
    if args.forward_except:
        out.append(f"--forward-except {args.forward_except[0]}: not in this kdns yet (issue 12)")
    return out
